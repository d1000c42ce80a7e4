"""Can the denoiser learn the latents' structure at all? Train it on a few hundred training latents until its loss
stops falling, and follow its noise-prediction error on exactly those latents against the two exact denoisers of the
loss ladder (evaluation/ladder.py): the per-class Gaussian, and the empirical optimum, whose error on its own training
latents falls to zero at low and mid noise. A network that can fit its data approaches the empirical optimum there.

python experiments/overfit.py RUN_DIR --out docs/overfit.json [--latents 512] [--max-steps 6000] [--prediction v]
    [--timestep-sampling lognormal]

RUN_DIR is a trained run (its VAE encodes the latents; its data and seed pick them; its denoiser is not used).
Writes the curve as JSON and as a figure beside it (.png). Raw weights (no EMA), no class dropout, z = mu (no
posterior noise): nothing but the network stands between it and the empirical optimum.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from evaluation.ladder import ClassGaussian, class_ladder  # noqa: E402
from commands import load_splits  # noqa: E402
from models.batched import encode_images  # noqa: E402
from models.diffusion import TIMESTEP_SAMPLING, ConditionalDenoiseDiffusion  # noqa: E402
from models.pipeline import build  # noqa: E402
from models.vae import SimpleAutoencoder  # noqa: E402
from checkpoints import AUTOENCODER_FILE, load_file  # noqa: E402
from models.unet import PREDICTIONS, ConditionalUNet  # noqa: E402
from training.config import RunConfig  # noqa: E402

STEPS = (100, 300, 500, 700)


def ladder(diffusion, z: torch.Tensor, y: torch.Tensor, seed: int) -> dict[int, dict[str, float]]:
    """The ladder on the training latents themselves, averaged over the classes (same noise at every evaluation)."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for c in (0, 1):
        own = z[y == c]

        def eps_fn(z_t, t, c=c):
            labels = torch.full((len(z_t),), c)
            return diffusion.predict_eps(z_t, torch.full((len(z_t),), t), labels, 1.0)

        rows.append(class_ladder(eps_fn, own, own, ClassGaussian.fit(own), diffusion.alphas_cumprod, gen, STEPS))
    return {t: {k: sum(r[t][k] for r in rows) / 2 for k in rows[0][t]} for t in STEPS}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--latents", type=int, default=512)
    p.add_argument("--max-steps", type=int, default=6000)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--prediction", choices=PREDICTIONS, default="v")
    p.add_argument("--timestep-sampling", choices=TIMESTEP_SAMPLING, default="lognormal")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    torch.set_num_threads(2)
    cfg = json.loads((a.run_dir / "config.json").read_text())
    run = RunConfig(**{k: v for k, v in cfg["run"].items() if k in RunConfig.__dataclass_fields__})
    train, _ = load_splits(run)
    path = a.run_dir / AUTOENCODER_FILE
    ae = build(SimpleAutoencoder, load_file(path), path).eval()
    torch.manual_seed(0)
    net = ConditionalUNet(prediction=a.prediction)  # in the default process (cosine, 1000 steps, normalised latents)
    diffusion = ConditionalDenoiseDiffusion(net, device="cpu", class_dropout=0.0, timestep_sampling=a.timestep_sampling)
    idx = torch.cat([torch.nonzero(train.y == c)[: a.latents // 2, 0] for c in (0, 1)])
    with torch.no_grad():
        z = diffusion.from_vae_latents(ae, encode_images(ae, train.x[idx])[0])
    y = train.y[idx]
    opt = torch.optim.AdamW(net.parameters(), lr=a.lr, betas=(0.9, 0.99), fused=True)
    gen = torch.Generator().manual_seed(0)
    curve, start = [], time.perf_counter()
    for step in range(a.max_steps + 1):
        if step % a.eval_every == 0:
            net.eval()
            with torch.no_grad():
                rows = ladder(diffusion, z, y, 1)
                curve.append({"step": step, "seconds": time.perf_counter() - start, "ladder": rows})
            net.train()
            mid = curve[-1]["ladder"][300]
            print(
                f"step {step}: eps-MSE at t=300 {mid['denoiser']:.4f} (Gaussian {mid['gaussian']:.4f}, empirical "
                f"{mid['empirical']:.4f})",
                flush=True,
            )
            earlier = [c for c in curve if c["step"] <= step - 1500]
            if earlier and mid["denoiser"] > 0.97 * earlier[-1]["ladder"][300]["denoiser"]:
                break  # less than 3% better than 1,500 steps ago: the loss has stopped falling
        batch = torch.randint(0, len(z), (a.batch_size,), generator=gen)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, _, _ = diffusion.loss(z[batch], y[batch], gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    record = {"prediction": a.prediction, "timestep_sampling": a.timestep_sampling}
    a.out.write_text(json.dumps({**record, "latents": len(z), "lr": a.lr, "curve": curve}, indent=1))
    fig, ax = plt.subplots(figsize=(7, 4))
    for t, color in zip(STEPS, ("C0", "C1", "C2", "C3")):
        ax.plot([c["step"] for c in curve], [c["ladder"][t]["denoiser"] for c in curve], color=color, label=f"t={t}")
        ax.axhline(curve[0]["ladder"][t]["gaussian"], color=color, ls="--", lw=0.8)
        ax.axhline(curve[0]["ladder"][t]["empirical"], color=color, ls=":", lw=0.8)
    ax.set(
        yscale="log",
        ylim=(1e-3, 1.2),
        xlabel="step",
        ylabel="eps-MSE on its own training latents",
        title=f"the denoiser on {len(z)} latents (dashed: Gaussian, dotted: empirical optimum)",
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(a.out.with_suffix(".png"), dpi=100)


if __name__ == "__main__":
    main()
