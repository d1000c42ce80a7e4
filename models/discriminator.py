"""The decoder stage's patch discriminator: a small convolutional PatchGAN (Isola et al. 2017) that scores
overlapping patches of a 32x32 image as real or reconstructed, as in the latent-diffusion autoencoders (Esser et al.
2021, Rombach et al. 2022). It needs no pretrained weights, so the adversarial loss works offline.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PatchDiscriminator(nn.Module):
    """Images (N, 3, 32, 32) in [-1, 1] -> logits (N, 1, 6, 6), one per overlapping patch of about 22x22 pixels.

    4x4 convolutions: two of stride 2 (32 -> 16 -> 8), then two of stride 1 (8 -> 7 -> 6), LeakyReLU(0.2), GroupNorm
    (per-sample statistics: no coupling between the real and the reconstructed batch)."""

    def __init__(self, in_channels: int = 3, width: int = 32):
        super().__init__()
        w = width
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, w, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(w, 2 * w, 4, stride=2, padding=1),
            nn.GroupNorm(8, 2 * w),
            nn.LeakyReLU(0.2),
            nn.Conv2d(2 * w, 4 * w, 4, stride=1, padding=1),
            nn.GroupNorm(8, 4 * w),
            nn.LeakyReLU(0.2),
            nn.Conv2d(4 * w, 1, 4, stride=1, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The activations after each of the three LeakyReLUs, then the logits: one forward pass."""
        out = []
        for layer in self.net:
            x = layer(x)
            if isinstance(layer, nn.LeakyReLU):
                out.append(x)
        return [*out, x]


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """The discriminator's hinge loss (Lim & Ye 2017): mean(relu(1 - D(x))) + mean(relu(1 + D(x_hat)))."""
    return F.relu(1 - logits_real.float()).mean() + F.relu(1 + logits_fake.float()).mean()


def generator_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """The generator's side of the hinge game: -mean(D(x_hat))."""
    return -logits_fake.float().mean()


def feature_matching_loss(features_fake: list[torch.Tensor], features_real: list[torch.Tensor]) -> torch.Tensor:
    """The sum over the discriminator's hidden layers of the mean absolute difference between the features of a
    reconstruction and of its own original (Wang et al. 2018's feature matching, for paired images)."""
    return sum((f.float() - r.float()).abs().mean() for f, r in zip(features_fake, features_real, strict=True))
