"""Figures and files made from models and tensors; never imports training code."""

import matplotlib

matplotlib.use("Agg")  # headless: no display needed

from visualization.curves import loss_curve_figure, plot_loss_curves  # noqa: E402
from visualization.denoising import create_diffusion_animation, record_trajectory, visualize_denoising_steps  # noqa: E402
from visualization.latents import visualize_latent_space, visualize_reconstructions  # noqa: E402
from visualization.report import write_diffusion_figures, write_loss_curves, write_vae_figures  # noqa: E402
from visualization.samples import generate_samples_grid, save_image_grid, save_samples  # noqa: E402

__all__ = [
    "generate_samples_grid",
    "save_image_grid",
    "save_samples",
    "visualize_reconstructions",
    "visualize_latent_space",
    "visualize_denoising_steps",
    "create_diffusion_animation",
    "record_trajectory",
    "plot_loss_curves",
    "loss_curve_figure",
    "write_vae_figures",
    "write_diffusion_figures",
    "write_loss_curves",
]
