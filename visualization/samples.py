"""Sample grids and sample files."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from data import CLASS_NAMES
from models.diffusion import SamplingOptions
from models.generate import generate_class_samples


def ensure_generator(generator: torch.Generator | None, device: torch.device) -> torch.Generator:
    """The caller's generator, or a fresh one seeded 0: figures never draw from (or disturb) the global RNG."""
    return generator if generator is not None else torch.Generator(device).manual_seed(0)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Images (N, 3, H, W) in [0, 1] -> uint8 array (N, H, W, 3)."""
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def tile(images: torch.Tensor, nrow: int, pad: int = 2) -> np.ndarray:
    """Tile images (N, 3, H, W) in [0, 1] into one uint8 (rows*(H+pad), nrow*(W+pad), 3) array, white gaps."""
    arr = to_uint8(images)
    n, h, w, _ = arr.shape
    rows = -(-n // nrow)
    canvas = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for i, img in enumerate(arr):
        r, c = divmod(i, nrow)
        canvas[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = img
    return canvas


def save_image_grid(images: torch.Tensor, path: str | Path, nrow: int = 8, scale: int = 2) -> Path:
    """Write images (N, 3, H, W) in [0, 1] as one PNG grid, each pixel enlarged `scale` times."""
    grid = Image.fromarray(tile(images, nrow))
    grid = grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path


def save_sample_sheet(
    per_class: list[torch.Tensor], names: tuple[str, ...], path: str | Path, nrow: int = 8, scale: int = 4
) -> Path:
    """One PNG of samples to judge by eye: a labelled block of images (N, 3, H, W) in [0, 1] per class, one above
    the other, each pixel enlarged `scale` times (nearest neighbour, so nothing is smoothed)."""
    labels = [f"{name} ({len(images)} samples)" for name, images in zip(names, per_class)]
    return labelled_sheet(per_class, labels, path, nrow, scale)


def save_reconstruction_sheet(
    originals: list[torch.Tensor], recons: list[torch.Tensor], names: tuple[str, ...], path: str | Path, pairs: int = 64
) -> Path:
    """Like save_sample_sheet, for `pairs` images of each class beside their reconstructions: 8 pairs a row, each
    original on the left of its reconstruction, enlarged 4x."""
    blocks = [torch.stack([o[:pairs], r[:pairs]], 1).flatten(0, 1) for o, r in zip(originals, recons)]  # o0 r0 o1 ...
    labels = [
        f"{name}: {min(pairs, len(o))} held-out images, each left of its reconstruction"
        for name, o in zip(names, originals)
    ]
    return labelled_sheet(blocks, labels, path, nrow=16, scale=4)


def labelled_sheet(
    blocks_images: list[torch.Tensor], labels: list[str], path: str | Path, nrow: int, scale: int
) -> Path:
    """Blocks of images (N, 3, H, W) in [0, 1], `nrow` a row, one above the other under their labels, enlarged."""
    blocks = [Image.fromarray(tile(images, nrow, pad=1)) for images in blocks_images]
    blocks = [b.resize((b.width * scale, b.height * scale), Image.NEAREST) for b in blocks]
    try:
        font = ImageFont.load_default(size=28)
    except TypeError:  # Pillow < 10.1 has one fixed size
        font = ImageFont.load_default()
    label_h = 40
    sheet = Image.new("RGB", (max(b.width for b in blocks), sum(b.height + label_h for b in blocks)), "white")
    y = 0
    for block, label in zip(blocks, labels):
        ImageDraw.Draw(sheet).text((8, y + 4), label, fill="black", font=font)
        sheet.paste(block, (0, y + label_h))
        y += block.height + label_h
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


def save_samples(images: torch.Tensor, out_dir: str | Path, prefix: str, start: int = 0) -> list[Path]:
    """Write every image as its own PNG (`prefix_0000.png`, ... numbered from `start`, so a set can be written batch
    by batch); a call with start 0 first removes the files of an earlier call with this prefix (and its
    `prefix.npz`), so the folder holds one set's images only."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if start == 0:
        remove_sample_set(out_dir, prefix)
    arr = to_uint8(images)
    paths = []
    for i, img in enumerate(arr, start):
        paths.append(out_dir / f"{prefix}_{i:04d}.png")
        Image.fromarray(img).save(paths[-1])
    return paths


def remove_sample_set(out_dir: str | Path, prefix: str) -> int:
    """Remove the images `save_samples` wrote with `prefix` in `out_dir`, their `prefix.npz` and the grid beside the
    folder (`out_dir.png`); return how many images there were."""
    out_dir = Path(out_dir)
    images = list(out_dir.glob(f"{prefix}_[0-9][0-9][0-9][0-9].png"))
    for old in [*images, out_dir / f"{prefix}.npz", out_dir.with_suffix(".png")]:
        old.unlink(missing_ok=True)
    return len(images)


def save_arrays(images: torch.Tensor, out_dir: str | Path, prefix: str) -> Path:
    """Write a whole set of images (N, 3, H, W) in [0, 1] as uint8 arrays (N, H, W, 3) in `prefix.npz`."""
    path = Path(out_dir) / f"{prefix}.npz"
    np.savez_compressed(path, images=to_uint8(images))
    return path


def generate_samples_grid(
    autoencoder,
    diffusion,
    path: str | Path,
    num_per_class: int = 10,
    generator: torch.Generator | None = None,
    title: str = "Generated samples",
    options: SamplingOptions | None = None,
) -> Path:
    """Draw `num_per_class` samples of every class and save one labelled row per class."""
    generator = ensure_generator(generator, diffusion.device)
    fig, axes = plt.subplots(
        len(CLASS_NAMES), 1, figsize=(max(4.0, 0.75 * num_per_class), 1.1 * len(CLASS_NAMES) + 0.6), squeeze=False
    )
    for label, (ax, name) in enumerate(zip(axes[:, 0], CLASS_NAMES)):
        images = generate_class_samples(
            autoencoder, diffusion, label, num_per_class, options=options, generator=generator
        )
        ax.imshow(tile(images, num_per_class), interpolation="nearest")
        ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=12)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
