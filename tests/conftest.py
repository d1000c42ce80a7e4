"""Shared fixtures: tiny synthetic image folders and one tiny trained run reused by the end-to-end tests."""

from __future__ import annotations

import importlib.util
import os
import runpy
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ["OMP_NUM_THREADS"] = "1"  # before torch starts: this process and every main.py it runs use one thread
# No test may reach the network: netguard/sitecustomize.py refuses and records every connection to another host, in
# this process and in every Python process the suite starts (it is on their PYTHONPATH); pytest_sessionfinish fails
# the suite if any was tried.
NETGUARD = Path(__file__).resolve().parent / "netguard"
os.environ["TEST_NETWORK_LOG"] = tempfile.mkstemp(prefix="test-network-", suffix=".log")[1]
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(NETGUARD), os.environ.get("PYTHONPATH")) if p)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

runpy.run_path(str(NETGUARD / "sitecustomize.py"))  # the guard in this process too

torch.set_num_threads(1)  # a test never waits on a core that another process holds

ROOT = Path(__file__).resolve().parents[1]


def smoke_run(vae: tuple[int, int], diffusion: tuple[int, int], log_every: int, checkpoint_every: int) -> list[str]:
    """Flags of a smoke-preset run on one CPU thread: (steps, batch size) of each stage and the logging cadence."""
    stages = ("--vae-steps", "--vae-batch-size", "--diffusion-steps", "--diffusion-batch-size")
    flags = dict(zip(stages, (*vae, *diffusion)), **{"--log-every": log_every, "--checkpoint-every": checkpoint_every})
    return [
        "--preset",
        "smoke",
        "--device",
        "cpu",
        "--threads",
        "1",
        *(x for f, v in flags.items() for x in (f, str(v))),
    ]


# Command-line flags of a run that trains both stages on the CPU in seconds.
TINY_RUN = [
    *smoke_run(vae=(12, 16), diffusion=(12, 32), log_every=4, checkpoint_every=6),
    "--num-samples",
    "4",
    "--sample-steps",
    "4",
]


def _checkout_status() -> str | None:
    """`git status` of the checkout (untracked files included, ignored ones not); None outside a git checkout."""
    proc = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT, capture_output=True, text=True
    )
    return proc.stdout if proc.returncode == 0 else None


def pytest_sessionstart(session):
    session.config.checkout_before = _checkout_status()


def pytest_sessionfinish(session, exitstatus):
    """Fail the suite if a test reached for the network or left files in the checkout."""
    problems = []
    tried = Path(os.environ["TEST_NETWORK_LOG"]).read_text().splitlines()
    if tried:
        problems.append(f"tests tried to open network connections: {tried[:5]}")
    before, after = session.config.checkout_before, _checkout_status()
    if before is not None and after != before:
        changed = sorted(set(after.splitlines()) ^ set(before.splitlines()))
        problems.append(f"tests changed the checkout (git status): {changed[:10]}")
    Path(os.environ["TEST_NETWORK_LOG"]).unlink(missing_ok=True)
    if problems:
        session.config.pluginmanager.get_plugin("terminalreporter").write_line("\n".join(problems), red=True)
        session.exitstatus = 1


def load_experiment(name: str):
    """The module of experiments/NAME.py (the experiments are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
