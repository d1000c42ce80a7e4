"""The CPU throughput levers of a training step, each against the stage as it runs today, interleaved in one process.

    python docs/throughput_trials.py [--rounds 3] [--steps 6] [--stage denoiser|vae|decoder|capacity|all]

Each variant is one change to the step that `benchmark.py` times (bf16 autocast where the CPU has native bf16, fused
AdamW, batch 128 for the denoiser and 64 for the VAE and the decoder stage): fp32, channels_last, torch.compile
(inductor; its compilation is excluded, it runs in the warm-up), the foreach AdamW instead of the fused one, one
thread, the two best together, and other batch sizes; and (`--stage capacity`) the decoder stage's step with larger
decoders. Rounds interleave the variants, so a machine that slows down mid-run slows them all; the table gives the
median rate over rounds and its ratio to today's step (the first row). Numbers from one run only compare within it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import ConditionalDenoiseDiffusion, ConditionalUNet, SimpleAutoencoder  # noqa: E402
from models.discriminator import PatchDiscriminator  # noqa: E402
from training.config import DecoderConfig, VAEConfig  # noqa: E402
from training.context import RunContext, native_bf16  # noqa: E402
from training.decoder import Adversary  # noqa: E402
from training.decoder import train_step as decoder_train_step  # noqa: E402
from training.optim import EMA, make_optimizer, warmup_cosine  # noqa: E402
from training.vae import loss_weights  # noqa: E402
from training.vae import train_step as vae_train_step  # noqa: E402

CPU = torch.device("cpu")


def optimizer(model, foreach: bool):
    if foreach:
        return torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.99), foreach=True)
    return make_optimizer(model, 1e-4, 0.0, CPU)


def denoiser_step(batch=128, amp=True, channels_last=False, compile_=False, foreach=False, **arch):
    unet = ConditionalUNet(**arch)
    if channels_last:
        unet = unet.to(memory_format=torch.channels_last)
    diffusion = ConditionalDenoiseDiffusion(unet, 1000, CPU)
    net = torch.compile(unet) if compile_ else unet
    opt = optimizer(unet, foreach)
    z, y = torch.randn(batch, 256), torch.randint(0, 2, (batch,))

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss, _, _ = diffusion.loss(z, y, model=net)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step, batch


def vae_step(batch=64, amp=True, channels_last=False, compile_=False, foreach=False):
    ae = SimpleAutoencoder()
    if channels_last:
        ae = ae.to(memory_format=torch.channels_last)
    opt = optimizer(ae, foreach)
    cfg = VAEConfig(steps=100, perceptual_weight=0.0)
    ctx = RunContext(CPU, Path("."), amp=amp)
    weights = loss_weights(90, cfg)
    x, y = torch.rand(batch, 3, 32, 32) * 2 - 1, torch.randint(0, 2, (batch,))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    net = torch.compile(ae) if compile_ else ae
    scheduler = warmup_cosine(opt, 1, 10**9)
    return (lambda: vae_train_step(net, opt, scheduler, x, y, weights, None, cfg, ctx, None)), batch


def decoder_step(batch=64, amp=True, channels_last=False, compile_=False, foreach=False, **arch):
    ae, cfg = SimpleAutoencoder(**arch), DecoderConfig()
    disc = PatchDiscriminator()
    if channels_last:
        ae, disc = ae.to(memory_format=torch.channels_last), disc.to(memory_format=torch.channels_last)
    ctx = RunContext(CPU, Path("."), amp=amp)
    opt = optimizer(ae.decoder, foreach)
    scheduler, ema = warmup_cosine(opt, 1, 10**9), EMA(ae.decoder, cfg.ema_decay)
    adversary = Adversary(disc, cfg.discriminator_lr, ctx)
    z, x = torch.randn(batch, 4, 8, 8), torch.rand(batch, 3, 32, 32) * 2 - 1
    net = torch.compile(ae.decoder) if compile_ else ae.decoder
    return (lambda: decoder_train_step(net, ae.decoder, opt, scheduler, ema, adversary, z, x, cfg, ctx)), batch


def widths(build, amp: bool) -> dict:
    """Narrower denoisers (issue 27's part 3 asks whether fewer parameters buy more steps a second)."""
    out = {}
    for scale in (0.75, 0.5):
        dims = [int(d * scale) for d in (256, 512, 1024, 512, 256)]
        params = sum(p.numel() for p in ConditionalUNet(hidden_dims=dims).parameters()) / 1e6
        out[f"width {scale}x ({params:.1f}M parameters)"] = lambda dims=dims: build(amp=amp, hidden_dims=dims)
    return out


def variants(build, batches: tuple[int, ...], amp: bool) -> dict:
    out = {"today": lambda: build(amp=amp)}
    if amp:
        out["fp32"] = lambda: build(amp=False)
    out["channels_last"] = lambda: build(amp=amp, channels_last=True)
    out["torch.compile"] = lambda: build(amp=amp, compile_=True)
    out["torch.compile + channels_last"] = lambda: build(amp=amp, compile_=True, channels_last=True)
    out["foreach AdamW"] = lambda: build(amp=amp, foreach=True)
    out["1 thread"] = lambda: build(amp=amp)  # the thread count is set around its timing
    for b in batches:
        out[f"batch {b}"] = lambda b=b: build(batch=b, amp=amp)
    return out


def capacity(build, amp: bool) -> dict:
    """Larger decoders (issue 26's part 3), each in the decoder stage's step: cost per image against today's."""
    archs = {
        "32/64/128, 1 block a level (today)": {},
        "32/64/128, 2 blocks a level": {"blocks_per_level": 2},
        "48/96/192, 1 block a level": {"channels": (48, 96, 192)},
        "64/128/256, 1 block a level": {"channels": (64, 128, 256)},
    }
    out = {}
    for label, arch in archs.items():
        params = sum(p.numel() for p in SimpleAutoencoder(**arch).decoder.parameters()) / 1e6
        out[f"{label}, {params:.2f}M"] = lambda arch=arch: build(amp=amp, **arch)
    return out


def run(name: str, table: dict, rounds: int, steps: int) -> None:
    threads = torch.get_num_threads()
    built = {}
    for label, make in table.items():
        fn, items = make()
        start = time.perf_counter()
        fn()
        fn()  # warm-up (and compilation)
        built[label] = (fn, items)
        print(f"  built {label} (warm-up {time.perf_counter() - start:.1f} s)", file=sys.stderr, flush=True)
    rates = {label: [] for label in built}
    for _ in range(rounds):
        for label, (fn, items) in built.items():
            torch.set_num_threads(1 if label == "1 thread" else threads)
            start = time.perf_counter()
            for _ in range(steps):
                fn()
            rates[label].append(items * steps / (time.perf_counter() - start))
        torch.set_num_threads(threads)
    base = statistics.median(next(iter(rates.values())))  # the first row is today's step
    print(f"\n## {name} ({threads} threads, {rounds} rounds of {steps} steps)\n")
    print("| variant | items/s (median) | x today (first row) | rounds |")
    print("|---|---|---|---|")
    for label, r in rates.items():
        med = statistics.median(r)
        print(f"| {label} | {med:.0f} | {med / base:.2f} | {' / '.join(f'{v:.0f}' for v in r)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--stage", choices=("denoiser", "vae", "decoder", "capacity", "all"), default="all")
    args = parser.parse_args()
    amp = native_bf16(CPU)
    print(f"torch {torch.__version__}, bf16 autocast (today's setting) {amp}")
    stages = {
        "denoiser": ("denoiser training step, latents/s", denoiser_step, (64, 256, 512)),
        "vae": ("VAE training step (no VGG), images/s", vae_step, (32, 128)),
        "decoder": ("decoder-stage step, images/s", decoder_step, (32, 128)),
    }
    for key, (name, build, batches) in stages.items():
        if args.stage in (key, "all"):
            extra = widths(build, amp) if key == "denoiser" else {}
            run(name, variants(build, batches, amp) | extra, args.rounds, args.steps)
    if args.stage in ("capacity", "all"):
        run("decoder-stage step by decoder size, images/s", capacity(decoder_step, amp), args.rounds, args.steps)


if __name__ == "__main__":
    main()
