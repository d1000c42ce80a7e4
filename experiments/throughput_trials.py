"""The CPU throughput levers of a training step, each against the stage as it runs today, interleaved in one process.

    python experiments/throughput_trials.py [--rounds 3] [--steps 6]
        [--stage denoiser|vae|decoder|capacity|conv|precision|all]

Each variant is one change (training/timing.py's `Variant`) to the step that `benchmark.py` times (bf16 autocast where
the CPU has native bf16, fused AdamW, batch 128 for the denoiser and 64 for the VAE and the decoder stage): fp32,
channels_last, torch.compile (inductor; its compilation is excluded, it runs in the warm-up), both of those
together, the foreach AdamW instead of the fused one, one thread, other batch sizes and, for the denoiser, narrower
networks; (`--stage capacity`) the decoder stage's step with larger decoders and other PatchGAN widths; and
(`--stage conv`) every 3x3 convolution of the denoiser, grouped by grid, forward and backward through oneDNN against
two matrix-multiply forms of it; (`--stage precision`) the same convolutions in fp32 and in bf16, NCHW and
channels_last (on a CPU with native bf16: what bf16 buys a convolution, against what it buys the step). Rounds
interleave the variants, so a machine that slows down mid-run slows them all; the table gives the median rate over
rounds and its ratio to today's step (the first row).
Numbers from one run only compare within it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.timing import Variant, decoder_step_fn, diffusion_step_fn, vae_step_fn  # noqa: E402
from models import ConditionalUNet, SimpleAutoencoder  # noqa: E402
from training.context import native_bf16  # noqa: E402

CPU = torch.device("cpu")


def denoiser_step(batch=128, amp=True, **variant):
    """benchmark.py's denoiser step (cached latents) with one Variant: (step, latents a step)."""
    return diffusion_step_fn(CPU, batch, False, amp, Variant(**variant)), batch


def vae_step(batch=64, amp=True, **variant):
    """benchmark.py's VAE step without the VGG term."""
    return vae_step_fn(CPU, batch, None, amp, Variant(**variant)), batch


def decoder_step(batch=64, amp=True, discriminator_width=None, **variant):
    """benchmark.py's decoder-stage step."""
    return decoder_step_fn(CPU, batch, amp, Variant(**variant), discriminator_width), batch


