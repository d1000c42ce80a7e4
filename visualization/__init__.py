"""Figures and files made from models and tensors; never imports training code."""
import matplotlib

matplotlib.use("Agg")  # headless: no display needed

from visualization.samples import generate_samples_grid, save_image_grid, save_samples  # noqa: E402

__all__ = ["generate_samples_grid", "save_image_grid", "save_samples"]
