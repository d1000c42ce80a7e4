"""`python main.py diagnose`: which part of a trained run limits its samples, the denoiser or the decoder.

Per class:
- the loss ladder (evaluation/ladder.py): the run's denoiser against the exact per-class Gaussian and the empirical
  optimum, on held-out latents and on training latents, per noise level; the denoiser's gain over the Gaussian and its
  gap between training and held-out latents (memorisation);
- judge rows, scored like `evaluate`'s (feature FD, recall, colour FD, copy check; and the copy check in latent space,
  which does not see the decoder's softness) against the held-out images: the
  decoder on training latents (what a perfect generator of training latents would draw: the decoder's ceiling), the
  held-out reconstructions, blurred held-out images (the target line), samples of the Gaussian, and the run's own
  samples without guidance and at its guidance;
- one verdict line that names the bottleneck.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import torch

from data import CLASS_NAMES, Split, to_unit_range
from evaluation.evaluate import Features, equal_n, per_class_images, score_set
from evaluation.ladder import ClassGaussian, class_ladder
from evaluation.metrics import copy_fraction, gaussian_blur
from models.batched import encode_images, eval_mode
from models.diffusion import SamplingOptions

FD_MARGIN = 0.5  # samples within this feature FD of the decoder's ceiling: the denoiser is not what limits them
# ... and within this shape FD of it (the shape judge: the decoder's ceiling ~0.3, a Gaussian's samples ~2.7, the cpu
# preset's samples ~0.8 on 2026-12-06, where a person names about 1 in 10)
SHAPE_MARGIN = 0.3
BLIND_FD = 0.1  # a judge that scores blurred held-out images this close to real ones cannot see (a trained one: ~1.6)
HELD_OUT_COPIES = 0.05  # the copy check's rate for held-out data, by construction (copy_fraction's 95% threshold)
BLUR_ROW = "held-out, blurred sigma 0.7"
CEILING_ROW = "decoder on training latents"
RECON_ROW = "held-out reconstructions"
MID_NOISE = 300  # the timestep whose gain over the Gaussian the verdict quotes


def encode_latents(autoencoder, diffusion, split: Split) -> tuple[torch.Tensor, torch.Tensor]:
    """The split's posterior means and those of its mirror images, in the diffusion's space: (z (2N, D), y (2N,)), the
    latents the denoiser is trained on (training/diffusion.py encodes the same set)."""
    mu, _ = encode_images(autoencoder, split.x)
    mu_flip, _ = encode_images(autoencoder, split.x, flip=True)
    z = diffusion.from_vae_latents(autoencoder, torch.cat([mu, mu_flip])).cpu()
    return z, torch.cat([split.y, split.y])


def loss_ladders(diffusion, bank: tuple, held: tuple, n_train: int, generator: torch.Generator) -> dict:
    """Per class: the ladder on held-out latents and on `n_train` training latents (of the bank itself)."""
    (z_bank, y_bank), (z_held, y_held) = bank, held
    out = {}
    for c, name in enumerate(CLASS_NAMES):
        own = z_bank[y_bank == c]
        gaussian = ClassGaussian.fit(own)
        train_queries = own[torch.randperm(len(own), generator=generator)[:n_train]]

        def eps_fn(z_t: torch.Tensor, t: int, c=c) -> torch.Tensor:
            t_batch = torch.full((len(z_t),), t, dtype=torch.long, device=diffusion.device)
            y = torch.full((len(z_t),), c, dtype=torch.long, device=diffusion.device)
            return diffusion.predict_eps(z_t.to(diffusion.device), t_batch, y, 1.0).cpu()

        out[name] = {
            split: class_ladder(eps_fn, queries, own, gaussian, diffusion.alphas_cumprod.cpu(), generator)
            for split, queries in (("held_out", z_held[y_held == c]), ("train", train_queries))
        }
    return out


def ladder_summary(ladder: dict) -> dict:
    """Per class and timestep: the denoiser's gain over the Gaussian on held-out latents (percent; positive = better)
    and its memorisation gap (held-out loss above training loss, percent of the held-out loss)."""
    summary = {}
    for name, sets in ladder.items():
        held, train = sets["held_out"], sets["train"]
        summary[name] = {
            t: {
                "gain_over_gaussian": 100 * (1 - held[t]["denoiser"] / held[t]["gaussian"]),
                "train_gap": 100 * (held[t]["denoiser"] - train[t]["denoiser"]) / held[t]["denoiser"],
            }
            for t in held
        }
    return summary


@torch.no_grad()
def decode(autoencoder, diffusion, z: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Latents of the diffusion's space (N, D) -> images in [0, 1] on the CPU."""
    device = next(autoencoder.parameters()).device
    with eval_mode(autoencoder):
        return torch.cat(
            [
                to_unit_range(autoencoder.decode(diffusion.to_vae_latents(autoencoder, chunk.float().to(device)))).cpu()
                for chunk in z.split(batch_size)
            ]
        )


