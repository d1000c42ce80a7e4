"""Pieces every denoiser backbone shares: the timestep embedding and self-attention within one sample."""

from __future__ import annotations

import math

import torch
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (N,) timesteps to (N, dim) (Vaswani et al. 2017)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]  # (N, half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v over the last two axes (Vaswani et al. 2017), as two matrix multiplies.

    Equal to F.scaled_dot_product_attention; on 16 tokens and fewer, that kernel's CPU backward pass took a fifth of a
    denoiser training step, and this form makes the whole step 1.24-1.35x faster (`experiments/attention_bench.py`,
    results in docs/benchmark.md)."""
    weights = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)  # (..., L, L)
    return weights.softmax(dim=-1) @ v


class SelfAttention(nn.Module):
    """Multi-head self-attention over the L tokens of each sample (never across the batch): (N, L, C) -> (N, L, C),
    without the residual (the caller adds it). The output projection starts at zero."""

    def __init__(self, channels: int, head_dim: int = 64):
        super().__init__()
        self.heads = max(1, channels // head_dim)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, c = x.shape
        q, k, v = self.qkv(x).view(n, length, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = attention(q, k, v)  # (N, heads, L, C/heads)
        return self.proj(out.transpose(1, 2).reshape(n, length, c))
