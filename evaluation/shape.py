"""The shape judge's view of an image: what is left of it when colour and texture are taken away.

A classifier's features see texture first (Geirhos et al. 2019): real fur on a shape that is no animal scores close
to a photograph. The shape judge is the same ten-way classifier, but it only ever sees luminance (`shape_view`), and
in training every image's texture is randomised (`randomise_texture`: a random blur, random noise, random contrast
and brightness; a cheap cousin of Geirhos et al.'s style transfer). What stays constant under that randomisation, and
so what its features can rely on, is the layout: the silhouette, the pose and the dark and light parts of a face.
"""

from __future__ import annotations

import torch

from evaluation.metrics import gaussian_blur

LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 weights of R, G, B
BLUR_SIGMAS = (0.0, 0.5, 0.8, 1.1, 1.4)  # the blurs a training image may get, in pixels (each equally likely)
MAX_NOISE = 0.1  # the largest std of the added Gaussian noise, in [0, 1] units
CONTRAST = (0.6, 1.4)  # the range of the random contrast factor around the image's mean
BRIGHTNESS = 0.15  # the largest random brightness shift


def shape_view(images: torch.Tensor) -> torch.Tensor:
    """Images (N, 3, H, W) in [0, 1] as their luminance, repeated on three channels: colour is gone."""
    weights = torch.tensor(LUMA, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images * weights).sum(1, keepdim=True).expand_as(images).contiguous()


def randomise_texture(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Images (N, 3, H, W) in [-1, 1] with their texture randomised per image: a blur drawn from BLUR_SIGMAS, Gaussian
    noise of std up to MAX_NOISE, contrast and brightness jitter; returned in [-1, 1]."""
    n, device = x.shape[0], x.device
    unit = (x + 1) / 2
    which = torch.randint(0, len(BLUR_SIGMAS), (n,), device=device, generator=generator)
    blurred = unit.clone()
    for i, sigma in enumerate(BLUR_SIGMAS):
        chosen = which == i
        if sigma > 0 and chosen.any():
            blurred[chosen] = gaussian_blur(unit[chosen], sigma)
    noise_std = MAX_NOISE * torch.rand(n, 1, 1, 1, device=device, generator=generator)
    noise = torch.randn((n, 1, *x.shape[2:]), device=device, generator=generator)  # one plane: grey stays grey
    noisy = blurred + noise_std * noise
    lo, hi = CONTRAST
    contrast = lo + (hi - lo) * torch.rand(n, 1, 1, 1, device=device, generator=generator)
    shift = BRIGHTNESS * (2 * torch.rand(n, 1, 1, 1, device=device, generator=generator) - 1)
    mean = noisy.mean((1, 2, 3), keepdim=True)
    out = (mean + contrast * (noisy - mean) + shift).clamp(0, 1)
    return out * 2 - 1
