"""Speed and memory of every stage on this machine, against re-implementations of the original's costs.

    python benchmark.py                       # CPU or GPU, whatever --device auto finds
    python benchmark.py --quick               # fewer repetitions (a rough number in a minute)
    python benchmark.py --preset smoke --data-dir DIR   # also time each stage of that preset end to end

Measures, on the chosen device: VAE training images/s (with and without the VGG16 perceptual term;
its cost does not depend on the weights, so random ones are used where ImageNet's cannot be had), the decoder stage's
images/s (decoder, discriminator and their two AdamW steps),
diffusion training latents/s on cached latents against the original's re-encoding of every image at
every step, and sampling images/s with DDIM-50 + guidance against 1000 DDPM steps; peak memory.
Where bf16 autocast is on (native bf16: CUDA, or a CPU with AVX512-BF16/AMX), training is also timed in fp32.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from models import ConditionalDenoiseDiffusion, ConditionalUNet, SimpleAutoencoder, generate_class_samples
from training.config import DecoderConfig
from training.context import native_bf16
from training.perceptual import VGGPerceptualLoss
from training.run import resolve_device
from training.timing import decoder_step_fn, diffusion_step_fn, rate, vae_step_fn


def machine() -> dict:
    """What the numbers were measured on."""
    cpu = (
        next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor(),
        )
        if Path("/proc/cpuinfo").exists()
        else platform.processor()
    )
    return {
        "cpu": cpu,
        "cores": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def sampling_rate(device, n: int, **kwargs) -> float:
    """Images per second of generate_class_samples (latent sampling and decoding)."""
    ae, unet = SimpleAutoencoder().to(device), ConditionalUNet().to(device)
    diffusion = ConditionalDenoiseDiffusion(unet, 1000, device)
    return rate(lambda: generate_class_samples(ae, diffusion, 0, n, seed=0, batch_size=n, **kwargs), n, 1, device)


def preset_stage_times(preset: str, data_dir: str, device: str) -> dict:
    """Run `main.py --preset PRESET` in a temporary folder and return its recorded stage wall times."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                str(Path(__file__).with_name("main.py")),
                "--preset",
                preset,
                "--data-dir",
                data_dir,
                "--output-dir",
                tmp,
                "--device",
                device,
            ],
            check=True,
            capture_output=True,
        )
        facts = json.loads((Path(tmp) / "config.json").read_text())["run_facts"]
        return {
            **{k: v for k, v in facts.items() if k.endswith("_seconds")},
            "total_seconds": round(time.perf_counter() - start, 1),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and samples")
    parser.add_argument("--preset", help="also time each stage of this preset (needs --data-dir)")
    parser.add_argument("--data-dir", help="image folder for --preset")
    parser.add_argument("--out", help="also write the results as JSON here")
    args = parser.parse_args()
    device = resolve_device(args.device)
    amp = native_bf16(device)
    big = device.type == "cuda"
    reps = 3 if args.quick else (50 if big else 8)
    vae_b, diff_b, n_fast, n_slow = (1024, 2048, 1000, 1000) if big else (64, 128, 100, 20 if args.quick else 100)
    dec_b = DecoderConfig().batch_size if big else 64  # the default preset's decoder batch on a GPU, the cpu one's
    vgg = VGGPerceptualLoss(__import__("torchvision").models.vgg16().features).to(device)
    results = {
        "machine": machine(),
        "device": str(device),
        "amp_bf16": amp,
        "settings": {
            "vae_batch": vae_b,
            "decoder_batch": dec_b,
            "diffusion_batch": diff_b,
            "fast_samplers": "the default, heun 12 noise levels (23 network calls) with classifier-free guidance 3 (2 "
            "calls each) from t/T = 0.1 up; ddim 50 steps with the same guidance",
            "slow_sampler": "ddpm 1000 steps, no guidance",
            "repeats": reps,
        },
    }
    r = results["rates"] = {}
    r["vae_train_images_per_s"] = rate(vae_step_fn(device, vae_b, None, amp), vae_b, reps, device)
    r["vae_train_with_vgg_images_per_s"] = rate(vae_step_fn(device, vae_b, vgg, amp), vae_b, reps, device)
    r["decoder_stage_images_per_s"] = rate(decoder_step_fn(device, dec_b, amp), dec_b, reps, device)
    r["diffusion_train_latents_per_s"] = rate(diffusion_step_fn(device, diff_b, False, amp), diff_b, reps, device)
    r["diffusion_train_reencoding_latents_per_s"] = rate(
        diffusion_step_fn(device, diff_b, True, amp), diff_b, reps, device
    )
    if amp:  # what bf16 autocast buys on this device
        r["vae_train_fp32_images_per_s"] = rate(vae_step_fn(device, vae_b, None, False), vae_b, reps, device)
        r["diffusion_train_fp32_latents_per_s"] = rate(
            diffusion_step_fn(device, diff_b, False, False), diff_b, reps, device
        )
    r["sample_heun18_cfg_images_per_s"] = sampling_rate(device, n_fast)  # SamplingOptions' defaults
    r["sample_ddim50_cfg_images_per_s"] = sampling_rate(device, n_fast, sampler="ddim", steps=50)
    r["sample_ddpm1000_images_per_s"] = sampling_rate(device, n_slow, sampler="ddpm", steps=1000, guidance_scale=1.0)
    results["speedups"] = {
        "diffusion_training_cached_vs_reencoding": r["diffusion_train_latents_per_s"]
        / r["diffusion_train_reencoding_latents_per_s"],
        "sampling_heun18_vs_ddpm1000": r["sample_heun18_cfg_images_per_s"] / r["sample_ddpm1000_images_per_s"],
    }
    results["peak_memory"] = {
        "cpu_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "cuda_max_allocated_mib": torch.cuda.max_memory_allocated() / 2**20 if big else None,
    }
    if args.preset:
        results["preset"] = {args.preset: preset_stage_times(args.preset, args.data_dir, args.device)}
    print(json.dumps(results, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
