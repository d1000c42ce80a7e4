"""One real reverse trajectory per class: decoded at several steps, drawn in a PCA plane, and as a GIF."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import imageio.v3 as iio
import matplotlib.pyplot as plt
import numpy as np
import torch
from PIL import Image, ImageDraw
from sklearn.decomposition import PCA

from data import CLASS_NAMES, Split, class_index, to_unit_range
from models.batched import eval_mode
from models.diffusion import SamplingOptions
from visualization.latents import CLASS_COLORS, encode_means, save_figure
from visualization.samples import ensure_generator, tile


@dataclass
class Trajectory:
    """The latents of one reverse run: `latents[i]` (N, D) after sampler step i, at timestep `timesteps[i]`."""

    latents: torch.Tensor  # (S + 1, N, D); index 0 is the starting noise z_T
    timesteps: list[int]  # (S + 1,); the start is labelled n_steps


@torch.no_grad()
def record_trajectory(
    diffusion,
    label: int,
    num_samples: int = 1,
    generator: torch.Generator | None = None,
    options: SamplingOptions | None = None,
) -> Trajectory:
    """Run the reverse process once for `num_samples` latents of `label`, keeping every intermediate latent."""
    generator = ensure_generator(generator, diffusion.device)
    latents, timesteps = [], []

    def keep(i: int, t: int, z: torch.Tensor) -> None:
        latents.append(z.cpu())
        timesteps.append(t)

    y = torch.full((num_samples,), label, dtype=torch.long, device=diffusion.device)
    with eval_mode(diffusion.model):
        start = torch.randn((num_samples, diffusion.model.latent_dim), device=diffusion.device, generator=generator)
        diffusion.sample(y, options, z_T=start, generator=generator, callback=keep)
    return Trajectory(torch.stack([start.cpu()] + latents), [diffusion.n_steps] + timesteps)


@torch.no_grad()
def decode_latents(autoencoder, diffusion, z: torch.Tensor) -> torch.Tensor:
    """Latents of the diffusion process (N, D) -> images (N, 3, 32, 32) in [0, 1], on the CPU."""
    device = next(autoencoder.parameters()).device
    with eval_mode(autoencoder):
        return to_unit_range(autoencoder.decode(diffusion.to_vae_latents(autoencoder, z.to(device)))).cpu()


def visualize_denoising_steps(
    autoencoder,
    diffusion,
    data: Split,
    path: str | Path,
    num_shown: int = 8,
    generator: torch.Generator | None = None,
    max_points: int = 1000,
    options: SamplingOptions | None = None,
) -> dict:
    """Per class: images decoded at `num_shown` steps of ONE reverse trajectory, and that trajectory's path in a
    PCA plane fitted on real (normalised) latents of both classes. Returns what it drew, for checking."""
    generator = ensure_generator(generator, diffusion.device)
    idx = torch.linspace(0, len(data) - 1, min(max_points, len(data))).long()
    real = diffusion.from_vae_latents(
        autoencoder, encode_means(autoencoder, data.subset(idx)).to(next(autoencoder.parameters()).device)
    ).cpu()
    pca = PCA(n_components=2).fit(real.numpy())
    real_2d, real_y = pca.transform(real.numpy()), data.y[idx].numpy()
    fig, axes = plt.subplots(
        len(CLASS_NAMES) * 2,
        1,
        figsize=(1.2 * num_shown + 0.6, 9.5),
        gridspec_kw={"height_ratios": [1, 2.6] * len(CLASS_NAMES)},
    )
    drawn = {}
    for label, name in enumerate(CLASS_NAMES):
        traj = record_trajectory(diffusion, label, 1, generator, options)
        shown = np.unique(np.linspace(0, len(traj.timesteps) - 1, num_shown).round().astype(int))
        images = decode_latents(autoencoder, diffusion, traj.latents[shown, 0])
        path_2d = pca.transform(traj.latents[:, 0].numpy())
        _draw_strip(axes[2 * label], images, [traj.timesteps[i] for i in shown], name)
        _draw_path(axes[2 * label + 1], real_2d, real_y, path_2d, label, name)
        drawn[name] = {
            "latents": traj.latents[:, 0],
            "shown_steps": shown,
            "images": images,
            "path_2d": path_2d,
            "pca": pca,
        }
    fig.suptitle("Denoising: one reverse trajectory per class", fontsize=11)
    fig.tight_layout()
    drawn["path"] = save_figure(fig, path)
    return drawn


def _draw_strip(ax, images: torch.Tensor, timesteps: list[int], name: str) -> None:
    ax.imshow(tile(images, len(images)), interpolation="nearest")
    step = ax.get_xlim()[1] / len(images)
    ax.set_xticks([step * (i + 0.5) for i in range(len(images))], [f"t={t}" for t in timesteps], fontsize=8)
    ax.set_yticks([])
    ax.set_title(f"{name}: decoded latent along the trajectory (noise -> sample)", fontsize=9)


def _draw_path(ax, real_2d, real_y, path_2d, label: int, name: str) -> None:
    for c, cname in enumerate(CLASS_NAMES):
        sel = real_y == c
        ax.scatter(real_2d[sel, 0], real_2d[sel, 1], s=5, alpha=0.25, c=CLASS_COLORS[c], label=f"real {cname}")
    ax.plot(path_2d[:, 0], path_2d[:, 1], "-", c="black", lw=1, alpha=0.8, label=f"{name} trajectory")
    ax.scatter(*path_2d[0], marker="x", s=60, c="red", label="start (noise)", zorder=3)
    ax.scatter(
        *path_2d[-1], marker="*", s=160, c=CLASS_COLORS[label], edgecolors="black", label="end (sample)", zorder=3
    )
    ax.set_xlabel("PC 1 of real latents")
    ax.set_ylabel("PC 2")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)


def _label_frame(frame: np.ndarray, text: str, scale: int) -> np.ndarray:
    img = Image.fromarray(frame)
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    canvas = Image.new("RGB", (img.width, img.height + 16), "white")
    canvas.paste(img, (0, 16))
    ImageDraw.Draw(canvas).text((3, 2), text, fill="black")
    return np.asarray(canvas)


def create_diffusion_animation(
    autoencoder,
    diffusion,
    target_class: int | str,
    path: str | Path,
    num_frames: int = 30,
    fps: float = 10.0,
    num_samples: int = 4,
    generator: torch.Generator | None = None,
    scale: int = 3,
    hold_last_ms: float = 1500.0,
    options: SamplingOptions | None = None,
) -> Path:
    """GIF of real reverse trajectories (`num_samples` side by side) decoding from noise to image: `num_frames`
    frames at `fps`, the final one held `hold_last_ms` longer, looping; built in memory (no temporary files).
    The sampler runs at least num_frames - 1 steps, so every frame is a distinct step of the trajectory."""
    label = class_index(target_class)
    generator = ensure_generator(generator, diffusion.device)
    options = options or SamplingOptions()
    options = options.replace(steps=max(options.step_count, num_frames - 1))
    traj = record_trajectory(diffusion, label, num_samples, generator, options)
    chosen = np.unique(np.linspace(0, len(traj.timesteps) - 1, num_frames).round().astype(int))
    frames = [
        _label_frame(
            tile(decode_latents(autoencoder, diffusion, traj.latents[i]), num_samples),
            f"{CLASS_NAMES[label]}  t={traj.timesteps[i]}",
            scale,
        )
        for i in chosen
    ]
    durations = [1000.0 / fps] * (len(frames) - 1) + [1000.0 / fps + hold_last_ms]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, np.stack(frames), extension=".gif", duration=durations, loop=0)
    return path
