"""Cheaper ways to draw the same images: each sampling setting against a reference setting, from the same noise.

    python experiments/sampler_speed.py RUN [--per-class 200] [--batch 250] [--threads N] [--json FILE]
        [--reference heun:18:0:1] [--candidates heun:12:0:1 heun:10:0.1:1 ...]

A setting is SAMPLER:STEPS:LO:HI, guidance (the run's scale) applied for LO <= t/T <= HI. For each, the run's pipeline
draws `--per-class` images of each class from one fixed noise (the same z_T for every setting, in batches of
`--batch`), and the script reports its seconds per 1,000 images and, against the reference's images, the mean absolute
pixel difference (0-255) and the share of images whose largest pixel difference is below 16 levels. A setting that
draws the same images at less cost is a candidate for the default; `python main.py evaluate` with its flags then
scores it against the reference on the full n.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data import to_unit_range  # noqa: E402
from models import SamplingOptions  # noqa: E402
from models.pipeline import load_pipeline  # noqa: E402

SAME = 16  # largest pixel difference, in levels of 255, under which two images count as the same


def parse_setting(text: str) -> SamplingOptions:
    """SAMPLER:STEPS:LO:HI -> the sampling options it names."""
    sampler, steps, lo, hi = text.split(":")
    return SamplingOptions(sampler=sampler, steps=int(steps), guidance_interval=(float(lo), float(hi)))


def draw(autoencoder, diffusion, options: SamplingOptions, noise: torch.Tensor, labels: torch.Tensor, batch: int):
    """uint8-range images (N, 3, 32, 32) as float, drawn from `noise` (N, D) for `labels`, and the seconds it took."""
    images, start = [], time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(noise), batch):
            z = diffusion.sample(labels[i : i + batch], options, z_T=noise[i : i + batch])
            images.append(to_unit_range(autoencoder.decode(diffusion.to_vae_latents(autoencoder, z))).float())
    return (torch.cat(images) * 255).round(), time.perf_counter() - start


def compare(images: torch.Tensor, reference: torch.Tensor) -> dict:
    """Mean absolute pixel difference and the share of images within SAME levels everywhere."""
    diff = (images - reference).abs()
    return {
        "mean_abs_diff": round(diff.mean().item(), 3),
        "same_share": round((diff.flatten(1).amax(1) < SAME).float().mean().item(), 3),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path)
    p.add_argument("--per-class", type=int, default=200)
    p.add_argument("--batch", type=int, default=250)
    p.add_argument("--threads", type=int)
    p.add_argument("--reference", default="heun:18:0:1")
    p.add_argument("--candidates", nargs="+", default=["heun:12:0:1", "heun:10:0:1", "heun:18:0.1:1", "heun:12:0.1:1"])
    p.add_argument("--json", type=Path, help="append the results (one JSON line per setting) to this file")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    autoencoder, diffusion = load_pipeline(args.run)
    g = torch.Generator().manual_seed(0)
    n = 2 * args.per_class
    noise = torch.randn((n, diffusion.model.latent_dim), generator=g)
    labels = torch.arange(2).repeat_interleave(args.per_class)
    reference, ref_s = draw(autoencoder, diffusion, parse_setting(args.reference), noise, labels, args.batch)
    rows = [{"setting": args.reference, "s_per_1000": round(1000 * ref_s / n, 1), "mean_abs_diff": 0, "same_share": 1}]
    for text in args.candidates:
        images, seconds = draw(autoencoder, diffusion, parse_setting(text), noise, labels, args.batch)
        rows.append({"setting": text, "s_per_1000": round(1000 * seconds / n, 1), **compare(images, reference)})
    for row in rows:
        print(json.dumps(row), flush=True)
        if args.json:
            with args.json.open("a") as f:
                f.write(json.dumps({"run": str(args.run), **row}) + "\n")


if __name__ == "__main__":
    main()
