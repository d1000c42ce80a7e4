"""The figures a run writes at the end of each stage (and every --visualize-every steps), in folders by kind."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from data import CLASS_NAMES, Split
from models.diffusion import SamplingOptions
from models.generate import generate_class_samples
from visualization.curves import plot_loss_curves
from visualization.denoising import create_diffusion_animation, visualize_denoising_steps
from visualization.latents import visualize_latent_space, visualize_reconstructions
from visualization.samples import generate_samples_grid, save_sample_sheet

log = logging.getLogger(__name__)
MIN_MAP_IMAGES_PER_CLASS = 2  # fewer held-out latents per class: the silhouette score is undefined
# The folders of figures drawn from each network (the sample command's images are under samples/ too)
FIGURE_FOLDERS = {
    "autoencoder": ("reconstruction", "latent_space"),
    "denoiser": ("samples", "diffusion_path", "animation", "tensorboard/samples"),
}


def figure_files(out_dir: Path, networks: tuple[str, ...]) -> list[Path]:
    """The figure files of a run folder drawn from any of `networks` ("autoencoder", "denoiser"), and the loss curves:
    what no longer describes the run once one of those networks trains again. A new autoencoder changes what the
    denoiser's samples look like, so it names both."""
    folders = {"curves", *(name for net in networks for name in FIGURE_FOLDERS[net])}
    files = (p for name in folders if (out_dir / name).is_dir() for p in (out_dir / name).rglob("*"))
    return sorted(p for p in files if p.is_file())


def write_vae_figures(autoencoder, held: Split, out_dir: Path, tag: str) -> list[Path]:
    """Reconstructions and the t-SNE latent map of held-out images (the map is skipped, with a warning, where the split
    has too few images for it)."""
    paths = [visualize_reconstructions(autoencoder, held, out_dir / "reconstruction" / f"vae_reconstruction_{tag}.png")]
    per_class = min(int((held.y == label).sum()) for label in range(2))
    if per_class >= MIN_MAP_IMAGES_PER_CLASS:
        paths.append(
            visualize_latent_space(autoencoder, held, out_dir / "latent_space" / f"vae_latent_space_{tag}.png")
        )
    else:
        log.warning(
            "latent-space figure skipped: %d held-out image(s) of a class, too few for t-SNE and the silhouette (%d)",
            per_class,
            MIN_MAP_IMAGES_PER_CLASS,
        )
    log.info("wrote %s", ", ".join(str(p) for p in paths))
    return paths


def write_diffusion_figures(
    autoencoder,
    diffusion,
    held: Split,
    out_dir: Path,
    tag: str,
    options: SamplingOptions,
    seed: int,
    num_samples: int = 64,
    animations: bool = True,
) -> list[Path]:
    """Sample grids, denoising paths and (optionally) one GIF per class, all from one seeded generator."""
    gen = torch.Generator(diffusion.device).manual_seed(seed)
    paths = [
        generate_samples_grid(
            autoencoder,
            diffusion,
            out_dir / "samples" / f"samples_grid_{tag}.png",
            num_per_class=10,
            generator=gen,
            title=f"Generated samples ({tag})",
            options=options,
        )
    ]
    for label, name in enumerate(CLASS_NAMES):
        images = generate_class_samples(autoencoder, diffusion, label, num_samples, options=options, generator=gen)
        path = out_dir / "samples" / f"sample_class_{name}_{tag}.png"
        paths.append(save_sample_sheet([images], (name,), path, scale=2))  # labelled with its class
    paths.append(
        visualize_denoising_steps(
            autoencoder,
            diffusion,
            held,
            out_dir / "diffusion_path" / f"denoising_path_{tag}.png",
            generator=gen,
            options=options,
        )["path"]
    )
    if animations:
        for name in CLASS_NAMES:
            paths.append(
                create_diffusion_animation(
                    autoencoder,
                    diffusion,
                    name,
                    out_dir / "animation" / f"diffusion_animation_{name}_{tag}.gif",
                    generator=gen,
                    options=options,
                )
            )
    log.info("wrote %s", ", ".join(str(p) for p in paths))
    return paths


def write_loss_curves(out_dir: Path) -> Path:
    """Loss curves of both stages from the run's metrics files (phase boundaries from its config.json)."""
    config = out_dir / "config.json"
    run_config = json.loads(config.read_text()) if config.is_file() else {}
    path = plot_loss_curves(
        out_dir / "metrics_vae.jsonl",
        out_dir / "metrics_diffusion.jsonl",
        out_dir / "curves" / "loss_curves.png",
        run_config.get("vae"),
        run_config.get("diffusion", {}).get("prediction", "eps"),
        out_dir / "metrics_decoder.jsonl",
    )
    log.info("wrote %s", path)
    return path
