"""The latent noise predictor `ConditionalUNet`: `model(z_t, t, y) -> eps_hat`, shaped like z_t.

The 256-d latent is read in its VAE layout (4 channels on an 8x8 grid) and cut into 2x2 patches:
16 tokens of one sample. A U-shaped stack of residual blocks works on these tokens: each down level
merges 2x2 neighbouring tokens and widens them (hidden_dims[0] -> hidden_dims[1] -> ...), each up
level splits them back and concatenates the skip from the same level of the down half. Attention
runs over the tokens of each sample (never across the batch). Time and class enter every block
through an adaptive GroupNorm scale and shift (as in Dhariwal & Nichol 2021). The network never
sees a noise schedule.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (N,) timesteps to (N, dim) (Vaswani et al. 2017)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]  # (N, half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class ResBlock(nn.Module):
    """Token residual block: GN-SiLU-1x1, adaptive GN from the condition, SiLU, 3x3 depthwise, 1x1."""

    def __init__(self, c_in: int, c_out: int, cond_dim: int):
        super().__init__()
        self.in_layers = nn.Sequential(nn.GroupNorm(min(32, c_in), c_in), nn.SiLU(), nn.Conv2d(c_in, c_out, 1))
        self.cond = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 2 * c_out))
        self.norm = nn.GroupNorm(min(32, c_out), c_out)
        self.out_layers = nn.Sequential(
            nn.SiLU(),
            nn.Conv2d(c_out, c_out, 3, padding=1, groups=c_out),
            nn.Conv2d(c_out, c_out, 1),
        )
        nn.init.zeros_(self.out_layers[-1].weight)  # each block starts as the identity
        nn.init.zeros_(self.out_layers[-1].bias)
        self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        scale, shift = self.cond(cond)[:, :, None, None].chunk(2, dim=1)
        h = self.norm(h) * (1 + scale) + shift
        return self.skip(x) + self.out_layers(h)


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
        n, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (N, HW, C)
        q, k, v = self.qkv(tokens).view(n, h * w, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # (N, heads, HW, C/heads): attention within a sample
        out = self.proj(out.transpose(1, 2).reshape(n, h * w, c))
        return x + out.transpose(1, 2).view(n, c, h, w)


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


class ConditionalUNet(nn.Module):
    """Class- and time-conditional noise predictor for flat latents (Ho et al. 2020, eps-prediction).

    `hidden_dims` is symmetric, e.g. [256, 512, 1024, 512, 256]: the first half (with the middle)
    are the widths of the down levels, the rest those of the up levels. Class index `num_classes`
    is the null class used for classifier-free guidance.
    """

    def __init__(
        self,
        latent_dim: int = 256,
        hidden_dims: list[int] | tuple[int, ...] = (256, 512, 1024, 512, 256),
        time_emb_dim: int = 256,
        num_classes: int = 2,
        *,
        latent_channels: int = 4,
        patch_size: int = 2,
        blocks_per_level: int = 1,
        attention_min_tokens: int = 4,
    ):
        super().__init__()
        hidden_dims = list(hidden_dims)
        self.config = dict(
            latent_dim=latent_dim,
            hidden_dims=hidden_dims,
            time_emb_dim=time_emb_dim,
            num_classes=num_classes,
            latent_channels=latent_channels,
            patch_size=patch_size,
            blocks_per_level=blocks_per_level,
            attention_min_tokens=attention_min_tokens,
        )
        if len(hidden_dims) % 2 == 0 or hidden_dims != hidden_dims[::-1]:
            raise ValueError(
                f"hidden_dims must be symmetric with odd length, e.g. [256, 512, 1024, 512, 256]; got {hidden_dims}"
            )
        side = math.isqrt(latent_dim // latent_channels)
        n_down = len(hidden_dims) // 2 + 1
        grid = side // patch_size
        if latent_channels * side * side != latent_dim or grid % 2 ** (n_down - 1) or grid < 2 ** (n_down - 1):
            raise ValueError(
                f"latent_dim={latent_dim} with latent_channels={latent_channels} and patch_size={patch_size} "
                f"does not give a square token grid divisible by {2 ** (n_down - 1)}"
            )
        self.latent_dim, self.num_classes, self.latent_channels, self.side = (
            latent_dim,
            num_classes,
            latent_channels,
            side,
        )
        self.patch_size, self.time_emb_dim = patch_size, time_emb_dim
        self.time_mlp = nn.Sequential(
            nn.Linear(time_emb_dim, time_emb_dim), nn.SiLU(), nn.Linear(time_emb_dim, time_emb_dim)
        )
        self.class_emb = nn.Embedding(num_classes + 1, time_emb_dim)  # last row: the null class
        down_dims = hidden_dims[:n_down]
        self.patch_in = nn.Conv2d(latent_channels, down_dims[0], patch_size, stride=patch_size)
        tokens = [(grid // 2**i) ** 2 for i in range(n_down)]
        self.down = nn.ModuleList(
            Level(down_dims[i], down_dims[i], time_emb_dim, blocks_per_level, tokens[i] >= attention_min_tokens)
            for i in range(n_down)
        )
        self.merge = nn.ModuleList(nn.Conv2d(down_dims[i], down_dims[i + 1], 2, stride=2) for i in range(n_down - 1))
        self.split = nn.ModuleList(
            nn.ConvTranspose2d(down_dims[i + 1], down_dims[i], 2, stride=2) for i in range(n_down - 1)
        )
        self.up = nn.ModuleList(
            Level(2 * down_dims[i], down_dims[i], time_emb_dim, blocks_per_level, tokens[i] >= attention_min_tokens)
            for i in range(n_down - 1)
        )
        self.out = nn.Sequential(
            nn.GroupNorm(min(32, down_dims[0]), down_dims[0]),
            nn.SiLU(),
            nn.ConvTranspose2d(down_dims[0], latent_channels, patch_size, stride=patch_size),
        )
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    @property
    def null_class(self) -> int:
        """Label that means 'no class' (classifier-free guidance)."""
        return self.num_classes

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Predict the noise in z_t (N, latent_dim) at timesteps t (N,) for labels y (N,)."""
        cond = self.time_mlp(timestep_embedding(t, self.time_emb_dim)) + self.class_emb(y)  # (N, E)
        h = self.patch_in(z_t.view(-1, self.latent_channels, self.side, self.side))  # (N, D0, G, G)
        skips = []
        for i, level in enumerate(self.down):
            h = level(h, cond)
            if i < len(self.merge):
                skips.append(h)
                h = self.merge[i](h)
        for i in reversed(range(len(self.up))):
            h = self.up[i](torch.cat([self.split[i](h), skips[i]], dim=1), cond)
        return self.out(h).flatten(1)
