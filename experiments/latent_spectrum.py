"""How the latent's power spreads over spatial frequencies, against the images' own at the latent's grid.

    python experiments/latent_spectrum.py RUN [RUN ...] --data-dir DATA [--figure FILE] [--json FILE]

For each run folder: its VAE encodes the run's training images (the means, normalised per dimension as the denoiser
sees them); every latent channel's S x S map goes through a 2-D FFT, and its power is averaged over the images and
binned by radial frequency (cycles per latent position, DC first). The images, average-pooled to the same S x S grid
and standardised per dimension the same way, give the reference. Skorokhodov et al. (2025, "Improving the
Diffusability of Autoencoders") found autoencoder latents to carry much more of their power at high frequencies than
images do, which makes them harder to diffuse (the coarse-to-fine order of denoising is lost); this measures whether
ours do. The summary number is the share of the power above half the highest frequency (radius > 0.25 cycles).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data import load_dataset, to_model_range  # noqa: E402
from models.batched import encode_images  # noqa: E402
from checkpoints import AUTOENCODER_FILE, load_file  # noqa: E402
from models.pipeline import build  # noqa: E402
from models.vae import SimpleAutoencoder  # noqa: E402

HIGH = 0.25  # cycles per position: the upper half of what an S x S grid holds (its Nyquist frequency is 0.5)


def radial_frequencies(side: int) -> torch.Tensor:
    """(side, side): the radius of each FFT bin in cycles per position."""
    f = torch.fft.fftfreq(side)
    return (f[:, None] ** 2 + f[None, :] ** 2).sqrt()


def standardise(v: torch.Tensor) -> torch.Tensor:
    """(N, D) -> zero mean, unit variance per dimension (the denoiser's view of a latent)."""
    return (v - v.mean(0)) / v.std(0).clamp(min=1e-8)


def power_spectrum(maps: torch.Tensor) -> torch.Tensor:
    """(N, C, S, S) -> (C, S, S): each channel's power per FFT bin, averaged over N, as a share of its total."""
    power = torch.fft.fft2(maps.double()).abs().square().mean(0)
    return power / power.sum(dim=(1, 2), keepdim=True)


def radial_profile(power: torch.Tensor) -> tuple[list[float], torch.Tensor]:
    """(C, S, S) shares -> (radii, (C, R)): the shares summed over the bins of each distinct radius, DC first."""
    r = radial_frequencies(power.shape[-1]).round(decimals=4)
    radii = torch.unique(r)
    return radii.tolist(), torch.stack([power[:, r == v].sum(-1) for v in radii], dim=1)


def high_share(power: torch.Tensor) -> torch.Tensor:
    """(C, S, S) shares -> (C,): the share of each channel's power above HIGH cycles per position."""
    return power[:, radial_frequencies(power.shape[-1]) > HIGH].sum(-1)


def spectra(run: Path, data_dir: str) -> dict:
    """The run's latent spectra and its images' at the latent's grid (luminance and RGB), on its training split."""
    recorded = json.loads((run / "config.json").read_text())["run"]
    autoencoder = build(SimpleAutoencoder, load_file(run / AUTOENCODER_FILE), run / AUTOENCODER_FILE).eval()
    train, _ = load_dataset(
        data_dir,
        download_root=run / "data",
        holdout_fraction=recorded["holdout_fraction"],
        max_images=recorded["max_images"],
        generator=torch.Generator().manual_seed(recorded["seed"]),
    )
    side, channels = autoencoder.side, autoencoder.latent_channels
    mu, _ = encode_images(autoencoder, train.x)
    latents = standardise(autoencoder.normalize_latent(mu)).view(-1, channels, side, side)
    pooled = F.adaptive_avg_pool2d(to_model_range(train.x), side)  # (N, 3, S, S)
    images = standardise(pooled.flatten(1)).view(-1, 3, side, side)
    out = {"run": str(run), "layout": f"{channels}x{side}x{side}", "images": len(train)}
    for name, maps in (("latent", latents), ("image", images)):
        power = power_spectrum(maps)
        radii, profile = radial_profile(power)
        out[name] = {
            "radii": [round(v, 4) for v in radii],
            "profile_per_channel": [[round(v, 4) for v in row] for row in profile.tolist()],
            "profile_mean": [round(v, 4) for v in profile.mean(0).tolist()],
            "high_share_per_channel": [round(v, 4) for v in high_share(power).tolist()],
            "high_share_mean": round(high_share(power).mean().item(), 4),
        }
    return out


def plot(results: list[dict], labels: list[str], path: Path) -> None:
    """One panel per run, titled by its label: each latent channel's radial profile (thin), their mean and the images'
    (thick)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 3.8), squeeze=False)
    for ax, res, label in zip(axes[0], results, labels):
        lat, img = res["latent"], res["image"]
        for row in lat["profile_per_channel"]:
            ax.plot(lat["radii"], row, color="tab:orange", alpha=0.35, lw=0.8)
        ax.plot(lat["radii"], lat["profile_mean"], color="tab:orange", lw=2.5, label="latent channels (mean)")
        ax.plot(img["radii"], img["profile_mean"], color="tab:blue", lw=2.5, label="images pooled to the grid")
        ax.axvline(HIGH, color="grey", ls=":", lw=1)
        ax.set_yscale("log")
        ax.set_xlabel("radial frequency (cycles per latent position)")
        ax.set_ylabel("share of power")
        ax.set_title(
            f"{label}\nabove {HIGH} cycles: latent {lat['high_share_mean']:.0%}, images {img['high_share_mean']:.0%}",
            fontsize=10,
        )
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", type=Path, nargs="+", help="run folders with a trained VAE (the denoiser is not needed)")
    p.add_argument("--data-dir", required=True, help="the runs' training data")
    p.add_argument("--figure", type=Path, help="write the radial profiles to this image")
    p.add_argument("--labels", nargs="+", help="the figure's title of each run (default: its folder's name)")
    p.add_argument("--json", type=Path, help="write the spectra to this file")
    args = p.parse_args()
    results = [spectra(run, args.data_dir) for run in args.runs]
    for res in results:
        print(
            f"{res['run']} ({res['layout']}): power above {HIGH} cycles: latent {res['latent']['high_share_mean']:.3f} "
            f"(per channel {res['latent']['high_share_per_channel']}), images {res['image']['high_share_mean']:.3f}"
        )
    if args.figure:
        plot(
            results,
            args.labels or [f"{run.name} ({res['layout']})" for run, res in zip(args.runs, results)],
            args.figure,
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
