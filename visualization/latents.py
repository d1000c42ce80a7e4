"""Reconstructions and the latent space: what the VAE keeps and how it separates the classes."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.manifold import TSNE
from sklearn.metrics import silhouette_score
from sklearn.model_selection import cross_val_score

from data import CLASS_NAMES, Split, to_model_range, to_unit_range
from models.batched import encode_images, psnr, reconstruct_images

CLASS_COLORS = ("tab:orange", "tab:blue")


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """Save and close a figure (no figure survives a call: no leak over a long run)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path


def encode_means(autoencoder, data: Split) -> torch.Tensor:
    """Latent means mu (N, D) of `data`, on the CPU."""
    return encode_images(autoencoder, data.x)[0].cpu()


@torch.no_grad()
def visualize_reconstructions(
    autoencoder, data: Split, path: str | Path, num_images: int = 10, title: str = "VAE reconstructions"
) -> Path:
    """Held-out originals (top row) above their reconstructions from mu (bottom row), labelled by class."""
    num_images = min(num_images, len(data))
    idx = torch.linspace(0, len(data) - 1, num_images).long()  # both classes, spread over the split
    originals, recons = to_unit_range(to_model_range(data.x[idx])), reconstruct_images(autoencoder, data.x[idx])
    fig, axes = plt.subplots(2, num_images, figsize=(1.1 * num_images, 2.7), squeeze=False)
    for j in range(num_images):
        for row, images in enumerate((originals, recons)):
            axes[row, j].imshow(images[j].permute(1, 2, 0).numpy(), interpolation="nearest")
            axes[row, j].set_xticks([])
            axes[row, j].set_yticks([])
        axes[0, j].set_title(CLASS_NAMES[data.y[idx[j]]], fontsize=9)
    axes[0, 0].set_ylabel("original", fontsize=9)
    axes[1, 0].set_ylabel("reconstruction", fontsize=9)
    fig.suptitle(f"{title} (PSNR {psnr(originals, recons):.1f} dB on these images)", fontsize=10)
    return save_figure(fig, path)


def separability(mu: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(5-fold accuracy of a linear probe, silhouette score) of latents `mu` (N, D) with labels `y`."""
    folds = int(min(5, np.bincount(y).min()))
    probe = LogisticRegression(max_iter=2000)
    accuracy = float(cross_val_score(probe, mu, y, cv=folds).mean()) if folds >= 2 else float("nan")
    return accuracy, float(silhouette_score(mu, y))


def visualize_latent_space(
    autoencoder,
    data: Split,
    path: str | Path,
    max_points: int = 1000,
    max_iter: int = 1000,
    random_state: int = 0,
    title: str = "Latent space (t-SNE of held-out latent means)",
) -> Path:
    """t-SNE of held-out latent means coloured by class; the title gives a linear probe's accuracy and silhouette."""
    idx = torch.linspace(0, len(data) - 1, min(max_points, len(data))).long()
    subset = data.subset(idx)
    mu, y = encode_means(autoencoder, subset).numpy(), subset.y.numpy()
    accuracy, silhouette = separability(mu, y)
    perplexity = float(min(30.0, (len(mu) - 1) / 3))
    points = TSNE(
        n_components=2, perplexity=perplexity, max_iter=max(max_iter, 250), init="pca", random_state=random_state
    ).fit_transform(mu)
    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    for label, name in enumerate(CLASS_NAMES):
        sel = y == label
        ax.scatter(points[sel, 0], points[sel, 1], s=9, alpha=0.7, c=CLASS_COLORS[label], label=f"{name} ({sel.sum()})")
    ax.legend(loc="best", markerscale=2)
    ax.set_xlabel("t-SNE 1")
    ax.set_ylabel("t-SNE 2")
    ax.set_title(f"{title}\nlinear probe accuracy {accuracy:.1%} (5-fold), silhouette {silhouette:.3f}", fontsize=10)
    return save_figure(fig, path)
