"""`python main.py evaluate`: numbers for a trained run against held-out real images, with calibration rows that show
the scale of every number; written to JSON, printed as a table, and a sheet of samples to look at.

Every set of images is scored per class in the judge's features against the held-out images of that class:
Frechet distance, precision and recall (k = 3); how often the judge calls an image its class, and what else it
calls it. The calibration sets (real held-out images, blurred ones, a few images repeated, the VAE's
reconstructions) show which numbers can see blur and a lack of variety: only those should be believed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from pathlib import Path

import torch
from tqdm import tqdm

from data import CLASS_NAMES, Split, to_model_range, to_unit_range
from evaluation.classifier import JudgeClassifier, classify
from evaluation.judge import Reference, judge_accuracy
from evaluation.metrics import (
    InceptionMetrics,
    colour_descriptor,
    copy_fraction,
    frechet_distance,
    gaussian_blur,
    precision_recall,
    saturate,
    ssim,
)
from models.batched import psnr, reconstruct_images
from models.diffusion import SamplingOptions
from models.generate import iter_class_samples
from visualization.samples import save_reconstruction_sheet, save_sample_sheet

log = logging.getLogger(__name__)
STEREOTYPE_IMAGES = 20  # distinct images in the stereotype set
SHEET_SAMPLES = 64  # samples per class on the sheet
# Calibration: a metric can see a failure if the failure scores clearly worse than real images, by these margins.
CLEARLY_WORSE = {"fd": 2.0, "colour_fd": 2.0, "precision": 0.1, "recall": 0.1, "fidelity": 0.1}  # FD: a ratio
CLEARLY_WORSE.update(shape_fd=2.0, shape_recall=0.1)
REAL, STEREOTYPE = "real held-out, half vs half", f"stereotype, {STEREOTYPE_IMAGES} images repeated"
TRAINING = "real training images"  # the floor at the samples' n: other real images, not the held-out ones
FAILURES = ("blurred, sigma 1.0", STEREOTYPE, "colour saturated x2")  # what a yardstick must see


def per_class_images(split: Split) -> list[torch.Tensor]:
    """The images of each class (CLASS_NAMES order) as floats in [0, 1]."""
    images = to_unit_range(to_model_range(split.x))
    return [images[split.y == label] for label in range(len(CLASS_NAMES))]


def reconstruction_scores(autoencoder, held: Split) -> tuple[dict[str, float], torch.Tensor]:
    """PSNR and SSIM of held-out images against their reconstructions from mu; and the reconstructions."""
    originals, recons = to_unit_range(to_model_range(held.x)), reconstruct_images(autoencoder, held.x)
    return {"psnr": psnr(originals, recons), "ssim": ssim(originals, recons)}, recons


def sample_classes(
    autoencoder, diffusion, n: int, options: SamplingOptions, seed: int
) -> tuple[list[torch.Tensor], float]:
    """n samples of each class (generate_class_samples' images) and the sampling rate in images per second, under a
    progress bar."""
    gen = torch.Generator(diffusion.device).manual_seed(seed)
    start = time.perf_counter()
    samples = []
    with tqdm(total=len(CLASS_NAMES) * n, desc="sampling", unit="image") as bar:
        for label in range(len(CLASS_NAMES)):
            batches = []
            for images in iter_class_samples(autoencoder, diffusion, label, n, options=options, generator=gen):
                batches.append(images)
                bar.update(len(images))
            samples.append(torch.cat(batches))
    return samples, len(CLASS_NAMES) * n / (time.perf_counter() - start)


def equal_n(drawn: int, real: list[torch.Tensor]) -> int:
    """The one set size at which every row of a report is scored: the images drawn per class, at most the held-out
    images of the smallest class (the reference every row is scored against)."""
    return min(drawn, *(len(images) for images in real))


def calibration_sets(
    real: list[torch.Tensor],
    recons: list[torch.Tensor],
    generator: torch.Generator,
    train: list[torch.Tensor] | None = None,
) -> dict:
    """Per class (lists in CLASS_NAMES order): each calibration set as (images, reference images) in [0, 1].

    The reference is the class's held-out images, except for the real row, which compares one random half of them
    with the other (the floor of every distance, at half the images). With the class's training images (`train`), a
    random draw of as many of them as there are held-out images is the floor at the samples' own n: the blurred and
    reconstructed rows are the held-out images themselves, altered, so their distances hold no sampling noise, and
    the samples' do."""
    sets: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {
        REAL: [],
        **({TRAINING: []} if train is not None else {}),
        "blurred, sigma 0.7": [],
        "blurred, sigma 1.0": [],
        STEREOTYPE: [],
        "colour saturated x2": [],
        "VAE reconstructions": [],
    }
    for images, recon in zip(real, recons):
        order = torch.randperm(len(images), generator=generator)
        half = len(images) // 2
        few = images[order[:STEREOTYPE_IMAGES]]
        sets[REAL].append((images[order[half:]], images[order[:half]]))
        if train is not None:
            seen = train[len(sets[TRAINING])]
            sets[TRAINING].append((seen[torch.randperm(len(seen), generator=generator)[: len(images)]], images))
        sets["blurred, sigma 0.7"].append((gaussian_blur(images, 0.7), images))
        sets["blurred, sigma 1.0"].append((gaussian_blur(images, 1.0), images))
        repeated = few.repeat(-(-len(images) // len(few)), 1, 1, 1)[: len(images)]
        sets[STEREOTYPE].append((repeated, images))
        sets["colour saturated x2"].append((saturate(images, 2.0), images))
        sets["VAE reconstructions"].append((recon, images))
    return sets


class Features:
    """The judge's verdicts and features of image sets, computed once per set (the reference sets recur)."""

    def __init__(self, judge):
        self.judge, self.memo = judge, {}

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if id(images) not in self.memo:
            self.memo[id(images)] = (images, classify(self.judge, images))  # the tensor is kept: its id stays unique
        return self.memo[id(images)][1]


def score_set(
    pairs: list[tuple[torch.Tensor, torch.Tensor]],
    features: Features,
    classes: tuple[str, ...],
    train: list[torch.Tensor] | None = None,
    n: int | None = None,
    shape: Features | None = None,
) -> dict:
    """Per class: FD, colour FD, precision, recall (k = 3) in the judge's features against the reference, and its
    verdicts; with the class's training images (`train`, in CLASS_NAMES order), also the copy check
    (`copy_fraction`); with the shape judge's `shape` features, its FD and recall too ("shape_fd", "shape_recall").

    FD and recall depend on how many images are scored (FD is biased upward at small n, recall rises with n), so
    every set is scored at `n` images (default: the reference's size): a larger set is split into disjoint chunks of n
    and those four numbers are the mean over the chunks. Rows scored at one n compare; the per-image numbers (copies,
    verdicts) use every image."""
    scores = {}
    for c, (name, (images, reference)) in enumerate(zip(CLASS_NAMES, pairs)):
        pred, feat = features(images)
        ref_feat = features(reference)[1]
        size = min(n or len(reference), len(images))
        starts = range(0, len(images) - size + 1, size)
        chunk_scores = [_set_scores(feat[i : i + size], images[i : i + size], ref_feat, reference) for i in starts]
        if shape is not None:
            shape_feat, shape_ref = shape(images)[1], shape(reference)[1]
            for scores_of_chunk, i in zip(chunk_scores, starts):
                scores_of_chunk.update(_shape_scores(shape_feat[i : i + size], shape_ref))
        called = torch.bincount(pred, minlength=len(classes)).float() / len(pred)
        top = called.topk(min(3, len(classes)))
        scores[name] = {
            "n": size,
            "chunks": len(chunk_scores),
            **{k: sum(s[k] for s in chunk_scores) / len(chunk_scores) for k in chunk_scores[0]},
            "fidelity": called[classes.index(name)].item(),
            "called": [[classes[i], v] for v, i in zip(top.values.tolist(), top.indices.tolist())],
        }
        if train is not None:
            scores[name]["copies"] = copy_fraction(features(train[c])[1], ref_feat, feat)
    return scores


def _set_scores(feat: torch.Tensor, images: torch.Tensor, ref_feat: torch.Tensor, reference: torch.Tensor) -> dict:
    """The numbers of one set that depend on its size: FD, colour FD, precision and recall against the reference."""
    precision, recall = precision_recall(ref_feat, feat, k=3)
    return {
        "fd": frechet_distance(feat.numpy(), ref_feat.numpy()),
        "colour_fd": frechet_distance(colour_descriptor(images).numpy(), colour_descriptor(reference).numpy()),
        "precision": precision,
        "recall": recall,
    }


def _shape_scores(feat: torch.Tensor, ref_feat: torch.Tensor) -> dict:
    """FD and recall (k = 3) of one set in the shape judge's features against the reference's."""
    _, recall = precision_recall(ref_feat, feat, k=3)
    return {"shape_fd": frechet_distance(feat.numpy(), ref_feat.numpy()), "shape_recall": recall}


def blind_check(calibration: dict) -> dict[str, list[str]]:
    """For each metric, the failures (blur sigma 1.0, the stereotype, saturated colour) it ranks clearly worse than
    real images for both classes (CLEARLY_WORSE): a failure no headline metric sees would pass unnoticed."""
    real = calibration[REAL]

    def worse(metric: str, r: float, f: float) -> bool:
        margin = CLEARLY_WORSE[metric]
        return f >= margin * r if metric.endswith("fd") else f <= r - margin

    return {
        metric: [
            bad
            for bad in FAILURES
            if all(worse(metric, real[c][metric], calibration[bad][c][metric]) for c in CLASS_NAMES)
        ]
        for metric in CLEARLY_WORSE
        if metric in real[CLASS_NAMES[0]]  # the shape metrics: only where a shape judge scored
    }


def evaluate_run(
    autoencoder,
    diffusion,
    train: Split,
    held: Split,
    reference: Reference,
    judge: JudgeClassifier,
    out_dir: Path,
    eval_cfg,
    options: SamplingOptions,
    seed: int,
    shape_judge: JudgeClassifier | None = None,
) -> dict:
    """Every number of the evaluation as one JSON-ready dict (also written to out_dir/<eval_cfg.name>.json), and the
    sample sheet (out_dir/<eval_cfg.name>_sheet.png); samples are drawn from `seed`."""
    device = diffusion.device
    held_images = to_unit_range(to_model_range(reference.held.x))
    accuracy = judge_accuracy(judge, reference, held_images)
    samples, rate = sample_classes(autoencoder, diffusion, eval_cfg.samples_per_class, options, seed)
    reconstruction, recons = reconstruction_scores(autoencoder, held)
    real, seen = per_class_images(held), per_class_images(train)
    features, shape = Features(judge), Features(shape_judge) if shape_judge is not None else None
    recons_per_class = [recons[held.y == label] for label in range(len(CLASS_NAMES))]
    sets = calibration_sets(real, recons_per_class, torch.Generator().manual_seed(seed), seen)
    n = equal_n(eval_cfg.samples_per_class, real)
    calibration = {name: score_set(pairs, features, reference.classes, seen, n, shape) for name, pairs in sets.items()}
    result = {
        "reconstruction": reconstruction,
        "judge": {"classes": list(reference.classes), "source": reference.source, "accuracy": accuracy},
        "shape_judge": shape_judge_scores(shape_judge, reference, held_images),
        "samples": score_set(list(zip(samples, real)), features, reference.classes, seen, n, shape),
        "calibration": calibration,
        "metric_sees_failures": blind_check(calibration),
        "sampling": {
            **dataclasses.asdict(options.resolve()),
            "samples_per_class": eval_cfg.samples_per_class,
            "images_per_s": rate,
            "s_per_1000_images": 1000 / rate,
            "seed": seed,
            "device": str(device),
        },
        "held_out_images": len(held),
        "eval_config": dataclasses.asdict(eval_cfg),
    }
    inception_scores(result, samples, real, eval_cfg, device)
    result["sheet"] = str(
        save_sample_sheet([s[:SHEET_SAMPLES] for s in samples], CLASS_NAMES, out_dir / f"{eval_cfg.name}_sheet.png")
    )
    path = out_dir / f"{eval_cfg.name}_reconstructions.png"
    result["reconstruction_sheet"] = str(save_reconstruction_sheet(real, recons_per_class, CLASS_NAMES, path))
    result = _nan_to_none(result)
    (out_dir / f"{eval_cfg.name}.json").write_text(json.dumps(result, indent=2))
    return result


def scored_outputs(out_dir: Path) -> list[Path]:
    """The files of a run folder that score its models: every evaluation (`NAME.json` with its sheets, whatever
    --eval-name named it) and diagnose.json. The judge's cache is not one: it depends on real images only."""
    found = []
    for path in sorted(Path(out_dir).glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and ("eval_config" in record or "verdict" in record):
            sheets = (path.with_name(f"{path.stem}_sheet.png"), path.with_name(f"{path.stem}_reconstructions.png"))
            found += [path, *(p for p in sheets if p.is_file())]
    return found


def _nan_to_none(value):
    """NaN (a metric undefined on too few images) as None, so the JSON file is strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    return value


def inception_scores(result: dict, samples: list[torch.Tensor], real: list[torch.Tensor], eval_cfg, device) -> None:
    """Add FID and KID per class to the samples' scores where Inception weights can be had; else say why not."""
    inception = InceptionMetrics(eval_cfg.fid_weights, device)
    result["fid_available"] = inception.available
    if not inception.available:
        log.warning(
            "FID/KID skipped: Inception weights unavailable (%s); pass --fid-weights PATH "
            "(pt_inception-2015-12-05-6726825d.pth)",
            inception.reason,
        )
        return
    for name, fake, reference in zip(CLASS_NAMES, samples, real):
        result["samples"][name].update(inception.compute(reference, fake))


def shape_judge_scores(shape_judge, reference: Reference, held_images: torch.Tensor) -> dict | None:
    """The shape judge's accuracy on the reference's held-out images (None without a shape judge)."""
    return None if shape_judge is None else {"accuracy": judge_accuracy(shape_judge, reference, held_images)}


def _shape_judge_line(result: dict) -> list[str]:
    """The shape judge's accuracy as one line of the table ([] without a shape judge)."""
    if not result.get("shape_judge"):
        return []
    acc = result["shape_judge"]["accuracy"]
    per_class = ", ".join(f"{c} {acc['per_class'][c]:.0%}" for c in CLASS_NAMES)
    return [
        f"shape judge: the same, on luminance with texture randomised in training; accuracy on held-out images "
        f"{acc['overall']:.1%} ({per_class})"
    ]


def _pair(scores: dict, metric: str, fmt: str) -> str:
    values = [scores[c].get(metric) for c in CLASS_NAMES]
    return " / ".join("n/a" if v is None else format(v, fmt) for v in values)


def format_table(result: dict) -> str:
    """The evaluation as a plain-text table: the samples' row, then the calibration rows."""
    rec, smp, judge = result["reconstruction"], result["sampling"], result["judge"]
    acc = judge["accuracy"]
    per_class = ", ".join(f"{c} {acc['per_class'][c]:.0%}" for c in CLASS_NAMES)
    lines = [
        f"reconstruction (held-out, n={result['held_out_images']}): PSNR {rec['psnr']:.2f} dB, SSIM {rec['ssim']:.3f}",
        f"judge: {len(judge['classes'])}-way classifier trained on {judge['source']}; accuracy on held-out images "
        f"{acc['overall']:.1%} ({per_class})",
        *_shape_judge_line(result),
        f"sampling: {smp['sampler']} {smp['steps']} steps, eta {smp['eta']}, guidance {smp['guidance_scale']} "
        f"for t/T in {list(smp['guidance_interval'])}, "
        f"{smp['samples_per_class']} per class, {smp['s_per_1000_images']:.1f} s per 1000 images on {smp['device']}",
        "per class (cat / dog), in the judge's features against the held-out images of the class (copies: the share "
        "closer to a training image than 95% of held-out images are):",
        f"{'set':38s}{'n':>11s}{'FD':>15s}{'recall':>15s}{'shape FD':>15s}{'shape recall':>15s}{'colour FD':>15s}"
        f"{'copies':>15s}{'precision':>15s}{'called its class':>19s}",
    ]
    rows = [("samples", result["samples"]), ("-- calibration --", None), *result["calibration"].items()]
    for name, s in rows:
        if s is None:
            lines.append(name)
            continue
        lines.append(
            f"{name:38s}{_pair(s, 'n', 'd'):>11s}{_pair(s, 'fd', '.2f'):>15s}{_pair(s, 'recall', '.2f'):>15s}"
            f"{_pair(s, 'shape_fd', '.2f'):>15s}{_pair(s, 'shape_recall', '.2f'):>15s}"
            f"{_pair(s, 'colour_fd', '.0f'):>15s}{_pair(s, 'copies', '.2f'):>15s}{_pair(s, 'precision', '.2f'):>15s}"
            f"{_pair(s, 'fidelity', '.0%'):>19s}"
        )
    for c in CLASS_NAMES:
        called = ", ".join(f"{name} {v:.0%}" for name, v in result["samples"][c]["called"])
        fid = result["samples"][c]
        fid_text = f"; FID {fid['fid']:.2f}, KID {fid['kid_mean']:.4f}" if "fid" in fid else ""
        lines.append(f"samples of {c}s are called: {called}{fid_text}")
    seen = result["metric_sees_failures"]
    lines.append("which failures each metric ranks clearly worse than real images (a blind metric sees none):")
    lines += [f"  {m}: {', '.join(bad) if bad else 'NONE'}" for m, bad in seen.items()]
    lines.append(
        f"sample sheet: {result['sheet']}; reconstructions beside their originals: {result['reconstruction_sheet']}"
    )
    return "\n".join(lines)
