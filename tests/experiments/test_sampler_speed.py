"""experiments/sampler_speed.py: a setting against itself draws the same images; fewer steps draw others, timed."""

import json
import subprocess
import sys

from conftest import ROOT


def test_settings_are_compared_from_the_same_noise(trained_run, tmp_path):
    out = tmp_path / "speed.jsonl"
    script = ROOT / "experiments" / "sampler_speed.py"
    run = trained_run / "cifar_cat_dog_conditional_improved"
    args = ["--per-class", "3", "--batch", "2", "--reference", "heun:4:0:1", "--json", str(out)]
    args += ["--candidates", "heun:4:0:1", "heun:2:0:1", "heun:4:0.5:1"]
    proc = subprocess.run([sys.executable, str(script), str(run), *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["setting"] for r in rows] == ["heun:4:0:1", "heun:4:0:1", "heun:2:0:1", "heun:4:0.5:1"]
    assert rows[1]["mean_abs_diff"] == 0 and rows[1]["same_share"] == 1  # the same setting, the same noise
    assert rows[2]["mean_abs_diff"] > 0 and all(r["s_per_1000"] > 0 for r in rows)
