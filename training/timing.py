"""The training step of each stage on random data at a given batch and precision, and how fast it runs: what
`benchmark.py` reports and what `--time-budget` measures before it plans a run (speed does not depend on the data)."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from models import ConditionalDenoiseDiffusion, ConditionalUNet, SimpleAutoencoder
from models.discriminator import PatchDiscriminator
from training.config import DecoderConfig, VAEConfig
from training.context import RunContext
from training.decoder import Adversary
from training.decoder import train_step as decoder_train_step
from training.optim import EMA, make_optimizer, warmup_constant, warmup_cosine
from training.perceptual import VGGPerceptualLoss
from training.vae import loss_weights, train_step


def rate(fn, items: int, repeats: int, device: torch.device) -> float:
    """Items per second of fn() after one warm-up call (synchronised on CUDA)."""
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return items * repeats / (time.perf_counter() - start)


class Variant:
    """One change to a benchmark step, for experiments/throughput_trials.py (the defaults are the stages' own step):
    channels_last memory format, torch.compile of the trained network, the foreach AdamW instead of the fused one,
    other constructor arguments of the network."""

    def __init__(self, channels_last: bool = False, compiled: bool | str = False, foreach: bool = False, **arch):
        self.channels_last, self.compiled, self.foreach, self.arch = channels_last, compiled, foreach, arch

    def place(self, tensor_or_module, device):
        """On `device`, in the variant's memory format (4-d tensors and modules; others as they are)."""
        if self.channels_last and (isinstance(tensor_or_module, torch.nn.Module) or tensor_or_module.dim() == 4):
            return tensor_or_module.to(device, memory_format=torch.channels_last)
        return tensor_or_module.to(device)

    def optimizer(self, model, lr: float, device) -> torch.optim.Optimizer:
        if self.foreach:
            return torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.99), foreach=True)
        return make_optimizer(model, lr, 0.0, device)

    def wrap(self, model):
        """The network as the step runs it: compiled in the variant's mode (True: torch.compile's default)."""
        if not self.compiled:
            return model
        return torch.compile(model, mode=self.compiled) if isinstance(self.compiled, str) else torch.compile(model)


TODAY = Variant()


def vae_step_fn(device, batch: int, perceptual: VGGPerceptualLoss | None, amp: bool, variant: Variant = TODAY):
    """One full VAE training step as the stage runs it in its last phase (every loss term, backward, the training
    stages' AdamW) on random images."""
    ae = variant.place(SimpleAutoencoder(**variant.arch), device)
    opt = variant.optimizer(ae, 1e-4, device)
    cfg = VAEConfig(steps=100, perceptual_weight=0.1)
    ctx = RunContext(device, Path("."), amp=amp)
    weights = loss_weights(90, cfg)  # fine-tuning: every term on
    x = variant.place(torch.rand(batch, 3, 32, 32) * 2 - 1, device)
    y, net = torch.randint(0, 2, (batch,), device=device), variant.wrap(ae)
    scheduler = warmup_cosine(opt, 1, 10**9)
    return lambda: train_step(net, opt, scheduler, x, y, weights, perceptual, cfg, ctx, None)


def decoder_step_fn(device, batch: int, amp: bool, variant: Variant = TODAY, discriminator_width: int | None = None):
    """One decoder-stage step (decoder forward and backward with the adaptive-weighted hinge term, EMA, then the
    discriminator's step) on random latents and images; the PatchGAN as configured unless `discriminator_width`."""
    ae, cfg = variant.place(SimpleAutoencoder(**variant.arch), device), DecoderConfig()
    ctx = RunContext(device, Path("."), amp=amp)
    opt = variant.optimizer(ae.decoder, cfg.lr, device)
    scheduler, ema = warmup_constant(opt, 1, 10**9), EMA(ae.decoder, cfg.ema_decay)
    discriminator = PatchDiscriminator(width=discriminator_width or cfg.discriminator_width)
    adversary = Adversary(variant.place(discriminator, device), cfg.discriminator_lr, ctx)
    z = variant.place(torch.randn(batch, ae.latent_channels, ae.side, ae.side), device)
    x, net = variant.place(torch.rand(batch, 3, 32, 32) * 2 - 1, device), variant.wrap(ae.decoder)
    return lambda: decoder_train_step(net, ae.decoder, opt, scheduler, ema, adversary, z, x, cfg, ctx)


def diffusion_step_fn(device, batch: int, reencode: bool, amp: bool, variant: Variant = TODAY):
    """One diffusion training step on cached latents, or (the original's cost) after encoding the images again."""
    ae = SimpleAutoencoder().to(device).eval()
    unet = variant.place(ConditionalUNet(**variant.arch), device)
    diffusion, net = ConditionalDenoiseDiffusion(unet, 1000, device), variant.wrap(unet)
    opt = variant.optimizer(unet, 1e-4, device)
    x, y = torch.rand(batch, 3, 32, 32, device=device) * 2 - 1, torch.randint(0, 2, (batch,), device=device)
    mu, logvar = torch.randn(batch, 256, device=device), torch.zeros(batch, 256, device=device)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            if reencode:
                with torch.no_grad():
                    z = ae.reparameterize(*ae.encode(x))
            else:
                z = ae.reparameterize(mu, logvar)
            loss, _, _ = diffusion.loss(ae.normalize_latent(z), y, model=net)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step
