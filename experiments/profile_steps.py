"""Profile one training step of each stage as the cpu preset runs it, and print the top operators by self CPU time.

    python experiments/profile_steps.py [--steps 5] [--rows 12]

Uses benchmark.py's step functions (all loss terms, backward, AdamW; bf16 autocast where the CPU has native bf16):
the VAE at batch 64, the decoder stage at batch 64, the denoiser at batch 128, on random data, after one warm-up
step; torch.profiler's table of operators sorted by self CPU time, summed over the profiled steps.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.timing import decoder_step_fn, diffusion_step_fn, vae_step_fn  # noqa: E402
from training.context import native_bf16  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rows", type=int, default=12)
    args = parser.parse_args()
    device = torch.device("cpu")
    amp = native_bf16(device)
    stages = {
        "VAE step, batch 64": vae_step_fn(device, 64, None, amp),
        "decoder-stage step, batch 64": decoder_step_fn(device, 64, amp),
        "denoiser step, batch 128": diffusion_step_fn(device, 128, False, amp),
    }
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, bf16 autocast {amp}")
    for name, step in stages.items():
        step()  # warm-up
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.steps):
                step()
        total = sum(e.self_cpu_time_total for e in prof.key_averages()) / args.steps / 1000
        print(f"\n## {name}: {total:.0f} ms of operator self time a step ({args.steps} steps)\n")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
