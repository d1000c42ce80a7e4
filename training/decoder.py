"""The decoder stage: adversarial fine-tuning of the VAE's decoder on its frozen latent space.

A decoder trained on a pixel loss alone draws the average of the images its latent allows (soft fur, no grain); more
pixel-loss training raises PSNR and sharpens nothing. With the encoder, classifier, centres and latent statistics
frozen, the latent space stays bit-identical, so the denoiser trained on it needs no retraining, and the decoder alone
learns to draw the detail that real images have, from a PatchGAN's hinge loss and, beside the pixel loss, the match
of the PatchGAN's features of each reconstruction to those of its original. This is how the released Stable Diffusion
decoders were improved (decoder-only fine-tuning on a fixed latent space; Rombach et al. 2022), with the adaptive
weight of Esser et al. 2021 and the feature matching of Wang et al. 2018.
"""

from __future__ import annotations

import hashlib
import logging

import torch
import torch.nn.functional as F

from checkpoints import AUTOENCODER_FILE, DECODER_STATE_FILE, save_weights
from data import Split, to_model_range
from errors import UserInputError
from models.discriminator import PatchDiscriminator, feature_matching_loss, generator_loss, hinge_d_loss
from models.vae import SimpleAutoencoder
from training.config import DecoderConfig
from training.context import RunContext
from training.diffusion import encode_dataset
from training.loop import Stage, train_stage
from training.optim import EMA, warmup_constant
from training.vae import evaluate

log = logging.getLogger(__name__)

ADAPTIVE_WEIGHT_MAX = 1e4  # the adaptive weight's clamp (Esser et al. 2021)