def judge_image_sets(autoencoder, diffusion, bank, held_z, held: Split, n: int, options, seed: int) -> dict:
    """Per row, (the images of each class, their latents in the diffusion's space or None): lists in CLASS_NAMES
    order, n per class where they are drawn."""
    gen = torch.Generator().manual_seed(seed)
    (z_bank, y_bank), (z_held, y_held) = bank, held_z
    classes = range(len(CLASS_NAMES))
    originals = len(z_bank) // 2  # the bank holds the training latents, then their mirrors
    train_z = [z_bank[:originals][y_bank[:originals] == c][:n] for c in classes]
    gaussian_z = [ClassGaussian.fit(z_bank[y_bank == c]).sample(n, gen).float() for c in classes]
    options = options.resolve()
    sample_gen = torch.Generator(diffusion.device).manual_seed(seed)

    def samples(opts: SamplingOptions) -> list[torch.Tensor]:
        with eval_mode(diffusion.model):
            return [
                diffusion.sample(torch.full((n,), c, device=diffusion.device), opts, generator=sample_gen).cpu()
                for c in classes
            ]

    latents = {
        CEILING_ROW: train_z,
        RECON_ROW: [z_held[y_held == c] for c in classes],
        BLUR_ROW: None,
        "samples of the per-class Gaussian": gaussian_z,
        "samples, no guidance": samples(options.replace(guidance_scale=1.0)),
        f"samples, cfg {options.guidance_scale:g}": samples(options),
    }
    blurred = [gaussian_blur(images, 0.7) for images in per_class_images(held)]
    return {
        row: (blurred, None) if zs is None else ([decode(autoencoder, diffusion, z) for z in zs], zs)
        for row, zs in latents.items()
    }


def latent_copies(bank: tuple, held_z: tuple, latents: list[torch.Tensor]) -> list[float]:
    """The copy check in the diffusion's latent space, per class: the share of `latents` closer to their nearest
    training latent than 95% of the held-out latents are (0.05 for held-out latents by construction). Unlike the judge's
    features, it does not see the decoder's softness, only what the denoiser drew."""
    (z_bank, y_bank), (z_held, y_held) = bank, held_z
    return [copy_fraction(z_bank[y_bank == c], z_held[y_held == c], z) for c, z in enumerate(latents)]


def bottleneck(sample_fd: float, ceiling_fd: float, blur_fd: float, shape_gap: float | None = None) -> str:
    """The bottleneck of one class: the denoiser while its samples score more than FD_MARGIN above the decoder's
    ceiling, or (`shape_gap`: their shape FD less the ceiling's) more than SHAPE_MARGIN above it in shape FD: fur
    drawn well on no animal's shape is the denoiser's failure; else the decoder while that ceiling lies above the
    blur line; else none."""
    if sample_fd > ceiling_fd + FD_MARGIN or (shape_gap is not None and shape_gap > SHAPE_MARGIN):
        return "the denoiser"
    return "the decoder" if ceiling_fd > blur_fd else "none"


