"""Calibration for `--time-budget`: a few steps of each stage that will train, timed on this machine at the stage's
batch, precision and compile mode (on random data: a step costs the same whatever it holds), and the encoder and one
batch of guided samples; training/budget.py plans the run from what this measures."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from models import ConditionalDenoiseDiffusion, ConditionalUNet, SimpleAutoencoder, generate_class_samples
from models.compiled import compile_mode
from training.loop import clock
from training.perceptual import load_perceptual_loss
from training.timing import Variant, decoder_step_fn, diffusion_step_fn, vae_step_fn

WARMUP_STEPS, TIMED_STEPS = 2, 5  # calibration steps of each stage: discarded, then timed
WARMUP_SAMPLER_STEPS = 2  # the figures' calibration: a batch of this many sampler steps, then one batch timed
# Measured on the cpu preset (2-core EPYC, 2026-12-06; docs/time_budget.md): the stages' steps in the real loop
# (data, EMA, logging, checkpoints) took 1.07x (VAE), 1.09x (decoder stage) and 1.24x (denoiser) the calibrated step;
# counting 1.15x, the stages spent 27 s beyond their planned steps (encoding, evaluation, saving): about 4
# training-set-sized encoder passes
LOOP_OVERHEAD = 1.15
ENCODER_PASSES = 4
# the figures' cost in guided sampling batches of 64 (cpu preset, 2-core EPYC, two budgeted runs: 26 s and 21 s, 4.4
# and 3.9 of the batches their calibration timed)
FIGURE_BATCHES = 4


@dataclass
class Speeds:
    """What calibration measured: seconds per step of each stage that trains, the one-off cost of each stage's first
    step beyond a steady one (compilation, CUDA graphs, allocator warm-up), and the run's other work in seconds."""

    step_seconds: dict[str, float]
    first_step_extra: dict[str, float]
    encoding_seconds: float
    figures_seconds: float
    calibration_seconds: float


def calibrate(cfg: dict, ctx, stages: tuple[str, ...], n_images: int, figures: bool) -> Speeds:
    """Time each of `stages` at its batch, precision and compile mode on this machine, the encoder over `n_images`
    ENCODER_PASSES times, and (with `figures`) the figures as FIGURE_BATCHES guided sampling batches of 64 (one batch is
    timed: at seconds a batch, the steps' warm-up and repeats would make the figures most of the calibration)."""

    start, device, step_s, extra = time.perf_counter(), ctx.device, {}, {}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):  # the run's RNG stays untouched
        for stage in stages:
            c = cfg[stage]
            mode = compile_mode(c.compile, device)
            variant = Variant(compiled=mode if mode != "off" else False)
            if stage == "vae":
                vgg = load_perceptual_loss(device) if c.perceptual_weight > 0 else None
                step = vae_step_fn(device, c.batch_size, vgg, ctx.amp, variant)
            elif stage == "decoder":
                step = decoder_step_fn(device, c.batch_size, ctx.amp, variant, c.discriminator_width)
            else:
                step = diffusion_step_fn(device, c.batch_size, False, ctx.amp, variant)
            if mode == "reduce-overhead":  # as the loop runs it: every step a new CUDA-graph iteration
                step = graph_step(step)
            steady, extra[stage] = time_steps(step, device)
            step_s[stage] = LOOP_OVERHEAD * steady
        ae = SimpleAutoencoder().to(device).eval()
        x = torch.rand(64, 3, 32, 32, device=device) * 2 - 1
        with torch.no_grad():
            encode_s = time_steps(lambda: ae.encode(x), device)[0] / 64
        sample_s = 0.0
        if figures:  # one batch, timed once after a short one of the same shapes (a batch costs seconds, a step not)
            diffusion = ConditionalDenoiseDiffusion(ConditionalUNet().to(device).eval(), device=device)
            options = cfg["sample"].options()
            draw = lambda opts: generate_class_samples(ae, diffusion, 0, 64, options=opts, seed=0)  # noqa: E731
            draw(options.replace(steps=WARMUP_SAMPLER_STEPS))
            began = clock(device)
            draw(options)
            sample_s = clock(device) - began
    return Speeds(
        step_seconds=step_s,
        first_step_extra=extra,
        encoding_seconds=ENCODER_PASSES * n_images * encode_s,
        figures_seconds=FIGURE_BATCHES * sample_s,
        calibration_seconds=time.perf_counter() - start,
    )


def graph_step(step):
    """`step` preceded by the mark that starts a CUDA-graph iteration (what training/loop.py's graph_steps does)."""

    def marked():
        torch.compiler.cudagraph_mark_step_begin()
        step()

    return marked


def time_steps(step, device: torch.device) -> tuple[float, float]:
    """(seconds of a steady step, the first call's extra seconds) of `step()`: WARMUP_STEPS discarded after the first,
    then TIMED_STEPS timed."""
    start = clock(device)
    step()
    first = clock(device) - start
    for _ in range(WARMUP_STEPS):
        step()
    start = clock(device)
    for _ in range(TIMED_STEPS):
        step()
    steady = (clock(device) - start) / TIMED_STEPS
    return steady, max(0.0, first - steady)
