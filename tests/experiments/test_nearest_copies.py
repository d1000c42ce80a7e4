"""experiments/nearest_copies.py: a copy of a training point counts as one, and a run's samples are checked in both
spaces."""

import json
import shutil
import subprocess
import sys

import torch

from conftest import ROOT, load_experiment
from evaluation.classifier import JudgeClassifier


def test_copies_of_training_points_fall_under_the_held_out_threshold_and_new_points_do_not():
    script = load_experiment("nearest_copies")
    g = torch.Generator().manual_seed(0)
    train, held = torch.randn(200, 8, generator=g), torch.randn(100, 8, generator=g)
    limit = script.threshold(held, train)
    dist, idx = script.nearest(train[:5] + 1e-6, train)
    assert (dist < limit).all() and idx.tolist() == [0, 1, 2, 3, 4]
    fresh = torch.randn(1000, 8, generator=g)
    share = (script.nearest(fresh, train)[0] < limit).double().mean().item()
    assert 0.01 < share < 0.12  # new points from the same distribution: about the held-out share, 0.05


def test_a_runs_samples_are_checked_in_judge_features_and_latent_space(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run / "cifar_cat_dog_conditional_improved", run)
    judge = JudgeClassifier(2, 32, "photo")
    torch.save(
        {"state_dict": judge.state_dict(), "classes": ["cat", "dog"], "fingerprint": "x"}, run / "judge_classifier.pt"
    )
    data = json.loads((run / "config.json").read_text())["run"]["data_dir"]
    args = [str(run), "--data-dir", data, "--per-class", "4", "--show", "2", "--figure", str(tmp_path / "nn.png")]
    script = [sys.executable, str(ROOT / "experiments" / "nearest_copies.py")]
    proc = subprocess.run([*script, *args, "--json", str(tmp_path / "nn.json")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "nn.json").read_text())
    for name in ("cat", "dog"):
        for space in ("judge features", "latent space"):
            assert 0 <= result[name][space]["copies"] <= 1 and result[name][space]["threshold"] > 0
    assert (tmp_path / "nn.png").is_file()