def verdict(rows: dict, summary: dict) -> str:
    """One line naming the bottleneck, from the judge rows' feature FD and the ladder's gain over the Gaussian; no
    verdict from a judge that cannot see blur; each class's own when the two classes disagree."""
    sample_row = list(rows)[-1]  # the run's samples at its guidance: the last row of judge_image_sets
    fd = {row: [rows[row][c]["fd"] for c in CLASS_NAMES] for row in (sample_row, CEILING_ROW, BLUR_ROW)}
    if not all(v is not None and math.isfinite(v) and v >= BLIND_FD for v in fd[BLUR_ROW]):
        return (
            f"no verdict: the judge cannot see blur (held-out images blurred with sigma 0.7 score feature FD "
            f"{' / '.join('n/a' if v is None else f'{v:.2f}' for v in fd[BLUR_ROW])}, under {BLIND_FD}); give it more "
            "images or epochs (--eval-reference-dir, --eval-classifier-epochs) and more held-out images"
        )
    pairs = {row: " / ".join(f"{v:.2f}" for v in values) for row, values in fd.items()}
    shape = {row: [rows[row][c].get("shape_fd") for c in CLASS_NAMES] for row in (sample_row, CEILING_ROW)}
    gaps = [None if None in pair else pair[0] - pair[1] for pair in zip(shape[sample_row], shape[CEILING_ROW])]
    names = [
        bottleneck(*(fd[row][i] for row in (sample_row, CEILING_ROW, BLUR_ROW)), gaps[i])
        for i in range(len(CLASS_NAMES))
    ]
    by_shape = (
        f"; in shape FD {' / '.join(f'{v:.2f}' for v in shape[sample_row])} against "
        f"{' / '.join(f'{v:.2f}' for v in shape[CEILING_ROW])}"
        if None not in gaps
        else ""
    )
    gains = [summary[c][MID_NOISE]["gain_over_gaussian"] for c in CLASS_NAMES]
    gain = " / ".join(f"{abs(g):.0f}% {'below' if g >= 0 else 'above'}" for g in gains)
    if len(set(names)) > 1:
        line = (
            "the classes disagree: "
            + ", ".join(f"{c}s: {n if n != 'none' else 'no bottleneck'}" for c, n in zip(CLASS_NAMES, names))
            + f". Samples {pairs[sample_row]} (cat / dog), decoder on training latents {pairs[CEILING_ROW]}, "
            f"blur-0.7 line {pairs[BLUR_ROW]}{by_shape}"
        )
    elif names[0] == "the denoiser":
        line = (
            f"bottleneck: the denoiser. Its samples score feature FD {pairs[sample_row]} (cat / dog) against "
            f"{pairs[CEILING_ROW]} for the decoder on training latents{by_shape}; on held-out latents its loss is "
            f"{gain} the exact Gaussian's at t = {MID_NOISE}"
        )
    elif names[0] == "the decoder":
        line = (
            f"bottleneck: the decoder. The samples ({pairs[sample_row]}) are within {FD_MARGIN} of what it draws from "
            f"training latents ({pairs[CEILING_ROW]}), which is above the blur-0.7 line ({pairs[BLUR_ROW]})"
        )
    else:
        line = (
            f"no bottleneck left at this yardstick: the samples ({pairs[sample_row]}) are within {FD_MARGIN} of the "
            f"decoder on training latents ({pairs[CEILING_ROW]}), below the blur-0.7 line ({pairs[BLUR_ROW]})"
        )
    copies = [rows[sample_row][c]["latent_copies"] for c in CLASS_NAMES]  # twice the held-out rate: a warning
    if any(c > 2 * HELD_OUT_COPIES for c in copies):
        line += (
            f"; and its samples are close copies of training latents as often as "
            f"{' / '.join(f'{c:.2f}' for c in copies)} (held-out latents: {HELD_OUT_COPIES})"
        )
    return line


