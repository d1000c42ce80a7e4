"""The VAE: a CBAM-residual encoder to a 256-d latent (laid out as 4x8x8), a mirrored decoder,
a classifier on the latent and the class centers used by the center loss.

The encoder's and decoder's skip connections stay inside each half (residual and resampling
shortcuts): nothing but the latent reaches the decoder, because at generation time there is no
encoder to take features from.
"""

from __future__ import annotations

import torch
from torch import nn

from checkpoints import config_difference

from models.blocks import Downsample, ResidualAttentionBlock, Upsample, group_norm


def _check_layout(latent_dim: int, latent_channels: int, side: int) -> None:
    if latent_dim != latent_channels * side * side:
        raise ValueError(
            f"latent_dim={latent_dim} must equal latent_channels*{side}*{side} "
            f"(= {latent_channels * side * side} for latent_channels={latent_channels})"
        )


class Encoder(nn.Module):
    """Image (N, C, 32, 32) in [-1, 1] -> mu, logvar, each (N, latent_channels, side, side)."""

    def __init__(self, in_channels: int, channels: tuple[int, ...], blocks: int, latent_channels: int):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels[0], 3, padding=1)]
        for i, c in enumerate(channels):
            layers += [ResidualAttentionBlock(c) for _ in range(blocks)]
            if i + 1 < len(channels):
                layers.append(Downsample(c, channels[i + 1]))
        layers += [group_norm(channels[-1]), nn.SiLU(), nn.Conv2d(channels[-1], 2 * latent_channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.net(x).chunk(2, dim=1)
        return mu, logvar


class Decoder(nn.Module):
    """Latent (N, latent_channels, side, side) -> image (N, C, 32, 32), the encoder's mirror."""

    def __init__(self, out_channels: int, channels: tuple[int, ...], blocks: int, latent_channels: int):
        super().__init__()
        rev = channels[::-1]
        layers: list[nn.Module] = [nn.Conv2d(latent_channels, rev[0], 3, padding=1)]
        for i, c in enumerate(rev):
            layers += [ResidualAttentionBlock(c) for _ in range(blocks)]
            if i + 1 < len(rev):
                layers.append(Upsample(c, rev[i + 1]))
        layers += [group_norm(rev[-1]), nn.SiLU(), nn.Conv2d(rev[-1], out_channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class SimpleAutoencoder(nn.Module):
    """Conditional-ready VAE of 32x32 images with a 256-d latent, a latent classifier and class centers.

    It also holds the per-dimension statistics (`latent_shift`, `latent_scale`) that map its latents to
    unit variance for diffusion; `normalize_latent` and `denormalize_latent` are the one place this happens.
    """

    def __init__(
        self,
        in_channels: int = 3,
        latent_dim: int = 256,
        num_classes: int = 2,
        *,
        channels: tuple[int, ...] = (32, 64, 128),
        blocks_per_level: int = 1,
        latent_channels: int = 4,
        image_size: int = 32,
    ):
        super().__init__()
        self.config = dict(
            in_channels=in_channels,
            latent_dim=latent_dim,
            num_classes=num_classes,
            channels=list(channels),
            blocks_per_level=blocks_per_level,
            latent_channels=latent_channels,
            image_size=image_size,
        )
        self.latent_dim, self.num_classes, self.latent_channels = latent_dim, num_classes, latent_channels
        self.side = image_size // 2 ** (len(channels) - 1)
        _check_layout(latent_dim, latent_channels, self.side)
        self.encoder = Encoder(in_channels, tuple(channels), blocks_per_level, latent_channels)
        self.decoder = Decoder(in_channels, tuple(channels), blocks_per_level, latent_channels)
        self.classifier = nn.Sequential(nn.Linear(latent_dim, 256), nn.SiLU(), nn.Linear(256, num_classes))
        self.class_centers = nn.Parameter(torch.zeros(num_classes, latent_dim))  # center loss (Wen et al. 2016)
        self.register_buffer("latent_shift", torch.zeros(latent_dim))
        self.register_buffer("latent_scale", torch.ones(latent_dim))
        self._register_load_state_dict_pre_hook(self._upgrade_old_file, with_module=True)

    @property
    def layout(self) -> str:
        """The latent's layout, channels x grid side x grid side: "4x8x8" for the public defaults."""
        return f"{self.latent_channels}x{self.side}x{self.side}"

    optional_state_keys = ("_extra_state",)  # absent from files written before it existed

    def get_extra_state(self) -> dict:
        """The constructor arguments, saved in the state dict: a file rebuilds its network without flags."""
        return {"config": self.config}

    def set_extra_state(self, state: dict) -> None:
        if config_difference(self, state):
            raise ValueError(f"the file describes another SimpleAutoencoder ({config_difference(self, state)})")

    @classmethod
    def from_state_dict(cls, state: dict) -> "SimpleAutoencoder":
        """Build the autoencoder a file describes (public defaults for files without a record) and load it."""
        model = cls(**state.get("_extra_state", {}).get("config", {}))
        model.load_state_dict(state)
        return model

    @staticmethod
    def _upgrade_old_file(module, state_dict, prefix, *args) -> None:
        """A file from before "_extra_state" describes this autoencoder's own architecture."""
        state_dict.setdefault(prefix + "_extra_state", module.get_extra_state())

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (N, C, 32, 32) in [-1, 1] -> (mu, logvar), each (N, latent_dim)."""
        mu, logvar = self.encoder(x)
        return mu.flatten(1), logvar.clamp(-30.0, 20.0).flatten(1)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (N, latent_dim) -> images (N, C, 32, 32), roughly in [-1, 1] (not clamped)."""
        return self.decoder(z.view(-1, self.latent_channels, self.side, self.side))

    def classify(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (N, latent_dim) -> class logits (N, num_classes)."""
        return self.classifier(z)

    @staticmethod
    def reparameterize(
        mu: torch.Tensor,
        logvar: torch.Tensor,
        generator: torch.Generator | None = None,
        eps: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Draw z = mu + sigma * eps (Kingma & Welling 2014); eps from `generator` unless the caller gives it."""
        if eps is None:
            eps = torch.randn(mu.shape, device=mu.device, dtype=mu.dtype, generator=generator)
        return mu + torch.exp(0.5 * logvar) * eps

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None, eps: torch.Tensor | None = None):
        """Encode, sample z = mu + sigma * eps, decode: returns (x_hat, mu, logvar, z). `eps` (N, latent_dim), drawn by
        the caller, keeps random draws out of the network (what a compiled or graph-captured step needs); without it
        eps is drawn from `generator`."""
        mu, logvar = self.encode(x)
        z = self.reparameterize(mu, logvar, generator, eps)
        return self.decode(z), mu, logvar, z

    def normalize_latent(self, z: torch.Tensor) -> torch.Tensor:
        """VAE latents -> the unit-variance latents the diffusion model works in."""
        return (z - self.latent_shift) / self.latent_scale

    def denormalize_latent(self, z: torch.Tensor) -> torch.Tensor:
        """Diffusion latents -> VAE latents, ready for `decode`."""
        return z * self.latent_scale + self.latent_shift
