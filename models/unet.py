"""The latent denoiser `ConditionalUNet`: `model(z_t, t, y) -> eps_hat` (or v_hat), shaped like z_t.

The 256-d latent is read in its VAE layout (4 channels on an 8x8 grid) and cut into 2x2 patches:
16 tokens of one sample. A U-shaped stack of residual blocks works on these tokens: each down level
merges 2x2 neighbouring tokens and widens them (hidden_dims[0] -> hidden_dims[1] -> ...), each up
level splits them back and concatenates the skip from the same level of the down half. Attention
runs over the tokens of each sample (never across the batch). Time and class enter every block
through an adaptive GroupNorm scale and shift (as in Dhariwal & Nichol 2021). The network never
sees a noise schedule.

Tokens are kept channel-last, (N, H, W, C), so that every per-token map, merge and split is one
matrix multiply (the same arithmetic as 1x1 / 2x2-stride-2 convolutions, much faster on a CPU).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from checkpoints import config_difference


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (N,) timesteps to (N, dim) (Vaswani et al. 2017)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]  # (N, half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


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


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v over the last two axes (Vaswani et al. 2017), as two matrix multiplies.

    Equal to F.scaled_dot_product_attention; on 16 tokens and fewer, that kernel's CPU backward pass took a fifth of a
    denoiser training step, and this form makes the whole step 1.24-1.35x faster (`docs/attention_bench.py`, results in
    docs/benchmark.md)."""
    weights = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)  # (..., L, L)
    return weights.softmax(dim=-1) @ v


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


PREDICTIONS = ("eps", "v")