def diagnose_run(
    autoencoder,
    diffusion,
    train: Split,
    held: Split,
    reference,
    judge,
    out_dir: Path,
    eval_cfg,
    options,
    seed: int,
    shape_judge=None,
) -> dict:
    """Every number of the diagnosis as one JSON-ready dict, also written to out_dir/diagnose.json."""
    gen = torch.Generator().manual_seed(seed)
    n = eval_cfg.diagnose_samples
    bank = encode_latents(autoencoder, diffusion, train)
    mu, _ = encode_images(autoencoder, held.x)
    held_z = (diffusion.from_vae_latents(autoencoder, mu).cpu(), held.y)
    ladder = loss_ladders(diffusion, bank, held_z, n, gen)
    summary = ladder_summary(ladder)
    features, real, seen = Features(judge), per_class_images(held), per_class_images(train)
    shape = Features(shape_judge) if shape_judge is not None else None
    scored = equal_n(n, real)  # every row at one n
    rows = {}
    for name, (images, latents) in judge_image_sets(
        autoencoder, diffusion, bank, held_z, held, n, options, seed
    ).items():
        rows[name] = score_set(list(zip(images, real)), features, reference.classes, seen, scored, shape)
        for c, value in zip(CLASS_NAMES, latent_copies(bank, held_z, latents) if latents else [None, None]):
            rows[name][c]["latent_copies"] = value
    result = {
        "ladder": ladder,
        "ladder_summary": summary,
        "judge_rows": rows,
        "verdict": verdict(rows, summary),
        "samples_per_class": n,
        "scored_per_class": scored,
        "sampling": dataclasses.asdict(options.resolve()),
        "seed": seed,
    }
    (out_dir / "diagnose.json").write_text(json.dumps(_finite(result), indent=2))
    return result


def _finite(value):
    """NaN as None and int keys as strings, so the file is strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def format_report(result: dict) -> str:
    """The diagnosis as plain text: the ladder per class, the judge rows, the verdict."""
    lines = [
        "loss ladder: eps-MSE per dimension (no guidance, true label); gain = the denoiser's loss below the "
        "Gaussian's on held-out latents; gap = its held-out loss above its training loss; n_eff = training "
        "latents the empirical optimum mixes"
    ]
    for name, sets in result["ladder"].items():
        lines.append(
            f"{name}: {'t':>5s} | held-out: {'denoiser':>9s}{'Gaussian':>10s}{'empirical':>10s}{'gain':>9s}"
            f" | training: {'denoiser':>9s}{'empirical':>10s}{'n_eff':>8s}{'gap':>9s}"
        )
        for t, held in sets["held_out"].items():
            train, s = sets["train"][t], result["ladder_summary"][name][t]
            lines.append(
                f"{'':{len(name) + 1}s} {t:>5d} | {'':9s} {held['denoiser']:>9.4f}{held['gaussian']:>10.4f}"
                f"{held['empirical']:>10.4f}{s['gain_over_gaussian']:>8.1f}% | {'':9s} {train['denoiser']:>9.4f}"
                f"{train['empirical']:>10.4f}{train['effective_latents']:>8.1f}{s['train_gap']:>8.1f}%"
            )
    lines.append(
        f"judge rows ({result['samples_per_class']} per class where drawn, every row scored at n = "
        f"{result['scored_per_class']} per class; cat / dog, against the held-out "
        "images of the class):"
    )
    columns = ("FD", "recall", "shape FD", "shape recall", "colour FD", "copies")
    lines.append(f"{'set':40s}" + "".join(f"{c:>15s}" for c in columns) + f"{'latent copies':>16s}")
    for row, scores in result["judge_rows"].items():
        cells = [
            " / ".join("n/a" if scores[c].get(m) is None else f"{scores[c][m]:{f}}" for c in CLASS_NAMES)
            for m, f in (
                ("fd", ".2f"),
                ("recall", ".2f"),
                ("shape_fd", ".2f"),
                ("shape_recall", ".2f"),
                ("colour_fd", ".0f"),
                ("copies", ".2f"),
                ("latent_copies", ".2f"),
            )
        ]
        lines.append(f"{row:40s}" + "".join(f"{cell:>15s}" for cell in cells[:6]) + f"{cells[6]:>16s}")
    lines.append(result["verdict"])
    return "\n".join(lines)
