"""The latent denoiser `ConditionalUNet`: `model(z_t, t, y) -> v_hat` (or eps_hat), shaped like z_t.

It embeds the timestep (sinusoidal, then an MLP) and the class (with a null class for classifier-free guidance), adds
the two into one condition vector, and hands the latent in its VAE layout (4 channels on an 8x8 grid) with that
condition to a convolutional U-Net over the grid (models/conv_unet.py), which injects it into every block. The
network never sees a noise schedule.

The bake-off that chose this network (README, "The denoiser bake-off") also tried a U-Net over 2x2-patch tokens (this
project's earlier denoiser) and a transformer over the 64 grid positions (DiT); both are in the git history.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from checkpoints import config_difference
from models.conv_unet import ConvUNet
from models.layers import timestep_embedding

PREDICTIONS = ("eps", "v")


class ConditionalUNet(nn.Module):
    """Class- and time-conditional denoiser for flat latents.

    `hidden_dims` is symmetric, e.g. [256, 512, 1024, 512, 256]: the widths of the U from its finest level (the
    latent's full 8x8 grid) down to its middle and back, counted in values per 2x2 cell of a level's grid, so that a
    level of width W has W / 4 channels at each position: [256, 512, 1024, 512, 256] is 64 channels at 8x8, 128 at 4x4
    and a middle of 256 at 2x2 (the widths of the token U-Net it replaced, whose tokens were 2x2 patches).
    `blocks_per_level` residual blocks per level (one more on the way up), attention on grids of at most
    `attention_max_positions` positions. Class index `num_classes` is the null class used for classifier-free
    guidance.

    `prediction` is what the output means: "v" = sqrt(a) eps - sqrt(1 - a) z_0 (Salimans & Ho 2022; with unit-variance
    latents this is EDM's preconditioning, Karras et al. 2022, up to sign) or "eps", the noise (Ho et al. 2020). The
    state dict carries it with the other constructor arguments and the diffusion process the network was trained in
    (`process`), so a loaded file sets them; the network itself never reads the process.
    """

    def __init__(
        self,
        latent_dim: int = 256,
        hidden_dims: list[int] | tuple[int, ...] = (256, 512, 1024, 512, 256),
        time_emb_dim: int = 256,
        num_classes: int = 2,
        *,
        latent_channels: int = 4,
        blocks_per_level: int = 2,
        attention_max_positions: int = 16,
        prediction: str = "v",
    ):
        super().__init__()
        hidden_dims = list(hidden_dims)
        self.config = dict(
            latent_dim=latent_dim,
            hidden_dims=hidden_dims,
            time_emb_dim=time_emb_dim,
            num_classes=num_classes,
            latent_channels=latent_channels,
            blocks_per_level=blocks_per_level,
            attention_max_positions=attention_max_positions,
        )
        if len(hidden_dims) % 2 == 0 or hidden_dims != hidden_dims[::-1] or any(w % 4 for w in hidden_dims):
            raise ValueError(
                "hidden_dims must be symmetric, of odd length and multiples of 4, e.g. [256, 512, 1024, 512, 256]; "
                f"got {hidden_dims}"
            )
        side = math.isqrt(latent_dim // latent_channels)
        if latent_channels * side * side != latent_dim:
            raise ValueError(f"latent_dim={latent_dim} is not latent_channels={latent_channels} on a square grid")
        self.latent_dim, self.num_classes, self.latent_channels = latent_dim, num_classes, latent_channels
        self.side, self.time_emb_dim = side, time_emb_dim
        self.time_mlp = nn.Sequential(
            nn.Linear(time_emb_dim, time_emb_dim), nn.SiLU(), nn.Linear(time_emb_dim, time_emb_dim)
        )
        self.class_emb = nn.Embedding(num_classes + 1, time_emb_dim)  # last row: the null class
        half = len(hidden_dims) // 2  # a width W is W values per 2x2 cell of its grid: W / 4 channels per position
        self.backbone = ConvUNet(
            channels=[w // 4 for w in hidden_dims[:half]],
            middle_channels=hidden_dims[half] // 4,
            cond_dim=time_emb_dim,
            latent_channels=latent_channels,
            side=side,
            blocks_per_level=blocks_per_level,
            attention_max_positions=attention_max_positions,
        )
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
        self.config["prediction"] = prediction
        self.process: dict = {}  # the diffusion process it was trained in (n_steps, schedule, ...), set by training
        self._register_load_state_dict_pre_hook(self._drop_guide)

    @staticmethod
    def _drop_guide(state_dict, prefix, *args) -> None:
        """Files of earlier versions may carry an autoguidance network under "guide." (an option that lost: README);
        its weights are left unread."""
        for key in [k for k in state_dict if k.startswith(prefix + "guide.")]:
            del state_dict[key]

    # Files carry the constructor arguments and the process under "_extra_state" (nn.Module's own mechanism, read by
    # torch.load(weights_only=True)): a file rebuilds its network, and its process, without flags.
    optional_state_prefixes = ("guide.",)  # an earlier version's autoguidance network, in files that carry one
    config_set_by_file = ("prediction",)  # loading a file sets it; the rest of the config must match

    def get_extra_state(self) -> dict:
        return {"config": self.config, "process": self.process}

    def set_extra_state(self, state: dict) -> None:
        if config_difference(self, state):
            raise ValueError(f"the file describes another ConditionalUNet ({config_difference(self, state)})")
        self.config["prediction"] = state["config"]["prediction"]
        self.process = dict(state["process"])

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
        grid = z_t.view(-1, self.latent_channels, self.side, self.side)  # the VAE's (C, S, S) layout
        return self.backbone(grid, cond).flatten(1)
