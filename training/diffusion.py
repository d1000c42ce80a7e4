"""Latent diffusion training on latents encoded once by the trained VAE (never re-encoded per step)."""

from __future__ import annotations

import logging

import torch

from data import Split
from models.diffusion import ConditionalDenoiseDiffusion
from models.batched import encode_images
from models.unet import ConditionalUNet
from models.vae import SimpleAutoencoder
from training.common import (
    AUTOENCODER_FILE,
    DIFFUSION_FILE,
    DIFFUSION_STATE_FILE,
    EMA,
    MetricsLog,
    RunContext,
    make_optimizer,
    maybe_compile,
    resume_train_state,
    run_steps,
    checkpointer,
    save_weights,
    warmup_cosine,
)
from training.config import DiffusionConfig

log = logging.getLogger(__name__)


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


def train_diffusion(
    unet: ConditionalUNet,
    autoencoder: SimpleAutoencoder,
    train: Split,
    cfg: DiffusionConfig,
    ctx: RunContext,
    generator: torch.Generator,
    visualize=None,
) -> ConditionalUNet:
    """Train the denoiser for cfg.steps on cached latents; write the EMA weights as the public state dict.
    `visualize(step, diffusion)` is called every ctx.visualize_every steps with a diffusion around the EMA model."""
    unet.set_prediction(cfg.prediction)  # a resumed training state restores the same value
    diffusion = ConditionalDenoiseDiffusion(
        unet,
        cfg.n_steps,
        ctx.device,
        schedule=cfg.schedule,
        class_dropout=cfg.class_dropout,
        min_snr_gamma=cfg.min_snr_gamma,
    )
    if not cfg.normalize_latents:  # the ablation: diffusion on raw VAE latents; the VAE file records it
        autoencoder.latent_shift.zero_()
        autoencoder.latent_scale.fill_(1.0)
        if ctx.is_main:
            save_weights(autoencoder, ctx.out_dir / AUTOENCODER_FILE)
    mu, logvar, y_all = encode_dataset(autoencoder, train)
    optimizer = make_optimizer(unet, cfg.lr, cfg.weight_decay, ctx.device)
    scheduler = warmup_cosine(optimizer, cfg.warmup_steps, cfg.steps)
    ema = EMA(unet, cfg.ema_decay)
    state_path = ctx.out_dir / DIFFUSION_STATE_FILE
    parts = dict(model=unet, ema=ema, optimizer=optimizer, scheduler=scheduler)
    step = resume_train_state(state_path, ctx, generator, **parts)
    net = maybe_compile(ctx.wrap(unet), cfg.compile)
    shard = ctx.shard(len(y_all))

    def step_fn(step: int) -> dict[str, torch.Tensor]:
        idx = shard[torch.randint(0, len(shard), (cfg.batch_size,), device=ctx.device, generator=generator)]
        z = autoencoder.reparameterize(mu[idx], logvar[idx], generator) if cfg.posterior_sample else mu[idx]
        return train_step(
            net, diffusion, optimizer, scheduler, ema, autoencoder.normalize_latent(z), y_all[idx], cfg, ctx, generator
        )

    checkpoint = checkpointer(ctx, state_path, generator, cfg, **parts)

    unet.train()
    metrics = MetricsLog(ctx.out_dir / "metrics_diffusion.jsonl", ctx.is_main, start_step=step)
    ema_diffusion = ConditionalDenoiseDiffusion(ema.model, cfg.n_steps, ctx.device, schedule=cfg.schedule)
    step = run_steps(
        "Diffusion",
        step,
        cfg.steps,
        step_fn,
        checkpoint,
        metrics,
        ctx,
        lambda step: {"lr": scheduler.get_last_lr()[0]},
        visualize and (lambda step: visualize(step, ema_diffusion)),
    )
    checkpoint(step, done=True)
    unet.load_state_dict(ema.model.state_dict())  # from here on the model is the EMA model, as in the public file
    if ctx.is_main:
        save_weights(unet, ctx.out_dir / DIFFUSION_FILE)
    return unet.eval()
