"""experiments/ship_release.py: the shipped copy holds float16 parameters, float32 buffers, and loads as a run."""

import dataclasses
import json
import subprocess
import sys

import torch

from checkpoints import AUTOENCODER_FILE, DIFFUSION_FILE
from conftest import ROOT
from models.pipeline import load_pipeline
from training.config import SampleConfig


def test_a_run_ships_in_half_precision_and_draws_nearly_the_same_images(trained_run, tmp_path):
    run, out = trained_run / "cifar_cat_dog_conditional_improved", tmp_path / "pretrained"
    script = [sys.executable, str(ROOT / "experiments" / "ship_release.py"), str(run), "--out", str(out)]
    proc = subprocess.run([*script, "--per-class", "2"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "largest pixel difference" in proc.stdout
    state = torch.load(out / AUTOENCODER_FILE, weights_only=True)
    assert state["encoder.net.0.weight"].dtype == torch.float16
    assert state["latent_scale"].dtype == torch.float32  # buffers as they are
    full = torch.load(run / AUTOENCODER_FILE, weights_only=True)
    assert torch.allclose(state["encoder.net.0.weight"].float(), full["encoder.net.0.weight"], rtol=1e-3, atol=1e-4)
    assert torch.load(out / DIFFUSION_FILE, weights_only=True)["backbone.conv_in.weight"].dtype == torch.float16
    autoencoder, diffusion = load_pipeline(out)
    assert next(autoencoder.parameters()).dtype == torch.float32  # loaded into float32 networks
    shipped, trained = (json.loads((folder / "config.json").read_text()) for folder in (out, run))
    assert shipped["diffusion"] == trained["diffusion"] and shipped["run_facts"] == trained["run_facts"]
    assert shipped["sample"] == json.loads(json.dumps(dataclasses.asdict(SampleConfig())))  # this version's defaults
