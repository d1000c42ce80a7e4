"""Gaussian diffusion in the (normalised) latent space: schedule, forward noising, loss, sampling.

Schedule: cosine (Nichol & Dhariwal 2021). Loss: MSE of the network's target, the noise eps (Ho et al.
2020) or v = sqrt(a) eps - sqrt(1 - a) z_0 (Salimans & Ho 2022), as the model's `prediction` says, with
class dropout for classifier-free guidance (Ho & Salimans 2022). The samplers always get eps.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from errors import UserInputError
from models.compiled import maybe_compile
from models.samplers import SAMPLERS, Callback


def cosine_alphas_cumprod(n_steps: int, s: float = 0.008, min_alpha_bar: float = 4e-5) -> torch.Tensor:
    """alpha-bar_t of the cosine schedule (Nichol & Dhariwal 2021), float64, shape (n_steps,), rescaled to end at
    `min_alpha_bar` (DDPM's terminal value) instead of ~1e-9: with alpha-bar that small, the first reverse step
    divides the noise-prediction error by sqrt(alpha-bar) and flings the latent thousands of units away."""
    steps = torch.arange(1, n_steps + 1, dtype=torch.float64) / n_steps
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2 / math.cos(s / (1 + s) * math.pi / 2) ** 2
    return min_alpha_bar + (1 - min_alpha_bar) * f


def linear_alphas_cumprod(n_steps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """alpha-bar_t of DDPM's linear schedule (Ho et al. 2020), scaled to n_steps; float64, shape (n_steps,)."""
    scale = 1000 / n_steps
    betas = torch.linspace(scale * beta_start, scale * beta_end, n_steps, dtype=torch.float64)
    return torch.cumprod(1 - betas, dim=0)


SCHEDULES = {"cosine": cosine_alphas_cumprod, "linear": linear_alphas_cumprod}
PROCESS_DEFAULTS = {"n_steps": 1000, "schedule": "cosine", "normalize_latents": True}  # files without a record


def spaced_timesteps(n_steps: int, steps: int) -> list[int]:
    """`steps` evenly spaced timesteps from n_steps-1 down to 0 (inclusive), without repeats."""
    return sorted({round(i * (n_steps - 1) / max(steps - 1, 1)) for i in range(steps)}, reverse=True)


def karras_timesteps(alphas_cumprod: torch.Tensor, steps: int, rho: float = 7.0) -> list[int]:
    """`steps` timesteps whose noise levels sigma_t = sqrt((1 - a_t) / a_t) follow Karras et al. 2022 (eq. 5, rho = 7)
    from the process's largest sigma down to its smallest, each rounded to the nearest timestep in log sigma; the
    schedule's own timesteps, decreasing, without repeats."""
    a = alphas_cumprod.double().cpu()
    log_sigma = ((1 - a) / a).sqrt().log()  # increasing in t
    lo, hi = log_sigma[0].exp() ** (1 / rho), log_sigma[-1].exp() ** (1 / rho)
    targets = (hi + torch.linspace(0, 1, steps, dtype=torch.float64) * (lo - hi)) ** rho
    nearest = (log_sigma[None, :] - targets.log()[:, None]).abs().argmin(dim=1)
    return sorted(set(nearest.tolist()), reverse=True)


def sampler_timesteps(sampler: str, alphas_cumprod: torch.Tensor, steps: int) -> list[int]:
    """The timesteps a sampler visits: evenly spaced for DDIM and DDPM, Karras et al.'s spacing for Heun's solver."""
    if sampler == "heun":
        return karras_timesteps(alphas_cumprod, steps)
    return spaced_timesteps(len(alphas_cumprod), steps)


# Training timesteps: uniform over the schedule, or EDM's log-normal noise levels (Karras et al. 2022). EDM's
# P_mean = -1.2 is for data of standard deviation 0.5; these latents have unit variance, hence -1.2 + ln 2.
TIMESTEP_SAMPLING = ("uniform", "lognormal")
LOGNORMAL_MEAN, LOGNORMAL_STD = -1.2 + math.log(2.0), 1.2

DEFAULT_SCALE = 3.0  # classifier-free guidance's scale, measured best (README); 1.0 = no guidance
# Heun: 12 noise levels, 23 network calls: from the same noise it draws the images of EDM's 18 levels (35 calls) to 2.7
# levels of 255 on average, 95% of them within 16 everywhere, and scores the same (docs/benchmark.md)
DEFAULT_STEPS = {"heun": 12, "ddim": 50, "ddpm": 50}


@dataclass(frozen=True)
class SamplingOptions:
    """How samples are drawn: the one set of defaults and the one validation of every way to sample
    (`generate_class_samples`, `ConditionalDenoiseDiffusion.sample`, the CLI's `--sampler` ... flags).
    The defaults are the best measured with `python main.py evaluate` (README).

    Guidance is classifier-free, eps_u + s (eps_c - eps_u) (Ho & Salimans 2022). `guidance_scale` None means
    DEFAULT_SCALE, `steps` None DEFAULT_STEPS of the sampler."""

    sampler: str = "heun"  # a key of SAMPLERS
    steps: int | None = None  # reverse steps (the sampler's timesteps, sampler_timesteps); None: DEFAULT_STEPS
    eta: float = 0.0  # DDIM's noise: 0 deterministic (as in the DDIM paper and diffusers), 1 the DDPM posterior's
    guidance_scale: float | None = None  # None: DEFAULT_SCALE; 1.0 = no guidance
    # guide only where t / n_steps lies in [lo, hi]: below t/T = 0.1 guidance moves the image by half a level of 255
    guidance_interval: tuple[float, float] = (0.1, 1.0)

    def replace(self, **changes) -> "SamplingOptions":
        """A copy with some options changed; an unknown name is a UserInputError naming the valid ones."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise UserInputError(f"unknown sampling option(s) {', '.join(unknown)}: use {', '.join(sorted(names))}")
        return dataclasses.replace(self, **changes)

    @property
    def step_count(self) -> int:
        """The number of reverse steps: `steps`, or the sampler's default."""
        return DEFAULT_STEPS.get(self.sampler, 50) if self.steps is None else self.steps

    def resolve(self) -> "SamplingOptions":
        """These options with the guidance scale and the steps filled in."""
        scale = DEFAULT_SCALE if self.guidance_scale is None else self.guidance_scale
        return dataclasses.replace(self, guidance_scale=scale, steps=self.step_count)

    def validate(self, n_steps: int) -> None:
        """Raise a UserInputError (its `option` names the field) for a value out of range."""
        lo, hi = self.guidance_interval
        scale = 1.0 if self.guidance_scale is None else self.guidance_scale
        checks = {
            "sampler": (self.sampler in SAMPLERS, f"must be one of {', '.join(SAMPLERS)}"),
            "steps": (
                isinstance(self.step_count, int)
                and not isinstance(self.step_count, bool)
                and 1 <= self.step_count <= n_steps,
                f"must be an integer in [1, {n_steps}]",
            ),
            "eta": (0.0 <= self.eta <= 1.0, "must be in [0, 1]"),
            "guidance_scale": (
                math.isfinite(scale) and scale >= 0.0,
                "must be >= 0 and finite (1.0 = no guidance)",
            ),
            "guidance_interval": (0.0 <= lo <= hi <= 1.0, "must be two fractions 0 <= lo <= hi <= 1"),
        }
        for name, (ok, rule) in checks.items():
            if not ok:
                err = UserInputError(f"{name} {rule}, got {getattr(self, name)!r}")
                err.option = name
                raise err

    def guided(self, t: int, n_steps: int) -> bool:
        """Whether timestep t gets guidance (the interval of Kynkaanniemi et al. 2024); options must be resolved."""
        lo, hi = self.guidance_interval
        return self.guidance_scale != 1.0 and lo * (n_steps - 1) <= t <= hi * (n_steps - 1)


class ConditionalDenoiseDiffusion:
    """The diffusion process around a noise predictor `model(z_t, t, y)`.

    The process (n_steps, schedule, whether the latents are normalised) is what the model's file records
    (`model.process`, written by training); arguments given here must agree with it. Models without a record
    (files from before it, or stand-ins) get the arguments, else PROCESS_DEFAULTS."""

    def __init__(
        self,
        model: nn.Module,
        n_steps: int | None = None,
        device: torch.device | str | None = None,
        *,
        schedule: str | None = None,
        class_dropout: float = 0.1,
        min_snr_gamma: float = 0.0,
        timestep_sampling: str = "uniform",
    ):
        recorded = getattr(model, "process", None) or {}
        given = {k: v for k, v in (("n_steps", n_steps), ("schedule", schedule)) if v is not None}
        clash = {k: (v, recorded[k]) for k, v in given.items() if k in recorded and recorded[k] != v}
        if clash:
            k, (v, r) = next(iter(clash.items()))
            raise UserInputError(f"this denoiser was trained with {k}={r!r}, not {v!r}: leave {k} out to use its own")
        process = {**PROCESS_DEFAULTS, **given, **recorded}
        if process["schedule"] not in SCHEDULES:
            raise UserInputError(f"unknown schedule {process['schedule']!r}: use one of {', '.join(SCHEDULES)}")
        if process["n_steps"] < 2:
            raise UserInputError(f"n_steps must be at least 2, got {process['n_steps']}")
        if timestep_sampling not in TIMESTEP_SAMPLING:
            raise UserInputError(f"timestep_sampling must be one of {', '.join(TIMESTEP_SAMPLING)}")
        self.model, self.class_dropout, self.min_snr_gamma = model, class_dropout, min_snr_gamma
        self.timestep_sampling = timestep_sampling
        self.net, self.graphed = model, False  # what sampling calls: the model, or its compiled form (compile())
        self.n_steps, self.schedule = process["n_steps"], process["schedule"]
        self.normalize_latents = process["normalize_latents"]
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.alphas_cumprod = SCHEDULES[self.schedule](self.n_steps).float().to(self.device)  # (T,)
        self.log_sigmas = 0.5 * ((1 - self.alphas_cumprod) / self.alphas_cumprod).log()  # (T,), increasing

    def compile(self, mode: str) -> "ConditionalDenoiseDiffusion":
        """Sample through torch.compile(model) in `mode` ("reduce-overhead": CUDA graphs, so that 50 steps of a batch
        are 50 graph replays; "off": eager). Training calls the model itself and is unaffected."""
        self.net, self.graphed = maybe_compile(self.model, mode), mode == "reduce-overhead"
        return self

    def _forward(self, z_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.graphed:
            torch.compiler.cudagraph_mark_step_begin()  # the previous replay's output has been used up
        return self.net(z_t, t, y)

    def to_vae_latents(self, autoencoder, z: torch.Tensor) -> torch.Tensor:
        """Latents of this process (N, D) -> the VAE's, ready for `decode`: the one place latents are rescaled."""
        return autoencoder.denormalize_latent(z) if self.normalize_latents else z

    def from_vae_latents(self, autoencoder, z: torch.Tensor) -> torch.Tensor:
        """The VAE's latents (N, D) -> this process's data space (unit variance per dimension when normalised)."""
        return autoencoder.normalize_latent(z) if self.normalize_latents else z

    def q_sample(self, z0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Forward noising q(z_t | z_0) = N(sqrt(a_t) z_0, (1 - a_t) I)."""
        a = self.alphas_cumprod[t][:, None]
        return a.sqrt() * z0 + (1 - a).sqrt() * eps

    @property
    def prediction(self) -> str:
        """What the model outputs: "eps" or "v" (models without the attribute predict eps)."""
        return getattr(self.model, "prediction", "eps")

    def target(self, z0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """What the network is trained to output for z_t = q_sample(z0, t, eps): eps, or v."""
        if self.prediction == "eps":
            return eps
        a = self.alphas_cumprod[t][:, None]
        return a.sqrt() * eps - (1 - a).sqrt() * z0

    def to_eps(self, out: torch.Tensor, z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The model's output at (z_t, t) as a noise prediction: eps = sqrt(1 - a) z_t + sqrt(a) v for v."""
        if self.prediction == "eps":
            return out
        a = self.alphas_cumprod[t][:, None]
        return (1 - a).sqrt() * z_t + a.sqrt() * out

    def loss(
        self,
        z0: torch.Tensor,
        y: torch.Tensor,
        generator: torch.Generator | None = None,
        model: nn.Module | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """MSE to the target (eps or v) with class dropout; returns (loss, timesteps (N,), unweighted MSE (N,)).

        With min_snr_gamma > 0 each sample's eps-MSE is weighted by min(SNR_t, gamma) / SNR_t (Min-SNR, Hang et al.
        2023; for v the same weight in z_0 terms, min(SNR_t, gamma) / (SNR_t + 1)), which stops the nearly
        noise-free timesteps from dominating training. `model` overrides the wrapped network (e.g. its
        DistributedDataParallel or compiled wrapper)."""
        n = z0.shape[0]
        t = self.sample_timesteps(n, generator)
        eps = torch.randn(z0.shape, device=z0.device, dtype=z0.dtype, generator=generator)
        drop = torch.rand(n, device=z0.device, generator=generator) < self.class_dropout
        y = torch.where(drop, torch.full_like(y, self.model.null_class), y)
        out = (self.model if model is None else model)(self.q_sample(z0, t, eps), t, y)
        per_sample = F.mse_loss(out.float(), self.target(z0, t, eps), reduction="none").mean(dim=1)  # (N,)
        if self.min_snr_gamma <= 0:
            return per_sample.mean(), t, per_sample
        a = self.alphas_cumprod[t]
        snr = a / (1 - a)
        weight = snr.clamp(max=self.min_snr_gamma) / (snr if self.prediction == "eps" else snr + 1)
        return (per_sample * weight).mean(), t, per_sample

    def sample_timesteps(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n training timesteps (n,): uniform, or "lognormal": ln sigma ~ N(P_mean, P_std^2) (Karras et al. 2022; sigma
        = sqrt((1 - a_t) / a_t)), each taken to the first timestep whose sigma reaches it."""
        device = self.alphas_cumprod.device
        if self.timestep_sampling == "uniform":
            return torch.randint(0, self.n_steps, (n,), device=device, generator=generator)
        target = LOGNORMAL_MEAN + LOGNORMAL_STD * torch.randn(n, device=device, generator=generator)
        return torch.searchsorted(self.log_sigmas, target).clamp(max=self.n_steps - 1)

    def predict_eps(
        self, z_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor, guidance_scale: float = 1.0
    ) -> torch.Tensor:
        """Noise prediction with classifier-free guidance, eps_u + s * (eps_c - eps_u) (for a v-predicting model the
        guidance is applied to v, which gives the same eps: the map is affine); s = 1 is plain conditional."""
        if guidance_scale == 1.0:
            return self.to_eps(self._forward(z_t, t, y), z_t, t)
        null = torch.full_like(y, self.model.null_class)
        out_c, out_u = self._forward(torch.cat([z_t, z_t]), torch.cat([t, t]), torch.cat([y, null])).chunk(2)
        return self.to_eps(out_u + guidance_scale * (out_c - out_u), z_t, t)

    @torch.no_grad()
    def sample(
        self,
        y: torch.Tensor,
        options: SamplingOptions | None = None,
        *,
        generator: torch.Generator | None = None,
        callback: Callback = None,
        z_T: torch.Tensor | None = None,
        **changes,
    ) -> torch.Tensor:
        """Draw latents (N, D) for labels y (N,) by running the reverse process from pure noise (or from `z_T`), as
        `options` (default: SamplingOptions()) with `changes` (e.g. steps=20) say."""
        options = (options or SamplingOptions()).replace(**changes)
        options.validate(self.n_steps)
        options = options.resolve()
        if z_T is None:
            z_T = torch.randn((len(y), self.model.latent_dim), device=self.device, generator=generator)

        def eps_fn(z: torch.Tensor, t: int) -> torch.Tensor:
            scale = options.guidance_scale if options.guided(t, self.n_steps) else 1.0
            t_batch = torch.full((len(z),), t, device=z.device, dtype=torch.long)
            return self.predict_eps(z, t_batch, y, scale)

        timesteps = sampler_timesteps(options.sampler, self.alphas_cumprod, options.step_count)
        return SAMPLERS[options.sampler](
            eps_fn, z_T, self.alphas_cumprod, timesteps, generator=generator, eta=options.eta, callback=callback
        )
