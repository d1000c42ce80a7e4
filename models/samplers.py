"""Reverse-process samplers: pure functions with one signature.

Each takes `eps_fn(z_t, t) -> eps_hat` (t a Python int: one timestep for the whole batch), the starting
noise `z_T` (N, D), the schedule's
`alphas_cumprod` (n_steps,), the timesteps to visit in decreasing order, a `torch.Generator`
and an optional `callback(i, t, z)` called after every step with the new latent (the trajectory).
They return the final latent z_0 (N, D).
"""

from __future__ import annotations

from typing import Callable

import torch

EpsFn = Callable[[torch.Tensor, int], torch.Tensor]
Callback = Callable[[int, int, torch.Tensor], None] | None


def _alpha_bar(alphas_cumprod: torch.Tensor, t: int) -> torch.Tensor:
    return alphas_cumprod[t] if t >= 0 else torch.ones((), device=alphas_cumprod.device, dtype=alphas_cumprod.dtype)


def _steps(alphas_cumprod: torch.Tensor, timesteps: list[int]):
    """Each reverse step as (i, t, t_prev, a_t, a_prev); after the last timestep comes t_prev = -1, alpha-bar 1: the
    data."""
    for i, t in enumerate(timesteps):
        t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        yield i, t, t_prev, _alpha_bar(alphas_cumprod, t), _alpha_bar(alphas_cumprod, t_prev)


def _noise(z: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(z.shape, device=z.device, dtype=z.dtype, generator=generator)


def sample_ddim(
    eps_fn: EpsFn,
    z_T: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    timesteps: list[int],
    *,
    generator: torch.Generator | None = None,
    eta: float = 0.0,
    callback: Callback = None,
) -> torch.Tensor:
    """DDIM (Song et al. 2021, eq. 12): deterministic for eta=0; eta=1 matches DDPM's variance."""
    z = z_T
    for i, t, t_prev, a_t, a_prev in _steps(alphas_cumprod, timesteps):
        eps = eps_fn(z, t)
        z0_hat = (z - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).clamp(min=0).sqrt()
        z = a_prev.sqrt() * z0_hat + (1 - a_prev - sigma**2).clamp(min=0).sqrt() * eps
        if eta > 0 and t_prev >= 0:
            z = z + sigma * _noise(z, generator)
        if callback is not None:
            callback(i, t, z)
    return z


def sample_ddpm(
    eps_fn: EpsFn,
    z_T: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    timesteps: list[int],
    *,
    generator: torch.Generator | None = None,
    eta: float = 1.0,
    callback: Callback = None,
) -> torch.Tensor:
    """DDPM ancestral sampling (Ho et al. 2020, Algorithm 2) with the posterior variance beta-tilde;
    on a strided subset of timesteps this is the 'respaced' DDPM of Nichol & Dhariwal (2021)."""
    del eta  # DDPM's variance is fixed by the schedule; the argument keeps one signature for all samplers
    z = z_T
    for i, t, t_prev, a_t, a_prev in _steps(alphas_cumprod, timesteps):
        beta = 1 - a_t / a_prev
        eps = eps_fn(z, t)
        mean = (z - beta / (1 - a_t).sqrt() * eps) / (1 - beta).sqrt()
        if t_prev >= 0:
            var = beta * (1 - a_prev) / (1 - a_t)
            mean = mean + var.sqrt() * _noise(z, generator)
        z = mean
        if callback is not None:
            callback(i, t, z)
    return z


def sample_heun(
    eps_fn: EpsFn,
    z_T: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    timesteps: list[int],
    *,
    generator: torch.Generator | None = None,
    eta: float = 0.0,
    callback: Callback = None,
) -> torch.Tensor:
    """Heun's second-order solver of the probability-flow ODE (Karras et al. 2022, Algorithm 1), deterministic.

    In the variance-exploding view x = z_t / sqrt(a_t) = z_0 + sigma_t eps, sigma_t = sqrt((1 - a_t) / a_t), the ODE
    is dx/dsigma = eps(x): each step takes an Euler step to the next sigma and corrects it with the slope there; the
    last step, to sigma = 0, is Euler's. Each step but the last calls eps_fn twice."""
    del generator, eta  # deterministic; the arguments keep one signature for all samplers
    z = z_T
    for i, t, t_prev, a_t, a_prev in _steps(alphas_cumprod, timesteps):
        sigma, sigma_prev = ((1 - a_t) / a_t).sqrt(), ((1 - a_prev) / a_prev).sqrt()
        slope = eps_fn(z, t)
        x = z / a_t.sqrt() + (sigma_prev - sigma) * slope  # Euler step in x
        if t_prev >= 0:
            slope_prev = eps_fn(a_prev.sqrt() * x, t_prev)
            x = z / a_t.sqrt() + (sigma_prev - sigma) * 0.5 * (slope + slope_prev)
        z = a_prev.sqrt() * x
        if callback is not None:
            callback(i, t, z)
    return z


SAMPLERS = {"ddim": sample_ddim, "ddpm": sample_ddpm, "heun": sample_heun}
