"""Convolutional building blocks of the VAE: residual blocks with CBAM attention.

CBAM: Woo et al., "CBAM: Convolutional Block Attention Module" (2018) = channel attention
(squeeze-excitation, Hu et al. 2018) followed by spatial attention.
"""

from __future__ import annotations

import torch
from torch import nn


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 8 groups: per-sample statistics, so no batch coupling."""
    return nn.GroupNorm(min(8, channels), channels)


class ChannelAttention(nn.Module):
    """Squeeze-excitation: reweight channels from their global average and max responses."""

    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        hidden = max(4, channels // reduction)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.SiLU(), nn.Linear(hidden, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.mlp(x.mean(dim=(2, 3))) + self.mlp(x.amax(dim=(2, 3)))  # (N, C)
        return x * torch.sigmoid(pooled)[:, :, None, None]


class SpatialAttention(nn.Module):
    """CBAM spatial attention: a 7x7 conv over channel-mean and channel-max maps gates each position."""

    def __init__(self, kernel_size: int = 7):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)  # (N, 2, H, W)
        return x * torch.sigmoid(self.conv(maps))


class ResidualAttentionBlock(nn.Module):
    """Pre-activation residual block (GN-SiLU-conv x2) followed by CBAM, with an identity skip."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            group_norm(channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            group_norm(channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )
        self.channel_attention = ChannelAttention(channels)
        self.spatial_attention = SpatialAttention()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.spatial_attention(self.channel_attention(self.body(x)))
        return x + h


class Downsample(nn.Module):
    """Halve the resolution: strided conv, plus a skip path (average pool + 1x1 conv) around it."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv = nn.Sequential(group_norm(c_in), nn.SiLU(), nn.Conv2d(c_in, c_out, 3, stride=2, padding=1))
        self.skip = nn.Sequential(nn.AvgPool2d(2), nn.Conv2d(c_in, c_out, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + self.skip(x)


class Upsample(nn.Module):
    """Double the resolution: nearest upsampling and conv, plus a 1x1-conv skip path around it."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.conv = nn.Sequential(group_norm(c_in), nn.SiLU(), nn.Conv2d(c_in, c_out, 3, padding=1))
        self.skip = nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        return self.conv(x) + self.skip(x)
