"""torchrun with 2 processes on the CPU (gloo): one run, files written once, checkpoints that load in one process."""

import json
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, run_main, smoke_run


@pytest.mark.slow
def test_two_process_ddp_run_on_cpu(image_folder, tmp_path):
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(ROOT / "main.py"),
        *smoke_run(vae=(8, 8), diffusion=(8, 16), log_every=4, checkpoint_every=4),
        "--data-dir",
        str(image_folder),
        "--output-dir",
        str(out),
        "--no-figures",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = json.loads((out / "config.json").read_text())
    assert config["run_facts"]["world_size"] == 2
    # only rank 0 logs metrics: one record per log step, not two
    vae_records = [json.loads(line) for line in (out / "metrics_vae.jsonl").read_text().splitlines()]
    assert [r["step"] for r in vae_records if "total" in r] == [4, 8]
    # the checkpoints load in an ordinary single-process run
    sampled = run_main(
        "sample",
        "--output-dir",
        str(out),
        "--device",
        "cpu",
        "--class",
        "cat",
        "--num-samples",
        "2",
        "--sample-steps",
        "3",
    )
    assert sampled.returncode == 0, sampled.stderr[-2000:]
    state = torch.load(out / "cifar_cat_dog_autoencoder.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in state)  # saved from the model, not its DDP wrapper
