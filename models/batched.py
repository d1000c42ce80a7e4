"""Running the VAE over a whole split: in batches, without gradients, in eval mode (restored afterwards); and the PSNR
by which its reconstructions are measured (training, evaluation and figures all use this one)."""

from __future__ import annotations

import torch
from torch import nn

from data import to_model_range, to_unit_range


class eval_mode:
    """Context manager: put modules in eval mode and restore each one's previous mode on exit."""

    def __init__(self, *modules: nn.Module):
        self.modules = modules

    def __enter__(self):
        self.modes = [[m.training for m in module.modules()] for module in self.modules]
        for module in self.modules:
            module.eval()

    def __exit__(self, *exc):
        for module, modes in zip(self.modules, self.modes):
            for m, mode in zip(module.modules(), modes):
                m.train(mode)


@torch.no_grad()
def encode_images(
    autoencoder, x: torch.Tensor, batch_size: int = 500, flip: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (N, 3, 32, 32) -> (mu, logvar), each (N, D), on the autoencoder's device; `flip` mirrors them."""
    device = next(autoencoder.parameters()).device
    mus, logvars = [], []
    with eval_mode(autoencoder):
        for start in range(0, len(x), batch_size):
            batch = to_model_range(x[start : start + batch_size].to(device))
            mu, logvar = autoencoder.encode(batch.flip(3) if flip else batch)
            mus.append(mu)
            logvars.append(logvar)
    return torch.cat(mus), torch.cat(logvars)


@torch.no_grad()
def reconstruct_images(autoencoder, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """uint8 images (N, 3, 32, 32) -> their reconstructions from mu, floats in [0, 1] on the CPU."""
    mu, _ = encode_images(autoencoder, x, batch_size)
    with eval_mode(autoencoder):
        return torch.cat(
            [to_unit_range(autoencoder.decode(mu[i : i + batch_size])).cpu() for i in range(0, len(mu), batch_size)]
        )


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean per-image PSNR in dB of images in [0, 1]."""
    mse = (a - b).pow(2).mean(dim=(1, 2, 3)).clamp(min=1e-10)
    return (-10 * torch.log10(mse)).mean().item()