def parameters(module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


def single_threaded(step, items: int):
    """The step on one thread (the process's thread count restored after it), and its items."""
    threads = torch.get_num_threads()

    def run():
        torch.set_num_threads(1)
        try:
            step()
        finally:
            torch.set_num_threads(threads)

    return run, items


def widths(build, amp: bool) -> dict:
    """Narrower denoisers: whether fewer parameters buy more steps a second."""
    out = {}
    for scale in (0.75, 0.5):
        dims = [int(d * scale) for d in (256, 512, 1024, 512, 256)]
        params = parameters(ConditionalUNet(hidden_dims=dims))
        out[f"width {scale}x ({params:.1f}M parameters)"] = lambda dims=dims: build(amp=amp, hidden_dims=dims)
    return out


def variants(build, batches: tuple[int, ...], amp: bool) -> dict:
    out = {"today": lambda: build(amp=amp)}
    if amp:
        out["fp32"] = lambda: build(amp=False)
    out["channels_last"] = lambda: build(amp=amp, channels_last=True)
    out["torch.compile"] = lambda: build(amp=amp, compiled=True)
    out["torch.compile + channels_last"] = lambda: build(amp=amp, compiled=True, channels_last=True)
    out["foreach AdamW"] = lambda: build(amp=amp, foreach=True)
    out["1 thread"] = lambda: single_threaded(*build(amp=amp))
    for b in batches:
        out[f"batch {b}"] = lambda b=b: build(batch=b, amp=amp)
    return out


def capacity(build, amp: bool) -> dict:
    """Larger decoders , each in the decoder stage's step: cost per image against today's."""
    archs = {
        "32/64/128, 1 block a level (today)": {},
        "32/64/128, 2 blocks a level": {"blocks_per_level": 2},
        "48/96/192, 1 block a level": {"channels": (48, 96, 192)},
        "64/128/256, 1 block a level": {"channels": (64, 128, 256)},
    }
    out = {}
    for label, arch in archs.items():
        params = parameters(SimpleAutoencoder(**arch).decoder)
        out[f"{label}, {params:.2f}M"] = lambda arch=arch: build(amp=amp, **arch)
    for width in (64, 16):  # today's PatchGAN is 32 wide
        out[f"today's decoder, PatchGAN {width} wide"] = lambda w=width: build(amp=amp, discriminator_width=w)
    return out


def conv_shapes(batch: int) -> list[tuple[int, int, int]]:
    """(in channels, out channels, grid side) of every stride-1 3x3 convolution in one forward pass of the denoiser."""
    shapes = []

    def record(module, inputs, output):
        if module.kernel_size == (3, 3) and module.stride == (1, 1):
            shapes.append((module.in_channels, module.out_channels, inputs[0].shape[-1]))

    unet = ConditionalUNet()
    hooks = [m.register_forward_hook(record) for m in unet.modules() if isinstance(m, torch.nn.Conv2d)]
    labels = torch.zeros(batch, dtype=torch.long)
    with torch.no_grad():
        unet(torch.randn(batch, unet.latent_dim), labels, labels)
    for hook in hooks:
        hook.remove()
    return shapes


def im2col_conv(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """A padded 3x3 convolution as unfold + one matrix multiply."""
    n, _, side, _ = x.shape
    return (w.flatten(1) @ F.unfold(x, 3, padding=1) + b[:, None]).view(n, len(w), side, side)


def dense_conv(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """A padded 3x3 convolution on a side x side grid as one dense matrix multiply over the whole grid: the kernel's
    taps that fall inside the grid, scattered into a (out x positions, in x positions) matrix. It does only the
    multiply-adds that touch the image (a 2x2 grid: 4 of the 9 taps), but its matrix grows with the grid squared."""
    n, c, side, _ = x.shape
    pos = torch.arange(side * side)
    di = pos[None, :] // side - pos[:, None] // side  # (out position, in position)
    dj = pos[None, :] % side - pos[:, None] % side
    inside = (di.abs() <= 1) & (dj.abs() <= 1)
    taps = w.flatten(2)[:, :, ((di + 1) * 3 + dj + 1).clamp(0, 8)] * inside  # (out, in, out pos, in pos)
    dense = taps.permute(0, 2, 1, 3).reshape(len(w) * side * side, c * side * side)
    return (x.flatten(1) @ dense.t()).view(n, len(w), side, side) + b[:, None, None]


CONV_FORMS = {"oneDNN (F.conv2d)": lambda x, w, b: F.conv2d(x, w, b, padding=1), "im2col + matmul": im2col_conv}
CONV_FORMS["dense matmul"] = dense_conv


def conv_seconds(form, batch, c_in, c_out, side, rounds, steps, dtype=torch.float32, layout=torch.contiguous_format):
    """Median seconds of one forward + backward of `form` on a (batch, c_in, side, side) input, after a warm-up."""
    x = torch.randn(batch, c_in, side, side, dtype=dtype).to(memory_format=layout).requires_grad_()
    w = (torch.randn(c_out, c_in, 3, 3) * 0.05).to(dtype).to(memory_format=layout).requires_grad_()
    b = torch.zeros(c_out, dtype=dtype, requires_grad=True)
    form(x, w, b).sum().backward()  # warm-up
    per_round = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(steps):
            form(x, w, b).sum().backward()
        per_round.append((time.perf_counter() - start) / steps)
    return statistics.median(per_round)


PRECISIONS = {
    "fp32": (torch.float32, torch.contiguous_format),
    "bf16": (torch.bfloat16, torch.contiguous_format),
    "bf16 channels_last": (torch.bfloat16, torch.channels_last),
}


def precision_trials(batch: int, rounds: int, steps: int) -> None:
    """The denoiser's 3x3 convolutions by grid through oneDNN, forward + backward, in fp32 and in bf16 (NCHW and
    channels_last): what bf16 buys the convolutions on this CPU, to set against what it buys the whole step."""
    shapes = conv_shapes(batch)
    print(f"\n## the denoiser's 3x3 convolutions by precision, forward + backward, batch {batch}")
    print("(ms a step, median; GFLOP/s counts the 3 multiplies of forward and backward over every tap)\n")
    print(f"| grid | convolutions | {' | '.join(PRECISIONS)} |")
    print("|---|---|" + "---|" * len(PRECISIONS))
    conv = CONV_FORMS["oneDNN (F.conv2d)"]
    for side in sorted({s for _, _, s in shapes}, reverse=True):
        here = [s for s in shapes if s[2] == side]
        flops = sum(3 * 2 * batch * c_in * c_out * 9 * side * side for c_in, c_out, _ in here)
        cells = []
        for dtype, layout in PRECISIONS.values():
            total = sum(
                conv_seconds(conv, batch, c_in, c_out, side, rounds, steps, dtype, layout) for c_in, c_out, _ in here
            )
            cells.append(f"{1000 * total:.0f} ({flops / total / 1e9:.0f} GFLOP/s)")
        print(f"| {side}x{side} | {len(here)} | {' | '.join(cells)} |", flush=True)


def conv_trials(batch: int, rounds: int, steps: int) -> None:
    """Each form's forward + backward time, summed over the denoiser's convolutions on each grid (ms a step)."""
    shapes = conv_shapes(batch)
    print(f"\n## the denoiser's 3x3 convolutions by grid, forward + backward, batch {batch} (ms a step, median)\n")
    print(f"| grid | convolutions | {' | '.join(CONV_FORMS)} |")
    print("|---|---|" + "---|" * len(CONV_FORMS))
    for side in sorted({s for _, _, s in shapes}, reverse=True):
        here = [s for s in shapes if s[2] == side]
        times = {}
        for label, form in CONV_FORMS.items():
            if label == "dense matmul" and side > 4:  # its matrix grows with the grid squared: 8x8 is 64x a 1x1's
                continue
            total = sum(conv_seconds(form, batch, c_in, c_out, side, rounds, steps) for c_in, c_out, _ in here)
            times[label] = f"{1000 * total:.0f}"
        cells = " | ".join(times.get(label, "-") for label in CONV_FORMS)
        print(f"| {side}x{side} | {len(here)} | {cells} |", flush=True)


def run(name: str, table: dict, rounds: int, steps: int) -> None:
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
            start = time.perf_counter()
            for _ in range(steps):
                fn()
            rates[label].append(items * steps / (time.perf_counter() - start))
    base = statistics.median(next(iter(rates.values())))  # the first row is today's step
    print(f"\n## {name} ({torch.get_num_threads()} threads, {rounds} rounds of {steps} steps)\n")
    print("| variant | items/s (median) | x today (first row) | rounds |")
    print("|---|---|---|---|")
    for label, r in rates.items():
        med = statistics.median(r)
        print(f"| {label} | {med:.0f} | {med / base:.2f} | {' / '.join(f'{v:.0f}' for v in r)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6)
    stages = ("denoiser", "vae", "decoder", "capacity", "conv", "precision", "all")
    parser.add_argument("--stage", choices=stages, default="all")
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
    if args.stage in ("conv", "all"):
        conv_trials(128, args.rounds, args.steps)
    if args.stage in ("precision", "all"):
        precision_trials(128, args.rounds, args.steps)


if __name__ == "__main__":
    main()
