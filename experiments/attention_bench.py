"""The denoiser's attention as two matrix multiplies against F.scaled_dot_product_attention, on this machine.

python experiments/attention_bench.py [--threads N] [--rounds R]

Times, in one process and interleaved (so that a busy shared machine slows both alike), one training step of the
denoiser (batch 128, bf16 autocast where the CPU has it, the training stages' fused AdamW) and one guided sampling
call of it (batch 2 x 100, no gradients, fp32 as the sampler runs), with each attention form. Prints the median
milliseconds of each.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import models.layers  # noqa: E402
from models import ConditionalDenoiseDiffusion, ConditionalUNet  # noqa: E402
from training.context import native_bf16  # noqa: E402
from training.optim import make_optimizer  # noqa: E402

FORMS = {"matmuls": models.layers.attention, "sdpa": F.scaled_dot_product_attention}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    device = torch.device("cpu")
    amp = native_bf16(device)
    torch.manual_seed(0)
    diffusion = ConditionalDenoiseDiffusion(ConditionalUNet(), 1000, device)
    opt = make_optimizer(diffusion.model, 1e-4, 0.0, device)
    z0, y = torch.randn(128, 256), torch.randint(0, 2, (128,))
    z_t, t, y_s = torch.randn(100, 256), torch.full((100,), 500), torch.randint(0, 2, (100,))

    def train_step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss = diffusion.loss(z0, y)[0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def sample_call() -> None:
        with torch.no_grad():  # as generate_class_samples runs it: fp32, no autocast
            diffusion.predict_eps(z_t, t, y_s, 8.0)

    times = {(form, what): [] for form in FORMS for what in ("train", "sample")}
    for _ in range(a.rounds):
        for form, fn in FORMS.items():
            models.layers.attention = fn
            for what, call in (("train", train_step), ("sample", sample_call)):
                call()  # warm-up
                start = time.perf_counter()
                for _ in range(5):
                    call()
                times[(form, what)].append((time.perf_counter() - start) / 5 * 1000)
    print(f"bf16 autocast: {amp}, threads: {a.threads}, rounds: {a.rounds}")
    for (form, what), ms in times.items():
        print(f"{what:6s} {form:8s} median {statistics.median(ms):7.1f} ms  (all: {', '.join(f'{m:.0f}' for m in ms)})")


if __name__ == "__main__":
    main()
