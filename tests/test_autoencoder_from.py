"""`--autoencoder-from DIR`: the run copies DIR's autoencoder, records where it came from and its fingerprint, trains
only the denoiser (a time budget gives the denoiser all of it), and refuses another latent layout in one line."""

import json

import pytest
import torch

import main
from checkpoints import AUTOENCODER_FILE, DECODER_STATE_FILE, DIFFUSION_FILE, VAE_STATE_FILE
from conftest import TINY_RUN, run_main
from training.budget import stages_to_train
from models import SimpleAutoencoder
from training.reuse import file_sha256

OUT = "cifar_cat_dog_conditional_improved"


@pytest.mark.slow
def test_a_run_from_another_runs_autoencoder_copies_it_and_trains_only_the_denoiser(
    trained_run, image_folder, tmp_path
):
    source, out = trained_run / OUT, tmp_path / "reuse"
    proc = run_main(
        *TINY_RUN, "--data-dir", str(image_folder), "--output-dir", str(out), "--autoencoder-from", str(source)
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    sha = file_sha256(source / AUTOENCODER_FILE)
    assert file_sha256(out / AUTOENCODER_FILE) == sha  # the very file, bit for bit
    assert (out / DIFFUSION_FILE).is_file()
    assert not (out / VAE_STATE_FILE).exists() and not (out / DECODER_STATE_FILE).exists()  # neither stage trained
    record = json.loads((out / "config.json").read_text())
    facts = record["run_facts"]
    assert facts["autoencoder_from"] == {"from": str(source.resolve()), "sha256": sha, "same_split": True}
    assert "vae_seconds" not in facts and "decoder_seconds" not in facts and facts["diffusion_seconds"] > 0
    assert facts["vae_stage"].startswith("copied") and facts["decoder_stage"].startswith("copied")
    theirs = json.loads((source / "config.json").read_text())
    assert record["vae"] == theirs["vae"] and record["decoder"] == theirs["decoder"]  # what the copied stages were
    assert json.loads((out / "split.json").read_text()) == json.loads((source / "split.json").read_text())
    # run again: the same file is there and the denoiser is done, so nothing trains
    again = run_main(
        *TINY_RUN, "--data-dir", str(image_folder), "--output-dir", str(out), "--autoencoder-from", str(source)
    )
    assert again.returncode == 0 and "diffusion checkpoint found, skipping" in again.stderr


def test_another_latent_layout_or_another_autoencoder_in_the_folder_is_refused_in_one_line(
    trained_run, image_folder, tmp_path, capsys
):
    source, wide = trained_run / OUT, tmp_path / "wide"
    wide.mkdir()  # an autoencoder of another layout: 16 channels on a 4x4 grid
    torch.save(SimpleAutoencoder(channels=(32, 64, 128, 128), latent_channels=16).state_dict(), wide / AUTOENCODER_FILE)
    args = [*TINY_RUN, "--data-dir", str(image_folder), "--autoencoder-from", str(source)]
    code = main.main([*args, "--output-dir", str(tmp_path / "a"), "--autoencoder-from", str(wide)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "its latent layout is 16x4x4, this run's is 4x8x8" in err
    assert not (tmp_path / "a").exists()  # refused before anything was written
    code = main.main([*args, "--output-dir", str(tmp_path / "b"), "--autoencoder-from", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and f"no {AUTOENCODER_FILE} there" in err
    other = tmp_path / "other"
    other.mkdir()
    state = torch.load(source / AUTOENCODER_FILE, weights_only=True)
    torch.save({k: v + 1 if k.endswith("weight") else v for k, v in state.items()}, other / AUTOENCODER_FILE)
    code = main.main([*args, "--output-dir", str(other)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "already holds another autoencoder" in err


def test_with_a_copied_autoencoder_the_budget_plans_the_denoiser_alone(trained_run, tmp_path):
    from training.config import PRESETS, SECTIONS

    cfg = {name: cls(**PRESETS["cpu"].get(name, {})) for name, (cls, _) in SECTIONS.items()}
    assert stages_to_train(cfg, tmp_path) == ("vae", "decoder", "diffusion")
    cfg["run"].autoencoder_from = str(trained_run / OUT)
    assert stages_to_train(cfg, tmp_path) == ("diffusion",)
