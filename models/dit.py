"""Transformer backbone over the latent's grid positions (DiT, Peebles & Xie 2023, with patch size 1): every one of
the 8x8 positions of the 4x8x8 latent is a token; blocks of self-attention and an MLP, conditioned by adaLN-Zero (the
condition sets each block's LayerNorm scale and shift and a gate on its residual branches, the gates starting at 0).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from models.layers import SelfAttention


def grid_position_embedding(side: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embedding (side*side, dim): half the channels for rows, half for columns."""
    quarter = dim // 4
    freqs = torch.exp(-math.log(10000.0) * torch.arange(quarter, dtype=torch.float32) / quarter)
    pos = torch.arange(side, dtype=torch.float32)[:, None] * freqs[None]  # (side, quarter)
    row = torch.cat([pos.sin(), pos.cos()], 1)[:, None, :].expand(side, side, 2 * quarter)
    col = torch.cat([pos.sin(), pos.cos()], 1)[None, :, :].expand(side, side, 2 * quarter)
    return torch.cat([row, col], -1).reshape(side * side, 4 * quarter)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
    """LayerNorm-attention and LayerNorm-MLP residual branches, each modulated and gated by the condition."""

    def __init__(self, width: int, cond_dim: int, mlp_ratio: int = 4):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(width)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(
            nn.Linear(width, mlp_ratio * width), nn.GELU(approximate="tanh"), nn.Linear(mlp_ratio * width, width)
        )
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 6 * width))
        nn.init.zeros_(self.ada[1].weight)  # adaLN-Zero: every block starts as the identity
        nn.init.zeros_(self.ada[1].bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """x: (N, L, D) tokens, cond: (N, E)."""
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(cond).chunk(6, dim=1)
        x = x + gate1[:, None] * self.attn(modulate(self.norm1(x), shift1, scale1))
        return x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))


class DiT(nn.Module):
    """Tokens from the latent's positions, `depth` DiT blocks of `width`, and a modulated linear read-out:
    (N, C, S, S) and condition (N, E) -> (N, C, S, S)."""

    def __init__(self, *, width: int, depth: int, cond_dim: int, latent_channels: int, side: int):
        super().__init__()
        self.embed = nn.Linear(latent_channels, width)
        self.register_buffer("position", grid_position_embedding(side, width), persistent=False)
        self.blocks = nn.ModuleList(DiTBlock(width, cond_dim) for _ in range(depth))
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 2 * width))
        self.out = nn.Linear(width, latent_channels)
        for layer in (self.ada[1], self.out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        tokens = self.embed(x.flatten(2).transpose(1, 2)) + self.position  # (N, HW, D)
        for block in self.blocks:
            tokens = block(tokens, cond)
        shift, scale = self.ada(cond).chunk(2, dim=1)
        out = self.out(modulate(self.norm(tokens), shift, scale))  # (N, HW, C)
        return out.transpose(1, 2).reshape(n, c, h, w)
