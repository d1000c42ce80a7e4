"""Token U-Net backbone: the 4x8x8 latent cut into 2x2 patches (16 tokens of one sample), a U of residual blocks
over them with 2x2 token merges and splits, concatenated skips and self-attention within each sample.

Each down level merges 2x2 neighbouring tokens and widens them (hidden_dims[0] -> hidden_dims[1] -> ...), each up
level splits them back and concatenates the skip from the same level of the down half. Time and class enter every
block through an adaptive GroupNorm scale and shift (as in Dhariwal & Nichol 2021).

Tokens are kept channel-last, (N, H, W, C), so that every per-token map, merge and split is one matrix multiply (the
same arithmetic as 1x1 / 2x2-stride-2 convolutions, much faster on a CPU).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from models.layers import attention


def group_norm(norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    """Apply a GroupNorm module to channel-last tokens (N, H, W, C)."""
    return F.group_norm(x.movedim(-1, 1), norm.num_groups, norm.weight, norm.bias, norm.eps).movedim(1, -1)


def depthwise_conv3x3(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Depthwise 3x3 convolution with zero padding of channel-last tokens (N, H, W, C); weight (C, 3, 3).

    Nine shifted multiply-adds, equal to a grouped F.conv2d; on grids of 4x4 tokens and smaller the grouped
    convolution's backward pass was among the slowest kernels of a CPU training step (11 ms on a 1x1 grid)."""
    h, w = x.shape[1:3]
    padded = F.pad(x, (0, 0, 1, 1, 1, 1))  # (N, H+2, W+2, C)
    out = None
    for i in range(3):
        for j in range(3):
            if (h == 1 and i != 1) or (w == 1 and j != 1):
                continue  # taps that only ever see padding
            term = padded[:, i : i + h, j : j + w] * weight[:, i, j]
            out = term if out is None else out + term
    return out


def space_to_depth(x: torch.Tensor, k: int) -> torch.Tensor:
    """(N, H, W, C) -> (N, H/k, W/k, k*k*C): each k x k patch of tokens becomes one token, row-major within it."""
    n, h, w, c = x.shape
    return x.view(n, h // k, k, w // k, k, c).transpose(2, 3).reshape(n, h // k, w // k, k * k * c)


def depth_to_space(x: torch.Tensor, k: int) -> torch.Tensor:
    """The inverse of space_to_depth: (N, H, W, k*k*C) -> (N, kH, kW, C)."""
    n, h, w, kkc = x.shape
    return x.view(n, h, w, k, k, kkc // (k * k)).transpose(2, 3).reshape(n, h * k, w * k, kkc // (k * k))


class ResBlock(nn.Module):
    """Token residual block: GN-SiLU-linear, adaptive GN from the condition, SiLU, 3x3 depthwise, linear."""

    def __init__(self, c_in: int, c_out: int, cond_dim: int):
        super().__init__()
        self.norm_in = nn.GroupNorm(min(32, c_in), c_in)
        self.lin_in = nn.Linear(c_in, c_out)
        self.cond = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 2 * c_out))
        self.norm = nn.GroupNorm(min(32, c_out), c_out)
        self.depthwise = nn.Parameter(torch.empty(c_out, 3, 3))
        nn.init.kaiming_uniform_(self.depthwise.view(c_out, 1, 3, 3), a=math.sqrt(5))  # nn.Conv2d's default
        self.lin_out = nn.Linear(c_out, c_out)
        nn.init.zeros_(self.lin_out.weight)  # each block starts as the identity
        nn.init.zeros_(self.lin_out.bias)
        self.skip = nn.Identity() if c_in == c_out else nn.Linear(c_in, c_out)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """x: (N, H, W, C_in) tokens, cond: (N, E) -> (N, H, W, C_out)."""
        h = self.lin_in(F.silu(group_norm(self.norm_in, x)))
        scale, shift = self.cond(cond)[:, None, None, :].chunk(2, dim=-1)
        h = group_norm(self.norm, h) * (1 + scale) + shift
        return self.skip(x) + self.lin_out(depthwise_conv3x3(F.silu(h), self.depthwise))