class ConditionalUNet(nn.Module):
    """Class- and time-conditional denoiser for flat latents.

    `hidden_dims` is symmetric, e.g. [256, 512, 1024, 512, 256]: the first half (with the middle)
    are the widths of the down levels, the rest those of the up levels. Class index `num_classes`
    is the null class used for classifier-free guidance.

    `prediction` is what the output means: "eps", the noise (Ho et al. 2020), or "v" = sqrt(a) eps -
    sqrt(1 - a) z_0 (Salimans & Ho 2022). The state dict carries it with the other constructor arguments and the
    diffusion process the network was trained in (`process`), so a loaded file sets them; the network itself never
    reads the process.
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
        prediction: str = "eps",
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
        patch_values = latent_channels * patch_size**2
        self.patch_in = nn.Linear(patch_values, down_dims[0])
        tokens = [(grid // 2**i) ** 2 for i in range(n_down)]
        self.down = nn.ModuleList(
            Level(down_dims[i], down_dims[i], time_emb_dim, blocks_per_level, tokens[i] >= attention_min_tokens)
            for i in range(n_down)
        )
        # a merge is a linear map of 2x2 tokens into one; a split maps one token to 2x2
        self.merge = nn.ModuleList(nn.Linear(4 * down_dims[i], down_dims[i + 1]) for i in range(n_down - 1))
        self.split = nn.ModuleList(nn.Linear(down_dims[i + 1], 4 * down_dims[i]) for i in range(n_down - 1))
        self.up = nn.ModuleList(
            Level(2 * down_dims[i], down_dims[i], time_emb_dim, blocks_per_level, tokens[i] >= attention_min_tokens)
            for i in range(n_down - 1)
        )
        self.out_norm = nn.GroupNorm(min(32, down_dims[0]), down_dims[0])
        self.out = nn.Linear(down_dims[0], patch_values)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
        self.config["prediction"] = prediction
        self.process: dict = {}  # the diffusion process it was trained in (n_steps, schedule, ...), set by training
        self.guide: ConditionalUNet | None = None  # a smaller, less trained denoiser for autoguidance (attach_guide)
        self._register_load_state_dict_pre_hook(self._upgrade_old_file, with_module=True)
        self._register_load_state_dict_pre_hook(self._build_guide, with_module=True)

    def attach_guide(self, guide: "ConditionalUNet | None") -> None:
        """Carry `guide` (a weaker denoiser of the same latents: autoguidance, Karras et al. 2024) in this network's
        state dict, under "guide."; forward never calls it. None removes it."""
        if guide is not None and (guide.latent_dim, guide.num_classes) != (self.latent_dim, self.num_classes):
            raise ValueError("a guide must denoise the same latents and classes")
        self.guide = guide

    @staticmethod
    def _build_guide(module, state_dict, prefix, *args) -> None:
        """A file that carries a guide network: build it from its recorded config before its weights load."""
        key = prefix + "guide._extra_state"
        if key in state_dict:
            config = state_dict[key]["config"]
            module.guide = ConditionalUNet(**config).to(next(module.parameters()).device)
        elif any(k.startswith(prefix + "guide.") for k in state_dict):
            raise ValueError("the file's guide network has no recorded config")
        else:
            module.guide = None

    # Files carry the constructor arguments and the process under "_extra_state" (nn.Module's own mechanism, read by
    # torch.load(weights_only=True)): a file rebuilds its network, and its process, without flags.
    optional_state_keys = ("_extra_state",)  # absent from files written before it existed
    optional_state_prefixes = ("guide.",)  # the guide network, in files that carry one
    legacy_state_keys = ("v_prediction",)  # how such files recorded a v-predicting network
    config_set_by_file = ("prediction",)  # loading a file sets it; the rest of the config must match

    def get_extra_state(self) -> dict:
        return {"config": self.config, "process": self.process}

    def set_extra_state(self, state: dict) -> None:
        if config_difference(self, state):
            raise ValueError(f"the file describes another ConditionalUNet ({config_difference(self, state)})")
        self.config["prediction"] = state["config"]["prediction"]
        self.process = dict(state["process"])

    @staticmethod
    def _upgrade_old_file(module, state_dict, prefix, *args) -> None:
        """A file from before "_extra_state": this network's own architecture, eps unless its v_prediction buffer
        says v, and no recorded process (the diffusion's arguments or defaults apply)."""
        if prefix + "_extra_state" in state_dict:
            return
        v = bool(state_dict.pop(prefix + "v_prediction", False))
        config = {**module.config, "prediction": "v" if v else "eps"}
        state_dict[prefix + "_extra_state"] = {"config": config, "process": {}}

    @classmethod
    def from_state_dict(cls, state: dict) -> "ConditionalUNet":
        """Build the network a file describes (public defaults for files without a record) and load its weights."""
        config = dict(state.get("_extra_state", {}).get("config", {}))
        net = cls(**config)
        net.load_state_dict(state)
        return net

    @property
    def prediction(self) -> str:
        """What the output means, "eps" or "v"."""
        return self.config["prediction"]

    @property
    def null_class(self) -> int:
        """Label that means 'no class' (classifier-free guidance)."""
        return self.num_classes

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Predict the noise (or v) in z_t (N, latent_dim) at timesteps t (N,) for labels y (N,)."""
        cond = self.time_mlp(timestep_embedding(t, self.time_emb_dim)) + self.class_emb(y)  # (N, E)
        grid = z_t.view(-1, self.latent_channels, self.side, self.side).permute(0, 2, 3, 1)  # (N, S, S, C)
        h = self.patch_in(space_to_depth(grid, self.patch_size))  # (N, G, G, D0) tokens, channel-last
        skips = []
        for i, level in enumerate(self.down):
            h = level(h, cond)
            if i < len(self.merge):
                skips.append(h)
                h = self.merge[i](space_to_depth(h, 2))
        for i in reversed(range(len(self.up))):
            h = self.up[i](torch.cat([depth_to_space(self.split[i](h), 2), skips[i]], dim=-1), cond)
        eps = depth_to_space(self.out(F.silu(group_norm(self.out_norm, h))), self.patch_size)  # (N, S, S, C)
        return eps.permute(0, 3, 1, 2).flatten(1)  # back to the VAE's (C, S, S) layout
