"""Loss curves of both stages from their metrics JSONL files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib.pyplot as plt

from visualization.latents import save_figure

VAE_TERMS = ("total", "pixel", "perceptual", "kl", "cls", "center", "scale_eq")
DECODER_TERMS = ("pixel", "adversarial", "discriminator")  # the decoder stage's, drawn after the VAE's steps


def read_jsonl(path: str | Path) -> list[dict]:
    """Records of a metrics file; [] if it does not exist."""
    path = Path(path)
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def phase_starts(vae_config: dict) -> list[tuple[int, str]]:
    """(step, name) where each VAE phase after the first begins, from the run's VAE config (fractions of steps)."""
    names = ("kl", "classifier", "finetune")
    keys = ("kl_start", "cls_start", "finetune_start")
    return [(math.ceil(vae_config[k] * vae_config["steps"]), name) for k, name in zip(keys, names)]


def _plot(ax, points: list[tuple[float, float]], **kw) -> None:
    """A series as a line, with a marker on each point where it has too few for a line to show (a stage logged once:
    a line through one point draws nothing, while its legend entry stays)."""
    ax.plot(*zip(*points), **kw, **({"marker": "o", "ms": 3} if len(points) < 3 else {}))


def plot_loss_curves(
    vae_metrics: str | Path,
    diffusion_metrics: str | Path,
    path: str | Path,
    vae_config: dict | None = None,
    prediction: str = "eps",
    decoder_metrics: str | Path | None = None,
) -> Path:
    """The loss-curve figure (`loss_curve_figure`) written to `path`."""
    return save_figure(loss_curve_figure(vae_metrics, diffusion_metrics, vae_config, prediction, decoder_metrics), path)


def loss_curve_figure(
    vae_metrics: str | Path,
    diffusion_metrics: str | Path,
    vae_config: dict | None = None,
    prediction: str = "eps",
    decoder_metrics: str | Path | None = None,
) -> plt.Figure:
    """Two panels (log scale): every VAE loss term, with its phase boundaries marked when `vae_config` (the run's
    config.json "vae" section) is given, and after them the decoder stage's terms (`decoder_metrics`, dotted); the
    diffusion loss (MSE of `prediction`, eps or v) overall and per timestep quartile. A panel without metrics says
    so."""
    vae = [r for r in read_jsonl(vae_metrics) if "total" in r]
    decoder = [r for r in read_jsonl(decoder_metrics) if "total" in r] if decoder_metrics else []
    diff = [r for r in read_jsonl(diffusion_metrics) if "total" in r]
    fig, (ax_v, ax_d) = plt.subplots(1, 2, figsize=(12, 4.2))
    for term in VAE_TERMS:
        points = [(r["step"], r[term]) for r in vae if r.get(term, 0) > 0]
        if points:
            _plot(ax_v, points, label=term, lw=1.5 if term == "total" else 1)
    offset = vae[-1]["step"] if vae else 0
    for term in DECODER_TERMS:
        points = [(offset + r["step"], abs(r[term])) for r in decoder if r.get(term)]
        if points:
            label = f"decoder stage: {term}" + (" (abs)" if term == "adversarial" else "")  # -mean D: either sign
            _plot(ax_v, points, ls=":", lw=1, label=label)
    phases = phase_starts(vae_config) if vae_config else []
    for step, phase in phases + ([(offset, "decoder stage")] if decoder else []):
        ax_v.axvline(step, color="grey", ls="--", lw=0.8)
        # inside the axes, right of the line, hanging from just below the top: nothing is cut off by the frame
        ax_v.text(step, 0.97, phase, transform=ax_v.get_xaxis_transform(), fontsize=8, va="top", ha="left", rotation=90)
    ax_v.set(yscale="log", xlabel="step", ylabel="loss (unweighted)", title="VAE losses (dashed: phase starts)")
    if diff:
        steps = [r["step"] for r in diff]
        _plot(ax_d, list(zip(steps, [r["total"] for r in diff])), c="black", lw=1.5, label="all timesteps")
        for q in range(4):
            quartile = [r["loss_quartiles"][q] for r in diff]
            _plot(ax_d, list(zip(steps, quartile)), lw=0.9, label=f"t in quartile {q + 1}")
    ax_d.set(yscale="log", xlabel="step", ylabel=f"{prediction}-MSE", title="Diffusion loss (quartile 1 = least noise)")
    for ax, records, stage in ((ax_v, vae, "VAE"), (ax_d, diff, "diffusion")):
        if not records:
            message = f"no {stage} training metrics in this folder\n(stage skipped, or trained in another folder)"
            ax.text(0.5, 0.5, message, transform=ax.transAxes, ha="center", va="center", color="grey")
        if ax.get_legend_handles_labels()[1]:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return fig
