"""experiments/denoiser_screen.py: its Muon orthogonalises and trains, and a screen of a run folder scores every
variant on the same held-out set."""

import json
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, load_experiment


def test_orthogonalise_gives_the_polar_factor_of_wide_and_tall_matrices():
    screen = load_experiment("denoiser_screen")
    g = torch.randn(16, 40, generator=torch.Generator().manual_seed(0))
    for m in (g, g.T):
        u, _, vh = torch.linalg.svd(m, full_matrices=False)
        o = screen.orthogonalise(m)
        assert o.shape == m.shape
        singular = torch.linalg.svdvals(o)
        assert singular.min() > 0.6 and singular.max() < 1.25  # the quintic iteration's band around 1
        assert torch.nn.functional.cosine_similarity(o.flatten(), (u @ vh).flatten(), dim=0) > 0.95


def test_muon_and_adamw_together_fit_a_small_convolutional_regression():
    screen = load_experiment("denoiser_screen")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 8, 3, padding=1), torch.nn.SiLU(), torch.nn.Conv2d(8, 1, 1))
    x = torch.randn(32, 2, 6, 6)
    y = x[:, :1].roll(1, dims=-1) - x[:, 1:]
    matrices = [net[0].weight, net[2].weight]
    rest = [net[0].bias, net[2].bias]
    optimizer = screen.Together(screen.Muon(matrices, lr=0.02), torch.optim.AdamW(rest, lr=1e-2))
    losses = []
    for _ in range(60):
        loss = (net(x) - y).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_muon_takes_the_hidden_matrices_and_leaves_the_outer_layers_to_adamw():
    from models import ConditionalUNet

    unet = ConditionalUNet()
    matrices, rest = load_experiment("denoiser_screen").muon_split(unet)
    names = {id(p): name for name, p in unet.named_parameters()}
    assert len(matrices) + len(rest) == len(list(unet.parameters()))
    assert all(p.dim() >= 2 for p in matrices)
    outer = {names[id(p)] for p in rest if p.dim() >= 2}
    assert outer == {"backbone.conv_in.weight", "backbone.out.weight", "class_emb.weight"}


@pytest.mark.slow
def test_a_screen_of_a_run_scores_variants_on_the_same_held_out_set(trained_run, image_folder, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run / "cifar_cat_dog_conditional_improved", run)
    log = tmp_path / "screen.jsonl"

    def screen(*flags):
        script = ROOT / "experiments" / "denoiser_screen.py"
        script = [sys.executable, str(script), str(run), "--data-dir", str(image_folder)]
        proc = subprocess.run(
            [*script, "--steps", "2", "--log", str(log), *flags], capture_output=True, text=True, timeout=600
        )
        assert proc.returncode == 0, proc.stderr[-3000:]

    screen("--steps", "0")
    screen("--steps", "0")
    screen("--repa-weight", "0.5")
    screen("--optimizer", "muon")
    screen("--layersync-weight", "0.5")
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(rows) == 5 and {"screen_latents.pt", "screen_teacher.pt"} <= {p.name for p in run.iterdir()}
    untrained = rows[0]
    assert rows[1] == untrained  # the held-out set and the initialisation are fixed
    assert untrained["n"] == 4 * 2 * json.loads((run / "split.json").read_text())["held_out_images"]
    for row in rows[2:]:
        assert row["weighted"] != untrained["weighted"] and len(row["quarters"]) == 4
