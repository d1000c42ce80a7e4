"""The shipped model in pretrained/, used with no training: the API, the sample command, the seed's snippet, the
notebook, --autoencoder-from pretrained, and a damaged shipped file. These use the real shipped files."""

import json
import shutil

import nbclient
import nbformat
import pytest
import torch

import main
import models.pipeline
from checkpoints import AUTOENCODER_FILE, DIFFUSION_FILE
from conftest import ROOT, TINY_RUN, run_main
from models import generate_class_samples
from models.pipeline import PRETRAINED_DIR, load_pipeline
from test_main import readme_snippet
from training.reuse import file_sha256

pytestmark = pytest.mark.skipif(
    not (PRETRAINED_DIR / DIFFUSION_FILE).is_file(), reason="pretrained/ is not shipped yet"
)


def test_the_shipped_model_is_in_the_repository_within_20_mb_with_its_card():
    names = {p.name for p in PRETRAINED_DIR.iterdir()}
    assert {AUTOENCODER_FILE, DIFFUSION_FILE, "config.json", "MODEL_CARD.md"} <= names
    assert sum(p.stat().st_size for p in PRETRAINED_DIR.iterdir()) < 20 * 2**20


def test_load_pipeline_without_a_folder_loads_the_shipped_model_and_samples():
    autoencoder, diffusion = load_pipeline()
    assert autoencoder.layout == "4x8x8" and diffusion.model.process["n_steps"] == diffusion.n_steps
    images = generate_class_samples(autoencoder, diffusion, "dog", 2, steps=3, seed=0)
    assert images.shape == (2, 3, 32, 32) and 0 <= images.min() and images.max() <= 1
    again = generate_class_samples(*load_pipeline("pretrained"), "dog", 2, steps=3, seed=0)
    assert torch.equal(images, again)


def test_the_sample_command_draws_from_the_shipped_model_into_the_output_folder(tmp_path):
    out = tmp_path / "out"
    args = ["sample", "--pretrained", "--output-dir", str(out), "--class", "cat", "--num-samples", "2"]
    proc = run_main(*args, "--sample-steps", "3", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"sampling from the shipped model in {PRETRAINED_DIR}" in proc.stderr
    folder = out / "samples" / "pretrained_cat_seed0"
    assert sorted(p.name for p in folder.iterdir()) == ["cat_0000.png", "cat_0001.png"]
    assert not (out / AUTOENCODER_FILE).exists()  # nothing of the model is copied into the output folder


def test_the_seeds_snippet_loads_the_shipped_files(monkeypatch):
    monkeypatch.chdir(ROOT)
    snippet = readme_snippet().replace("./cifar_cat_dog_conditional_improved/", "pretrained/")
    scope: dict = {}
    exec(compile(snippet, "README.md", "exec"), scope)
    assert scope["cat_samples"].shape == (5, 3, 32, 32) and scope["dog_samples"].max() <= 1


def test_the_quickstart_notebook_runs_on_the_shipped_model_without_a_run_dir(monkeypatch):
    monkeypatch.delenv("RUN_DIR", raising=False)
    nb = nbformat.read(ROOT / "notebooks" / "quickstart.ipynb", as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    )
    client.execute()
    outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    assert len([out for out in outputs if "image/png" in out.get("data", {})]) == 2  # a grid per class


def test_a_run_reuses_the_shipped_autoencoder(image_folder, tmp_path):
    out = tmp_path / "reuse"
    proc = run_main(
        *TINY_RUN, "--data-dir", str(image_folder), "--output-dir", str(out), "--autoencoder-from", "pretrained"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((out / "config.json").read_text())["run_facts"]["autoencoder_from"]
    assert record["from"] == str(PRETRAINED_DIR) and record["sha256"] == file_sha256(PRETRAINED_DIR / AUTOENCODER_FILE)
    assert record["same_split"] is False and "trained on another split" in proc.stderr
    assert file_sha256(out / AUTOENCODER_FILE) == record["sha256"]


def test_a_damaged_shipped_file_gets_one_line(tmp_path, monkeypatch, capsys):
    damaged = tmp_path / "pretrained"
    shutil.copytree(PRETRAINED_DIR, damaged)
    (damaged / DIFFUSION_FILE).write_bytes((damaged / DIFFUSION_FILE).read_bytes()[:5000])
    monkeypatch.setattr(models.pipeline, "PRETRAINED_DIR", damaged)
    code = main.main(["sample", "--pretrained", "--output-dir", str(tmp_path / "out"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and f"cannot read checkpoint {damaged / DIFFUSION_FILE}" in err
