"""Write a run's model into pretrained/ as the shipped model, its weights in half precision, and check that the copy
draws the same images as the run from the same noise.

    python experiments/ship_release.py RUN [--out pretrained] [--per-class 64]

The two public files keep their names and stay plain state dicts (`torch.load(..., weights_only=True)` reads them and
`load_state_dict` casts them to the model's float32); every parameter is stored in float16 and every buffer (the
latents' statistics) as it is. split.json is copied, and config.json as the run recorded it, but for its sampling
options, which become this version's defaults (what `sample --pretrained` and the notebook use), and for options
this version no longer has, which are left out. The check draws `--per-class` images of each class with the default
sampling from one seed through both and prints the largest and the mean pixel difference in levels of 255; the model
card gives them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from checkpoints import AUTOENCODER_FILE, DIFFUSION_FILE, atomic_save  # noqa: E402
from models import generate_class_samples  # noqa: E402
from models.pipeline import load_pipeline  # noqa: E402
from training.config import SECTIONS, SampleConfig  # noqa: E402


def half_state(model: torch.nn.Module) -> dict:
    """The model's state dict with its floating-point parameters in float16 (buffers and extra state as they are)."""
    params = {name for name, _ in model.named_parameters()}
    return {
        k: v.detach().cpu().half() if k in params and v.is_floating_point() else v
        for k, v in model.state_dict().items()
    }


def shipped_config(record: dict) -> dict:
    """The run's config.json record with this version's sampling defaults and without options it no longer has."""
    out = {}
    for section, (cls, _) in SECTIONS.items():
        known = {f.name for f in dataclasses.fields(cls)}
        out[section] = {k: v for k, v in record.get(section, {}).items() if k in known}
    out["sample"] = dataclasses.asdict(SampleConfig())
    return {**out, "run_facts": record.get("run_facts", {})}


def draw(autoencoder, diffusion, per_class: int) -> torch.Tensor:
    """`per_class` images of each class from seed 0, as levels 0-255."""
    images = [generate_class_samples(autoencoder, diffusion, c, per_class, seed=0) for c in (0, 1)]
    return (torch.cat(images) * 255).round()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path)
    p.add_argument("--out", type=Path, default=Path("pretrained"))
    p.add_argument("--per-class", type=int, default=64)
    args = p.parse_args()
    autoencoder, diffusion = load_pipeline(args.run)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_save(half_state(autoencoder), args.out / AUTOENCODER_FILE)
    atomic_save(half_state(diffusion.model), args.out / DIFFUSION_FILE)
    shutil.copyfile(args.run / "split.json", args.out / "split.json")
    record = json.loads((args.run / "config.json").read_text())
    (args.out / "config.json").write_text(json.dumps(shipped_config(record), indent=2) + "\n")
    shipped = load_pipeline(args.out)
    diff = (draw(autoencoder, diffusion, args.per_class) - draw(*shipped, args.per_class)).abs()
    size = sum((args.out / f).stat().st_size for f in (AUTOENCODER_FILE, DIFFUSION_FILE)) / 2**20
    print(
        f"{args.out}: {size:.1f} MiB of weights; float16 against the run's float32, {2 * args.per_class} images from "
        f"seed 0: largest pixel difference {diff.max():.0f} of 255, mean {diff.mean():.3f}; images differing by more "
        f"than 2 levels anywhere: {(diff.flatten(1).amax(1) > 2).sum().item()}"
    )


if __name__ == "__main__":
    main()
