"""Latent diffusion training on latents encoded once by the trained VAE (never re-encoded per step)."""

from __future__ import annotations

import torch

from data import Split
from models.diffusion import ConditionalDenoiseDiffusion
from models.batched import encode_images
from models.unet import ConditionalUNet
from models.vae import SimpleAutoencoder
from checkpoints import DIFFUSION_FILE, DIFFUSION_STATE_FILE, save_weights
from errors import UserInputError
from training.context import RunContext
from training.loop import Retime, Stage, train_stage
from training.optim import EMA
from training.config import DiffusionConfig


def encode_dataset(autoencoder: SimpleAutoencoder, data: Split) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Encode every image and its mirror image once: (mu, logvar, y), with mu/logvar (2N, D) on the VAE's device.

    The mirrors are the latent-space counterpart of flip augmentation, paid for once instead of per step.
    """
    (mu, logvar), (mu_flip, logvar_flip) = (
        encode_images(autoencoder, data.x),
        encode_images(autoencoder, data.x, flip=True),
    )
    y = data.y.to(mu.device)
    return torch.cat([mu, mu_flip]), torch.cat([logvar, logvar_flip]), torch.cat([y, y])


def quartile_losses(t: torch.Tensor, per_sample: torch.Tensor, n_steps: int) -> torch.Tensor:
    """Mean loss in each quarter of the timestep range (4,), NaN-free (empty quarters count 0)."""
    q = (t * 4 // n_steps).clamp(max=3)
    sums = torch.zeros(4, device=t.device).index_add_(0, q, per_sample.detach().float())
    counts = torch.zeros(4, device=t.device).index_add_(0, q, torch.ones_like(per_sample, dtype=torch.float))
    return sums / counts.clamp(min=1)


def train_step(net, diffusion, optimizer, scheduler, ema, z0, y, cfg, ctx, generator) -> dict[str, torch.Tensor]:
    """One optimizer step and EMA update; returns the loss and its per-quartile means (tensors, no host sync)."""
    with ctx.autocast():
        loss, t, per_sample = diffusion.loss(z0, y, generator, model=net)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
    optimizer.step()
    scheduler.step()
    ema.update(diffusion.model)
    return {"total": loss.detach(), "loss_quartiles": quartile_losses(t, per_sample, diffusion.n_steps)}


def train_denoiser(
    unet: ConditionalUNet,
    latents: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    autoencoder: SimpleAutoencoder,
    cfg: DiffusionConfig,
    ctx: RunContext,
    generator: torch.Generator,
    visualize=None,
    retime: Retime | None = None,
) -> ConditionalUNet:
    """Train `unet` for cfg.steps (or the total `retime` fixes) on the cached `latents` (mu, logvar, y) and return it
    holding its EMA weights; its training state and metrics go to the run folder's diffusion files."""
    if unet.prediction != cfg.prediction:
        raise ValueError(f"the denoiser predicts {unet.prediction}, the config says {cfg.prediction}")
    unet.process = {"n_steps": cfg.n_steps, "schedule": cfg.schedule, "normalize_latents": cfg.normalize_latents}
    diffusion = ConditionalDenoiseDiffusion(
        unet,
        device=ctx.device,
        class_dropout=cfg.class_dropout,
        min_snr_gamma=cfg.min_snr_gamma,
        timestep_sampling=cfg.timestep_sampling,
    )
    mu, logvar, y_all = latents
    ema = EMA(unet, cfg.ema_decay)
    shard = ctx.shard(len(y_all))

    def make_step(net, optimizer, scheduler):
        if unet.process != ema.model.process or unet.process["n_steps"] != diffusion.n_steps:
            raise UserInputError("the interrupted diffusion stage was trained with other process options: --no-resume")

        def step_fn(step: int) -> dict[str, torch.Tensor]:
            idx = shard[torch.randint(0, len(shard), (cfg.batch_size,), device=ctx.device, generator=generator)]
            z = autoencoder.reparameterize(mu[idx], logvar[idx], generator) if cfg.posterior_sample else mu[idx]
            z0 = diffusion.from_vae_latents(autoencoder, z)
            return train_step(net, diffusion, optimizer, scheduler, ema, z0, y_all[idx], cfg, ctx, generator)

        return step_fn

    stage = Stage("Diffusion", unet, cfg, DIFFUSION_STATE_FILE, "metrics_diffusion.jsonl", {"ema": ema})
    ema_diffusion = ConditionalDenoiseDiffusion(ema.model, device=ctx.device)
    step = train_stage(
        stage,
        ctx,
        generator,
        make_step,
        visualize=visualize and (lambda step: visualize(step, ema_diffusion)),
        retime=retime,
    )
    stage.checkpoint(step, done=True)  # with the raw weights, before they are replaced by the EMA's
    unet.load_state_dict(ema.model.state_dict())  # from here on the model is the EMA model, as in the public file
    return unet.eval()


def train_diffusion(
    unet: ConditionalUNet,
    autoencoder: SimpleAutoencoder,
    train: Split,
    cfg: DiffusionConfig,
    ctx: RunContext,
    generator: torch.Generator,
    visualize=None,
    retime: Retime | None = None,
) -> ConditionalUNet:
    """Train the denoiser for cfg.steps (or the total `retime` fixes within its warm-up) on cached latents; write the
    EMA weights as the public state dict. `visualize(step, diffusion)` is called every ctx.visualize_every
    steps with a diffusion around the EMA model.

    The denoiser's file records the process it is trained in (n_steps, schedule, whether latents are normalised by
    the VAE's statistics): the VAE's file, which the VAE stage owns, is only read here."""
    latents = encode_dataset(autoencoder, train)
    train_denoiser(unet, latents, autoencoder, cfg, ctx, generator, visualize, retime)
    if ctx.is_main:
        save_weights(unet, ctx.out_dir / DIFFUSION_FILE)
    return unet