class Adversary:
    """The PatchGAN discriminator (models/discriminator.py) with its optimizer: the generator's hinge term with its
    adaptive weight, and the discriminator's own step. Checkpointed with the stage (state_dict)."""

    def __init__(self, discriminator: PatchDiscriminator, lr: float, ctx: RunContext):
        self.discriminator = discriminator
        self.net = ctx.wrap(discriminator)  # DistributedDataParallel under torchrun
        self.optimizer = torch.optim.AdamW(discriminator.parameters(), lr=lr, betas=(0.5, 0.9), weight_decay=0.0)

    def output_gradient(
        self, x_hat: torch.Tensor, x: torch.Tensor, pixel: torch.Tensor, cfg: DecoderConfig
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The gradient at the decoder's output x_hat of rec + cfg.adversarial_weight * w * g, where rec = pixel +
        cfg.feature_matching_weight * fm (fm: the discriminator's features of x_hat against those of its original x),
        g = -mean D(x_hat), and w the adaptive weight (Esser et al. 2021: the ratio of rec's and g's gradient norms,
        here taken at x_hat, held constant); and the losses fm, g and w. `x_hat.backward(gradient)` then gives the
        decoder the gradient of that total in one backward pass through the decoder alone: the discriminator's
        parameters, which this step does not update, get no gradient, and the discriminator is run without its DDP
        wrapper (only its input gradient is needed)."""
        *fake, logits = self.discriminator.features(x_hat)
        with torch.no_grad():
            real = self.discriminator.features(x)[:-1]
        fm = feature_matching_loss(fake, real)
        g_loss = generator_loss(logits)
        rec_grad = torch.autograd.grad(pixel + cfg.feature_matching_weight * fm, x_hat, retain_graph=True)[0]
        adv_grad = torch.autograd.grad(g_loss, x_hat, retain_graph=True)[0]
        weight = (rec_grad.float().norm() / (adv_grad.float().norm() + 1e-4)).clamp(max=ADAPTIVE_WEIGHT_MAX)
        gradient = rec_grad.float() + cfg.adversarial_weight * weight * adv_grad.float()
        losses = {"feature_matching": fm.detach(), "adversarial": g_loss.detach(), "adaptive_weight": weight.detach()}
        return gradient.to(x_hat.dtype), losses

    def step(self, x: torch.Tensor, x_hat: torch.Tensor, ctx: RunContext) -> torch.Tensor:
        """One discriminator step on real images and (detached) reconstructions, in one forward pass (its GroupNorm is
        per sample: the halves do not mix); returns its hinge loss."""
        with ctx.autocast():
            logits = self.net(torch.cat([x, x_hat.detach().to(x.dtype)]))
            loss = hinge_d_loss(*logits.chunk(2))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def state_dict(self) -> dict:
        return {"model": self.discriminator.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        theirs, ours = state["model"]["net.0.weight"].shape[0], self.discriminator.net[0].out_channels
        if theirs != ours:
            raise UserInputError(
                f"the interrupted decoder stage trained a discriminator of width {theirs}, not {ours}: resume it with "
                f"--decoder-discriminator-width {theirs}, or start the stage afresh with --no-resume"
            )
        self.discriminator.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])


def make_adversary(cfg: DecoderConfig, ctx: RunContext, generator: torch.Generator) -> Adversary:
    """The discriminator (initialised from its own seed, so the global RNG is left as it was) and its optimizer."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(generator.initial_seed() + 1)
        discriminator = PatchDiscriminator(width=cfg.discriminator_width).to(ctx.device)
    return Adversary(discriminator, cfg.discriminator_lr, ctx)


def latent_space_fingerprint(autoencoder: SimpleAutoencoder) -> str:
    """A hash of everything that defines the latent space (encoder weights, latent statistics): a decoder stage that
    finished on one latent space is not finished on another."""
    digest = hashlib.sha1()
    parts = {**autoencoder.encoder.state_dict(), "shift": autoencoder.latent_shift, "scale": autoencoder.latent_scale}
    for name, tensor in sorted(parts.items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class LatentSpace:
    """The fingerprint of the latent space a decoder stage trains on, as a part of its training state: resuming on
    another latent space is refused."""

    def __init__(self, autoencoder: SimpleAutoencoder):
        self.fingerprint = latent_space_fingerprint(autoencoder)

    def state_dict(self) -> dict:
        return {"fingerprint": self.fingerprint}

    def load_state_dict(self, state: dict) -> None:
        if state["fingerprint"] != self.fingerprint:
            raise UserInputError(
                "the interrupted decoder stage was trained on another latent space (another VAE): --no-resume"
            )


def train_step(net, decoder, optimizer, scheduler, ema, adversary, z, x, cfg, ctx) -> dict[str, torch.Tensor]:
    """One decoder step (pixel MSE + feature matching + adaptive-weighted hinge term), its EMA update, then one
    discriminator step; returns the unweighted losses and the total (tensors, no host sync). `net` is `decoder` as the
    loop wrapped it."""
    with ctx.autocast():
        x_hat = net(z)
        pixel = F.mse_loss(x_hat.float(), x)
        gradient, parts = adversary.output_gradient(x_hat, x, pixel, cfg)
    optimizer.zero_grad(set_to_none=True)
    x_hat.backward(gradient)
    torch.nn.utils.clip_grad_norm_(decoder.parameters(), cfg.grad_clip)
    optimizer.step()
    scheduler.step()
    ema.update(decoder)
    d_loss = adversary.step(x, x_hat, ctx)
    adversarial = cfg.adversarial_weight * parts["adaptive_weight"] * parts["adversarial"]
    total = pixel + cfg.feature_matching_weight * parts["feature_matching"] + adversarial  # what it descends (log)
    return {"total": total.detach(), "pixel": pixel.detach(), **parts, "discriminator": d_loss}


def train_decoder(
    autoencoder: SimpleAutoencoder, train: Split, held: Split, cfg: DecoderConfig, ctx: RunContext, generator
) -> SimpleAutoencoder:
    """Fine-tune `autoencoder.decoder` for cfg.steps on the frozen latent space, install its EMA weights, and write the
    public autoencoder file (encoder, classifier, centres and latent statistics unchanged)."""
    decoder = autoencoder.decoder  # the optimizer holds its parameters only; the latents are cached
    mu, logvar, _ = encode_dataset(autoencoder, train)  # the training images, then their mirrors (as the denoiser's)
    x_all = train.x.to(ctx.device)
    x_all = torch.cat([x_all, x_all.flip(3)])
    shape = (-1, autoencoder.latent_channels, autoencoder.side, autoencoder.side)
    shard = ctx.shard(len(x_all))
    ema = EMA(decoder, cfg.ema_decay)
    adversary = make_adversary(cfg, ctx, generator)

    def make_step(net, optimizer, scheduler):
        def step_fn(step: int) -> dict[str, torch.Tensor]:
            idx = shard[torch.randint(0, len(shard), (cfg.batch_size,), device=ctx.device, generator=generator)]
            z = autoencoder.reparameterize(mu[idx], logvar[idx], generator).view(shape)  # z ~ q(z|x), as sampled
            x = to_model_range(x_all[idx])
            return train_step(net, decoder, optimizer, scheduler, ema, adversary, z, x, cfg, ctx)

        return step_fn

    extra = {"ema": ema, "discriminator": adversary, "latent_space": LatentSpace(autoencoder)}
    stage = Stage("Decoder", decoder, cfg, DECODER_STATE_FILE, "metrics_decoder.jsonl", extra, warmup_constant)
    step = train_stage(stage, ctx, generator, make_step)
    stage.checkpoint(step, done=True)  # with the raw weights, before they are replaced by the EMA's
    decoder.load_state_dict(ema.model.state_dict())
    autoencoder.eval()
    scores = evaluate(autoencoder, held)
    stage.metrics.write({"step": step, "eval": scores})
    log.info("decoder: held-out PSNR %.2f dB after fine-tuning", scores["psnr"])
    if ctx.is_main:
        save_weights(autoencoder, ctx.out_dir / AUTOENCODER_FILE)
    return autoencoder
