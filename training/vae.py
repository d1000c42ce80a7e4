"""Progressive VAE training: reconstruction, then KL ramps in, then classifier and center loss, then all."""

from __future__ import annotations

import dataclasses
import logging

import torch
import torch.nn.functional as F

from data import Split, augment, to_model_range, to_unit_range
from models.batched import encode_images, eval_mode, psnr, reconstruct_images
from models.vae import SimpleAutoencoder
from checkpoints import AUTOENCODER_FILE, VAE_STATE_FILE, save_weights
from training.context import RunContext
from training.loop import Stage, train_stage
from training.config import VAEConfig
from training.perceptual import VGGPerceptualLoss, load_perceptual_loss

log = logging.getLogger(__name__)

PHASES = ("reconstruction", "kl", "classifier", "finetune")


def phase_of(step: int, cfg: VAEConfig) -> int:
    """Index into PHASES of the phase that `step` belongs to."""
    frac = step / cfg.steps
    return sum(frac >= b for b in (cfg.kl_start, cfg.cls_start, cfg.finetune_start))


def phase_name(step: int, cfg: VAEConfig) -> str:
    """The phase of `step` as logged."""
    return PHASES[phase_of(step, cfg)]


def _ramp(frac: float, start: float, length: float) -> float:
    return min(1.0, max(0.0, (frac - start) / length)) if length > 0 else float(frac >= start)


def loss_weights(step: int, cfg: VAEConfig) -> dict[str, float]:
    """The weight of every loss term at `step`: the progressive schedule of the config."""
    frac = step / cfg.steps
    cls_ramp = _ramp(frac, cfg.cls_start, cfg.finetune_start - cfg.cls_start)
    return {
        "pixel": cfg.pixel_weight,
        "perceptual": cfg.perceptual_weight,
        "kl": cfg.kl_weight * _ramp(frac, cfg.kl_start, cfg.kl_ramp),
        "cls": cfg.cls_weight * cls_ramp,
        "center": cfg.center_weight * cls_ramp,
        "scale_eq": cfg.scale_equivariance_weight,
    }


def vae_losses(
    model,
    x: torch.Tensor,
    y: torch.Tensor,
    perceptual: VGGPerceptualLoss | None,
    generator: torch.Generator | None,
    scale_equivariance: bool = False,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Every loss term, unweighted: pixel MSE, perceptual, KL (summed over dims), cross-entropy, center, and with
    `scale_equivariance` the pixel MSE of the 2x2-pooled latent's decoding against the 2x2-pooled image; and the
    reconstructions x_hat."""
    ae = model.module if hasattr(model, "module") else model
    eps = torch.randn((len(x), ae.latent_dim), device=x.device, generator=generator)  # outside the (compiled) network
    x_hat, mu, logvar, z = model(x, eps=eps)
    mu, logvar = mu.float(), logvar.float()  # the KL sums 256 terms: never in bf16
    losses = {
        "pixel": F.mse_loss(x_hat.float(), x),
        "kl": (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp())).sum(dim=1).mean(),
        "cls": F.cross_entropy(ae.classify(mu).float(), y),  # logits (N, 2) against labels (N,)
        "center": (mu - ae.class_centers[y]).pow(2).mean(),
    }
    if perceptual is not None:
        losses["perceptual"] = perceptual(x_hat.float(), x)
    if scale_equivariance:  # the decoder is fully convolutional: a 4x4 latent decodes to a 16x16 image
        z_small = F.avg_pool2d(z.view(len(x), ae.latent_channels, ae.side, ae.side), 2)
        losses["scale_eq"] = F.mse_loss(ae.decoder(z_small).float(), F.avg_pool2d(x, 2))
    return losses, x_hat


def train_step(model, optimizer, scheduler, x, y, weights, perceptual, cfg, ctx, generator) -> dict[str, torch.Tensor]:
    """One optimizer step on a batch; returns the unweighted losses and the total (tensors, no host sync)."""
    with ctx.autocast():
        losses, _ = vae_losses(model, x, y, perceptual, generator, scale_equivariance=weights["scale_eq"] > 0)
    # Terms of weight 0 stay in the sum: every parameter gets a gradient, as DistributedDataParallel expects.
    losses["total"] = sum(weights[k] * v for k, v in losses.items())
    optimizer.zero_grad(set_to_none=True)
    losses["total"].backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    optimizer.step()
    scheduler.step()
    return {k: v.detach() for k, v in losses.items()}


@torch.no_grad()
def evaluate(model: SimpleAutoencoder, data: Split) -> dict[str, float]:
    """Reconstruction PSNR (dB, images in [0, 1], decoding mu) and latent-classifier accuracy on `data`."""
    mu, _ = encode_images(model, data.x)
    with eval_mode(model):
        predicted = model.classify(mu).argmax(1).cpu()
    recon_psnr = psnr(to_unit_range(to_model_range(data.x)), reconstruct_images(model, data.x))
    return {"psnr": recon_psnr, "latent_acc": (predicted == data.y).float().mean().item()}


@torch.no_grad()
def fit_latent_normalization(model: SimpleAutoencoder, data: Split) -> None:
    """Set latent_shift/latent_scale to the per-dimension mean and std of q(z|x) over `data` (mixture moments)."""
    mu, logvar = encode_images(model, data.x)
    mu, var = mu.double(), logvar.double().exp()
    model.latent_shift.copy_(mu.mean(0))
    model.latent_scale.copy_((mu.var(0, unbiased=False) + var.mean(0)).sqrt().clamp(min=1e-4))


def train_vae(
    model: SimpleAutoencoder,
    train: Split,
    held: Split,
    cfg: VAEConfig,
    ctx: RunContext,
    generator: torch.Generator,
    visualize=None,
) -> SimpleAutoencoder:
    """Train the VAE for cfg.steps, fit its latent normalisation, and write its public state dict.
    `visualize(step, model)` is called every ctx.visualize_every steps."""
    perceptual = load_perceptual_loss(ctx.device) if cfg.perceptual_weight > 0 else None
    ctx.extra["perceptual_loss"] = perceptual is not None
    if perceptual is None:
        cfg = dataclasses.replace(cfg, perceptual_weight=0.0)
    x_all, y_all = train.x.to(ctx.device), train.y.to(ctx.device)  # the whole data set lives on the device
    shard = ctx.shard(len(y_all))

    def make_step(net, optimizer, scheduler):
        def step_fn(step: int) -> dict[str, torch.Tensor]:
            idx = shard[torch.randint(0, len(shard), (cfg.batch_size,), device=ctx.device, generator=generator)]
            x = augment(to_model_range(x_all[idx]), generator, cfg.augment_shift)
            weights = loss_weights(step, cfg)
            return train_step(net, optimizer, scheduler, x, y_all[idx], weights, perceptual, cfg, ctx, generator)

        return step_fn

    stage = Stage("VAE", model, cfg, VAE_STATE_FILE, "metrics_vae.jsonl")
    step = train_stage(
        stage,
        ctx,
        generator,
        make_step,
        lambda step: {"phase": phase_name(step - 1, cfg)},
        visualize and (lambda step: visualize(step, model)),
    )
    fit_latent_normalization(model, train)
    scores = evaluate(model, held)
    stage.metrics.write({"step": step, "eval": scores})
    log.info("VAE: held-out PSNR %.2f dB, latent-classifier accuracy %.3f", scores["psnr"], scores["latent_acc"])
    if ctx.is_main:
        save_weights(model, ctx.out_dir / AUTOENCODER_FILE)
    stage.checkpoint(step, done=True)
    return model