class TokenAttention(nn.Module):
    """Multi-head self-attention over the H*W tokens of each sample, with a residual connection."""

    def __init__(self, channels: int, head_dim: int = 64):
        super().__init__()
        self.heads = max(1, channels // head_dim)
        self.norm = nn.GroupNorm(min(32, channels), channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, H, W, C) tokens -> the same shape."""
        n, h, w, c = x.shape
        tokens = group_norm(self.norm, x).view(n, h * w, c)
        q, k, v = self.qkv(tokens).view(n, h * w, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = attention(q, k, v)  # (N, heads, HW, C/heads): attention within a sample
        return x + self.proj(out.transpose(1, 2).reshape(n, h * w, c)).view(n, h, w, c)


class Level(nn.Module):
    """One resolution of the U: residual blocks, each optionally followed by token attention."""

    def __init__(self, c_in: int, c_out: int, cond_dim: int, blocks: int, attention: bool):
        super().__init__()
        self.blocks = nn.ModuleList(ResBlock(c_in if i == 0 else c_out, c_out, cond_dim) for i in range(blocks))
        self.attn = nn.ModuleList(TokenAttention(c_out) if attention else nn.Identity() for _ in range(blocks))

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        for block, attn in zip(self.blocks, self.attn):
            x = attn(block(x, cond))
        return x



class TokenUNet(nn.Module):
    """The U over 2x2-patch tokens: grid (N, C, S, S) and condition (N, E) -> (N, C, S, S).

    `hidden_dims` is symmetric, e.g. [256, 512, 1024, 512, 256]: the first half (with the middle) are the widths of the
    down levels, the rest those of the up levels."""

    def __init__(
        self,
        *,
        hidden_dims: list[int],
        cond_dim: int,
        latent_channels: int,
        side: int,
        patch_size: int = 2,
        blocks_per_level: int = 1,
        attention_min_tokens: int = 4,
    ):
        super().__init__()
        n_down = len(hidden_dims) // 2 + 1
        grid = side // patch_size
        if side % patch_size or grid % 2 ** (n_down - 1) or grid < 2 ** (n_down - 1):
            raise ValueError(
                f"a {side}x{side} latent grid in patches of {patch_size} does not give a square token grid divisible "
                f"by {2 ** (n_down - 1)}"
            )
        self.patch_size = patch_size
        down_dims = hidden_dims[:n_down]
        patch_values = latent_channels * patch_size**2
        self.patch_in = nn.Linear(patch_values, down_dims[0])
        tokens = [(grid // 2**i) ** 2 for i in range(n_down)]
        self.down = nn.ModuleList(
            Level(down_dims[i], down_dims[i], cond_dim, blocks_per_level, tokens[i] >= attention_min_tokens)
            for i in range(n_down)
        )
        # a merge is a linear map of 2x2 tokens into one; a split maps one token to 2x2
        self.merge = nn.ModuleList(nn.Linear(4 * down_dims[i], down_dims[i + 1]) for i in range(n_down - 1))
        self.split = nn.ModuleList(nn.Linear(down_dims[i + 1], 4 * down_dims[i]) for i in range(n_down - 1))
        self.up = nn.ModuleList(
            Level(2 * down_dims[i], down_dims[i], cond_dim, blocks_per_level, tokens[i] >= attention_min_tokens)
            for i in range(n_down - 1)
        )
        self.out_norm = nn.GroupNorm(min(32, down_dims[0]), down_dims[0])
        self.out = nn.Linear(down_dims[0], patch_values)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """x: (N, C, S, S) latent grid, cond: (N, E) -> (N, C, S, S)."""
        h = self.patch_in(space_to_depth(x.permute(0, 2, 3, 1), self.patch_size))  # (N, G, G, D0), channel-last
        skips = []
        for i, level in enumerate(self.down):
            h = level(h, cond)
            if i < len(self.merge):
                skips.append(h)
                h = self.merge[i](space_to_depth(h, 2))
        for i in reversed(range(len(self.up))):
            h = self.up[i](torch.cat([depth_to_space(self.split[i](h), 2), skips[i]], dim=-1), cond)
        out = depth_to_space(self.out(F.silu(group_norm(self.out_norm, h))), self.patch_size)  # (N, S, S, C)
        return out.permute(0, 3, 1, 2)
