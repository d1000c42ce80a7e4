"""The public sampling entry point: class label in, images in [0, 1] out."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from data import class_index, to_unit_range
from errors import UserInputError
from models.batched import eval_mode
from models.diffusion import ConditionalDenoiseDiffusion, SamplingOptions
from models.vae import SimpleAutoencoder


def _make_generator(
    device: torch.device, seed: int | None, generator: torch.Generator | None
) -> torch.Generator | None:
    if seed is not None and generator is not None:
        raise UserInputError("pass either seed or generator, not both")
    if seed is None:
        return generator
    return torch.Generator(device=device).manual_seed(seed)


def generate_class_samples(
    autoencoder: SimpleAutoencoder,
    diffusion: ConditionalDenoiseDiffusion,
    target_class: int | str,
    num_samples: int = 5,
    *,
    options: SamplingOptions | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    batch_size: int = 256,
    **changes,
) -> torch.Tensor:
    """Generate `num_samples` images of `target_class` (0/'cat', 1/'dog'): a float tensor (N, 3, 32, 32) in [0, 1].

    Samples latents with `diffusion` as `options` (default: SamplingOptions(): Heun's deterministic solver on 12 noise
    levels, classifier-free guidance 3 from t/T = 0.1 up) with `changes` (sampler=, steps=, eta=, guidance_scale=,
    guidance_interval=) say,
    maps them back to the VAE's latents and decodes them, `batch_size` at a time. For the same options and
    generator, `diffusion.sample` draws the same latents.
    """
    args = (autoencoder, diffusion, target_class, num_samples)
    kwargs = dict(options=options, seed=seed, generator=generator, batch_size=batch_size, **changes)
    return torch.cat(list(iter_class_samples(*args, **kwargs)))


def iter_class_samples(
    autoencoder: SimpleAutoencoder,
    diffusion: ConditionalDenoiseDiffusion,
    target_class: int | str,
    num_samples: int,
    *,
    options: SamplingOptions | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    batch_size: int = 256,
    **changes,
) -> Iterator[torch.Tensor]:
    """generate_class_samples' images, one batch of `batch_size` at a time as each is drawn (for a caller that writes
    them as they come, or shows progress); their concatenation is what generate_class_samples returns."""
    label = class_index(target_class)
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise UserInputError(f"num_samples must be a positive integer, got {num_samples!r}")
    if batch_size < 1:
        raise UserInputError(f"batch_size must be positive, got {batch_size}")
    options = (options or SamplingOptions()).replace(**changes)
    options.validate(diffusion.n_steps)
    generator = _make_generator(diffusion.device, seed, generator)
    for start in range(0, num_samples, batch_size):
        n = min(batch_size, num_samples - start)
        y = torch.full((n,), label, dtype=torch.long, device=diffusion.device)
        with torch.no_grad(), eval_mode(autoencoder, diffusion.model):
            z = diffusion.to_vae_latents(autoencoder, diffusion.sample(y, options, generator=generator))
            images = to_unit_range(autoencoder.decode(z)).float().cpu()
        yield images
