"""Convolutional U-Net backbone over the latent's full grid (4 channels on 8x8): the DDPM / ADM CIFAR-10 U-Net shape
(Ho et al. 2020; Dhariwal & Nichol 2021), sized for the latent.

Dense 3x3 convolutions at every level (8x8, 4x4, 2x2 for a 4x8x8 latent), residual blocks whose GroupNorm takes a
scale and shift from the time-and-class condition (adaptive GroupNorm, ADM), self-attention within each sample on the
grids of at most `attention_max_positions` positions, and concatenated skips from every block of the down half into
the up half (which has one block more per level, as in ADM).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from models.layers import SelfAttention


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, channels), channels)


class ConvResBlock(nn.Module):
    """GN-SiLU-conv, adaptive GN from the condition, SiLU, conv (zero-initialised: the block starts as its skip)."""

    def __init__(self, c_in: int, c_out: int, cond_dim: int):
        super().__init__()
        self.norm_in = _norm(c_in)
        self.conv_in = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.cond = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 2 * c_out))
        self.norm = _norm(c_out)
        self.conv_out = nn.Conv2d(c_out, c_out, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)
        self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """x: (N, C_in, H, W), cond: (N, E) -> (N, C_out, H, W)."""
        h = self.conv_in(F.silu(self.norm_in(x)))
        scale, shift = self.cond(cond)[:, :, None, None].chunk(2, dim=1)
        h = self.norm(h) * (1 + scale) + shift
        return self.skip(x) + self.conv_out(F.silu(h))


class GridAttention(nn.Module):
    """Self-attention over the H*W positions of each sample, with a residual connection."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = _norm(channels)
        self.attn = SelfAttention(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (N, HW, C)
        return x + self.attn(tokens).transpose(1, 2).reshape(n, c, h, w)


class Block(nn.Module):
    """A residual block, followed by attention where the grid is small enough."""

    def __init__(self, c_in: int, c_out: int, cond_dim: int, attend: bool):
        super().__init__()
        self.res = ConvResBlock(c_in, c_out, cond_dim)
        self.attn = GridAttention(c_out) if attend else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.attn(self.res(x, cond))


class ConvUNet(nn.Module):
    """The U over the latent grid: (N, C, S, S) and condition (N, E) -> (N, C, S, S).

    `channels` are the widths of the levels from the full grid down, each level at half the previous one's grid
    (stride-2 convolution down, nearest upsampling and a convolution up); the middle, two residual blocks around
    attention, works at half the coarsest level's grid with `middle_channels`."""

    def __init__(
        self,
        *,
        channels: list[int],
        middle_channels: int,
        cond_dim: int,
        latent_channels: int,
        side: int,
        blocks_per_level: int = 2,
        attention_max_positions: int = 16,
    ):
        super().__init__()
        if side % 2 ** len(channels):
            raise ValueError(f"a {side}x{side} latent grid cannot be halved {len(channels)} times")
        widths = [*channels, middle_channels]
        attend = [(side // 2**i) ** 2 <= attention_max_positions for i in range(len(widths))]
        self.conv_in = nn.Conv2d(latent_channels, channels[0], 3, padding=1)
        self.down, skip_widths, width = nn.ModuleList(), [channels[0]], channels[0]
        for i, c in enumerate(channels):
            for _ in range(blocks_per_level):
                self.down.append(Block(width, c, cond_dim, attend[i]))
                width = c
                skip_widths.append(width)
            self.down.append(nn.Conv2d(width, widths[i + 1] if i + 1 == len(channels) else width, 3, 2, padding=1))
            skip_widths.append(width)
        skip_widths.pop()  # the middle's input is not a skip
        width = middle_channels
        self.middle = nn.ModuleList([Block(width, width, cond_dim, True), Block(width, width, cond_dim, False)])
        self.up = nn.ModuleList()
        for i in reversed(range(len(channels))):
            upsample = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(width, width, 3, padding=1))
            self.up.append(upsample)
            for _ in range(blocks_per_level + 1):
                self.up.append(Block(width + skip_widths.pop(), channels[i], cond_dim, attend[i]))
                width = channels[i]
        self.out_norm = _norm(width)
        self.out = nn.Conv2d(width, latent_channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """x: (N, C, S, S) latent grid, cond: (N, E) -> (N, C, S, S)."""
        h = self.conv_in(x)
        skips = [h]
        for layer in self.down:
            h = layer(h, cond) if isinstance(layer, Block) else layer(h)
            skips.append(h)
        skips.pop()  # the middle's input
        for layer in self.middle:
            h = layer(h, cond)
        for layer in self.up:
            h = layer(torch.cat([h, skips.pop()], dim=1), cond) if isinstance(layer, Block) else layer(h)
        return self.out(F.silu(self.out_norm(h)))
