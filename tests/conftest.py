"""Shared fixtures: tiny synthetic image folders and one tiny trained run reused by the end-to-end tests."""

from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = "1"  # before torch starts: this process and every main.py it runs use one thread

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

torch.set_num_threads(1)  # a test never waits on a core that another process holds

ROOT = Path(__file__).resolve().parents[1]

# Command-line flags of a run that trains both stages on the CPU in seconds.
TINY_RUN = [
    "--preset",
    "smoke",
    "--device",
    "cpu",
    "--threads",
    "1",
    "--vae-steps",
    "12",
    "--vae-batch-size",
    "16",
    "--diffusion-steps",
    "12",
    "--diffusion-batch-size",
    "32",
    "--log-every",
    "4",
    "--checkpoint-every",
    "6",
    "--num-samples",
    "4",
    "--sample-steps",
    "4",
    "--diffusion-guide",  # the tiny run also trains and stores the autoguidance network
]


def make_images(folder: Path, n: int, seed: int, color: int) -> None:
    """Write n random 32x32 PNGs whose dominant channel is `color`, so the two classes differ."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = rng.integers(0, 90, size=(32, 32, 3), dtype=np.uint8)
        img[..., color] += 160
        Image.fromarray(img).save(folder / f"{i:03d}.png")


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    """A data dir with cat/ (reddish) and dog/ (bluish) folders of 24 images each."""
    root = tmp_path_factory.mktemp("images")
    make_images(root / "cat", 24, 0, color=0)
    make_images(root / "dog", 24, 1, color=2)
    return root


def run_main(*args: str, cwd: Path = ROOT, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run `python main.py ARGS` in a subprocess and return it (stdout and stderr captured as text)."""
    return subprocess.run(
        [sys.executable, str(ROOT / "main.py"), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="session")
def trained_run(image_folder, tmp_path_factory) -> Path:
    """A folder holding `cifar_cat_dog_conditional_improved/` from a tiny end-to-end training run."""
    workdir = tmp_path_factory.mktemp("run")
    out = workdir / "cifar_cat_dog_conditional_improved"
    proc = run_main(*TINY_RUN, "--data-dir", str(image_folder), "--output-dir", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir


@pytest.fixture
def randomize():
    """Return a function that gives every parameter of a module random values (zero-initialised layers hide bugs)."""

    def apply(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in module.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
        return module

    return apply


def same_state(a: dict, b: dict) -> bool:
    """Whether two state dicts hold the same keys, bit-identical tensors and equal extra state."""
    return a.keys() == b.keys() and all(
        torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k] for k in a
    )
