"""VGG16 perceptual loss (Johnson et al. 2016) with LPIPS-style unit-normalised features."""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

VGG_LAYERS = (3, 8, 15)  # relu1_2, relu2_2, relu3_3 in torchvision's vgg16().features


class VGGPerceptualLoss(nn.Module):
    """Mean squared distance of channel-normalised VGG16 features at relu1_2, relu2_2 and relu3_3."""

    def __init__(self, features: nn.Sequential):
        super().__init__()
        self.features = features[: VGG_LAYERS[-1] + 1].eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406])[None, :, None, None])
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225])[None, :, None, None])

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = ((x + 1) / 2 - self.mean) / self.std  # model range [-1, 1] -> ImageNet statistics
        out = []
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in VGG_LAYERS:
                out.append(F.normalize(h, dim=1))
        return out

    def forward(self, x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = self._features(x)
        return sum(F.mse_loss(a, b) * a.shape[1] for a, b in zip(self._features(x_hat), target)) / len(VGG_LAYERS)

    def train(self, mode: bool = True) -> "VGGPerceptualLoss":
        return super().train(False)  # always a fixed feature extractor


def load_perceptual_loss(device: torch.device) -> VGGPerceptualLoss | None:
    """VGG16 with torchvision's ImageNet weights (downloaded to the torch hub cache), or None with a warning."""
    try:
        import torchvision

        vgg = torchvision.models.vgg16(weights=torchvision.models.VGG16_Weights.IMAGENET1K_V1)
    except Exception as err:  # noqa: BLE001 - offline, no cache, corrupt file: all mean "no perceptual term"
        log.warning(
            "VGG16 weights unavailable (%s: %s); training the VAE without the perceptual loss. "
            "Put vgg16-397923af.pth in the torch hub cache (~/.cache/torch/hub/checkpoints) to use it.",
            type(err).__name__,
            str(err).splitlines()[0][:120],
        )
        return None
    return VGGPerceptualLoss(vgg.features).to(device)
