"""End to end through main.py: training, skipping, sampling, the README's notebook snippet, CLI errors."""

import json
import re
import shutil
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import commands
import main
from conftest import ROOT, TINY_RUN, run_main, same_state, smoke_run
from data import split_fingerprint

OUT = "cifar_cat_dog_conditional_improved"


def test_training_writes_checkpoints_config_metrics_and_samples(trained_run):
    out = trained_run / OUT
    for name in (
        "cifar_cat_dog_autoencoder.pt",
        "conditional_diffusion_final.pt",
        "vae_train_state.pt",
        "decoder_train_state.pt",
        "diffusion_train_state.pt",
        "config.json",
        "metrics_vae.jsonl",
        "metrics_decoder.jsonl",
        "metrics_diffusion.jsonl",
        "samples/samples_grid_final.png",
        "samples/sample_class_cat_final.png",
        "samples/sample_class_dog_final.png",
        "reconstruction/vae_reconstruction_final.png",
        "latent_space/vae_latent_space_final.png",
        "diffusion_path/denoising_path_final.png",
        "animation/diffusion_animation_dog_final.gif",
        "curves/loss_curves.png",
    ):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    config = json.loads((out / "config.json").read_text())
    assert config["vae"]["steps"] == 12 and config["diffusion"]["steps"] == 12
    assert config["run_facts"]["perceptual_loss"] is False  # recorded: the smoke preset trains without VGG
    precision = "bf16 autocast" if config["run_facts"]["bf16_autocast"] else "fp32"
    assert f"precision: {precision}" in (out / "log.txt").read_text()  # the log says why a CPU run is slower
    # public files are plain state dicts that weights_only loading accepts
    for name in ("cifar_cat_dog_autoencoder.pt", "conditional_diffusion_final.pt"):
        state = torch.load(out / name, weights_only=True)
        assert all(isinstance(v, torch.Tensor) for k, v in state.items() if not k.endswith("_extra_state"))
        assert set(state["_extra_state"]["config"]) >= {"latent_dim", "num_classes"}  # it describes its network
    process = torch.load(out / "conditional_diffusion_final.pt", weights_only=True)["_extra_state"]["process"]
    assert process == {"n_steps": 1000, "schedule": "cosine", "normalize_latents": True}
    # the public diffusion file holds the EMA weights
    train_state = torch.load(out / "diffusion_train_state.pt", weights_only=True)
    public = torch.load(out / "conditional_diffusion_final.pt", weights_only=True)
    assert same_state(public, train_state["ema"]["model"]) and not same_state(public, train_state["model"])
    records = [json.loads(line) for line in (out / "metrics_vae.jsonl").read_text().splitlines()]
    assert records[-1]["eval"]["psnr"] > 5


def readme_snippet() -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- notebook-snippet -->\s*```python\n(.*?)```", text, re.S)
    assert match, "README has no notebook snippet"
    return match.group(1)


def test_readme_notebook_snippet_runs_as_written(trained_run, monkeypatch):
    monkeypatch.chdir(trained_run)
    scope: dict = {}
    exec(compile(readme_snippet(), "README.md", "exec"), scope)
    for name in ("cat_samples", "dog_samples"):
        samples = scope[name]
        assert samples.shape == (5, 3, 32, 32) and samples.dtype == torch.float32
        assert samples.min() >= 0 and samples.max() <= 1


@pytest.mark.slow
def test_second_run_skips_every_stage(trained_run, image_folder):
    out = trained_run / OUT
    stamps = {
        name: (out / name).stat().st_mtime_ns
        for name in ("cifar_cat_dog_autoencoder.pt", "conditional_diffusion_final.pt")
    }
    record = (out / "config.json").read_bytes()
    proc = run_main(*TINY_RUN, "--data-dir", str(image_folder), "--output-dir", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "skipping VAE training" in proc.stderr and "skipping diffusion training" in proc.stderr
    assert "decoder stage done for this VAE, skipping it" in proc.stderr
    last = proc.stdout.strip().splitlines()[-1]  # one line naming the folder and its main files
    assert last.startswith(f"done: {out} holds cifar_cat_dog_autoencoder.pt, conditional_diffusion_final.pt")
    assert stamps == {name: (out / name).stat().st_mtime_ns for name in stamps}
    # a command that trains nothing, even with a time budget, leaves the record of how the run was trained as it is
    # (before: a --time-budget rewrote config.json with that budget, an empty plan and this command's seconds)
    proc = run_main(*TINY_RUN, "--data-dir", str(image_folder), "--output-dir", str(out), "--time-budget", "5")
    assert proc.returncode == 0 and "nothing to plan" in proc.stderr, proc.stderr[-2000:]
    assert (out / "config.json").read_bytes() == record


@pytest.mark.slow
def test_sample_command_writes_images_without_training(trained_run):
    out = trained_run / OUT

    def sample(n: int, *extra: str):
        args = ["--output-dir", str(out), "--class", "dog", "--num-samples", str(n), "--sample-seed", "7"]
        proc = run_main("sample", *args, "--sample-steps", "5", "--device", "cpu", *extra)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc

    proc = sample(3, "--save-npz")
    folder = out / "samples" / "dog_seed7"
    assert sorted(p.name for p in folder.iterdir()) == ["dog.npz", "dog_0000.png", "dog_0001.png", "dog_0002.png"]
    assert (out / "samples" / "dog_seed7.png").is_file()
    assert f"arrays {folder / 'dog.npz'}" in proc.stdout  # before: the .npz went unmentioned
    proc = sample(2)  # a smaller call into the same folder leaves only its own images (before: the larger call's
    assert sorted(p.name for p in folder.iterdir()) == ["dog_0000.png", "dog_0001.png"]  # stayed), and says so
    assert f"removed the 3 images, grid and arrays an earlier sample command wrote in {folder}" in proc.stderr


def test_a_sample_command_interrupted_leaves_no_grid_of_an_earlier_one(trained_run, tmp_path, monkeypatch):
    """Before: after a Ctrl-C the previous call's grid, titled for its count, stood beside the new call's images."""
    out = tmp_path / OUT
    shutil.copytree(trained_run / OUT, out)
    args = ["sample", "--output-dir", str(out), "--class", "cat", "--num-samples", "3", "--sample-steps", "2"]
    assert main.main([*args, "--device", "cpu"]) == 0
    assert (out / "samples" / "cat_seed0.png").is_file()
    real = commands.iter_class_samples

    def interrupted(*a, **kw):
        yield next(real(*a, **kw))
        raise KeyboardInterrupt

    monkeypatch.setattr(commands, "iter_class_samples", interrupted)
    monkeypatch.setattr(commands, "SAMPLE_BATCH", 1)
    assert main.main([*args, "--device", "cpu"]) == 130
    assert not (out / "samples" / "cat_seed0.png").exists()
    assert sorted(p.name for p in (out / "samples" / "cat_seed0").iterdir()) == ["cat_0000.png"]


def test_sample_writes_batch_by_batch_the_images_of_one_call_and_caps_its_grid(trained_run, tmp_path, monkeypatch):
    """Before: every image was kept in memory until the end (a Ctrl-C kept nothing) and the grid held them all."""
    out = tmp_path / OUT
    shutil.copytree(trained_run / OUT, out)
    args = ["sample", "--output-dir", str(out), "--class", "cat", "--num-samples", "3", "--sample-steps", "4"]
    assert main.main([*args, "--device", "cpu"]) == 0
    whole = [np.asarray(Image.open(p)) for p in sorted((out / "samples" / "cat_seed0").glob("*.png"))]
    monkeypatch.setattr(commands, "SAMPLE_BATCH", 2)
    monkeypatch.setattr(commands, "GRID_MAX", 2)
    assert main.main([*args, "--device", "cpu"]) == 0
    batched = [np.asarray(Image.open(p)) for p in sorted((out / "samples" / "cat_seed0").glob("*.png"))]
    # the same images: the same noise in the same order; only the float rounding of another batch size may move a
    # pixel by one level (seen: 0, 0, 1)
    assert len(batched) == 3 and max(np.abs(a.astype(int) - b).max() for a, b in zip(whole, batched)) <= 1
    grid = np.asarray(Image.open(out / "samples" / "cat_seed0.png").convert("RGB"))
    third = grid[40 + 2 : 40 + 2 + 64, 2 * (1 + 2 * 33) : 2 * (1 + 2 * 33) + 64]  # under the title, 2x, 1-px gaps
    assert third.min() == 255  # the grid holds the first 2 of the 3 images: the third slot is blank


@pytest.mark.parametrize(
    "args, message",
    [
        (["--class", "dog"], "--class cannot be used with the train command"),
        (["sample", "--vae-steps", "3"], "--vae-steps cannot be used with the sample command"),
        (["evaluate", "--retrain-vae"], "--retrain-vae cannot be used with the evaluate command"),
        (["--device", "cuda:7"] if not torch.cuda.is_available() else ["--device", "tpu"], "device"),
        (["sample", "--class", "horse"], "unknown class"),
        (["sample", "--eta", "0.5"], "--eta applies to the ddim sampler only (the sampler is heun)"),
        (["evaluate", "--fid-weights", "missing.pth"], "--fid-weights missing.pth is not a file"),
        (["--decoder-steps", "-1"], "--decoder-steps must be >= 0"),
        (["diagnose", "--eval-name", "x"], "--eval-name cannot be used with the diagnose command"),
        (["diagnose", "--eval-samples", "7"], "--eval-samples cannot be used with the diagnose command"),
        (["evaluate", "--diagnose-samples", "7"], "--diagnose-samples cannot be used with the evaluate command"),
        (["sample", "--device", "meta"], "unknown device 'meta'"),
    ],
)
def test_bad_options_give_one_line_and_exit_2(tmp_path, capsys, args, message):
    code = main.main([*args, "--output-dir", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err and err.count("\n") == 1


def test_offline_download_fails_with_one_line_naming_data_dir(tmp_path, capsys, monkeypatch):
    import torchvision

    def offline(root, *args, **kwargs):
        Path(root).mkdir(parents=True, exist_ok=True)  # as torchvision does before it downloads
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    code = main.main(
        [
            "--preset",
            "smoke",
            "--device",
            "cpu",
            "--output-dir",
            str(tmp_path / "o"),
            "--download-dir",
            str(tmp_path / "dl"),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("error: could not download CIFAR-10") and "--data-dir" in err[-1]
    assert not (tmp_path / "dl").exists()  # before: the failed download left an empty folder behind


def test_sample_command_without_checkpoints_says_which_file(tmp_path, capsys):
    code = main.main(["sample", "--output-dir", str(tmp_path), "--device", "cpu"])
    assert code == 2 and "checkpoint not found" in capsys.readouterr().err


def test_unwritable_output_dir(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    assert main.main(["--output-dir", str(blocker / "out"), "--device", "cpu"]) == 2
    assert "not writable" in capsys.readouterr().err


def test_a_command_that_fails_on_its_input_leaves_no_output_folder(tmp_path, capsys):
    """Before: an output folder holding only an empty log.txt was left behind."""
    assert main.main(["--data-dir", str(tmp_path / "missing"), "--output-dir", str(tmp_path / "o")]) == 2
    assert main.main(["sample", "--output-dir", str(tmp_path / "s"), "--device", "cpu"]) == 2
    assert main.main(["evaluate", "--output-dir", str(tmp_path / "e"), "--device", "cpu"]) == 2
    assert not any((tmp_path / name).exists() for name in ("o", "s", "e"))
    assert "does not exist" in capsys.readouterr().err


def test_help_names_the_commands_and_each_command_lists_only_its_own_options(capsys):
    """Before: every command's --help printed the same 323 lines, with a 55-line usage block first."""
    with pytest.raises(SystemExit):
        main.parse_args(["--help"])
    short = capsys.readouterr().out
    assert len(short.splitlines()) < 25 and all(f"  {c} " in short for c in ("train", "sample", "evaluate", "diagnose"))
    with pytest.raises(SystemExit):
        main.parse_args(["sample", "--help"])
    sample = capsys.readouterr().out
    assert sample.startswith("usage: python main.py sample [options]") and "--num-samples" in sample
    assert "--vae-steps" not in sample and "--eval-samples" not in sample
    with pytest.raises(SystemExit):
        main.parse_args(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "--eval-samples" not in text and "--decoder-steps" in text
    assert "(default: None)" not in text and "(default: torch's choice)" not in text
    assert "--visualize-every VISUALIZE_EVERY also write visualisations" in text
    assert "(default: 0; default preset: 2000)" in text  # one statement (was "(default: 0) (preset: default 2000)")
    assert "1-minute" not in text
    assert "run options: Options of the whole run (not of a stage)." in text  # before: "run options (Options ... .)"
    with pytest.raises(SystemExit):
        main.parse_args(["diagnose", "--help"])
    diagnose = capsys.readouterr().out
    with pytest.raises(SystemExit):
        main.parse_args(["evaluate", "--help"])
    evaluate = capsys.readouterr().out  # before: diagnose's help was evaluate's with another title
    assert "--diagnose-samples" in diagnose and "--eval-samples" not in diagnose and "--eval-name" not in diagnose
    assert "--eval-samples" in evaluate and "--eval-name" in evaluate and "--diagnose-samples" not in evaluate
    for choices in ("--sampler {ddim,ddpm,heun}", "--diffusion-schedule {cosine,linear}", "--amp, --no-amp"):
        assert choices in text  # before: SAMPLER, DIFFUSION_SCHEDULE, ... without the choices


@pytest.mark.parametrize("command", ["train", "sample", "evaluate"])
def test_ctrl_c_says_what_was_kept(command, tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(main, command, interrupted)
    args = [] if command == "train" else [command]
    assert main.main([*args, "--output-dir", str(tmp_path), "--device", "cpu"]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and ("training state saved" in err) == (command == "train")


@pytest.mark.slow
def test_evaluate_takes_its_defaults_from_the_runs_preset(trained_run):
    """Before: a smoke run was evaluated with the default preset's 500 samples per class and a 15-epoch judge."""
    out = trained_run / OUT
    proc = run_main("evaluate", "--output-dir", str(out), "--device", "cpu", "--eval-name", "from_config")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((out / "from_config.json").read_text())
    assert result["sampling"]["samples_per_class"] == 50 and result["eval_config"]["classifier_epochs"] == 1  # smoke's
    assert result["sampling"]["steps"] == 4  # the run's own --sample-steps, recorded in its config.json
    assert "LinAlgWarning" not in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_a_stage_never_rewrites_a_file_an_earlier_stage_owns(image_folder, tmp_path):
    """Before: --no-diffusion-normalize-latents reset the VAE's latent statistics and rewrote the VAE's file, so a
    later --retrain-diffusion trained on raw latents while config.json said normalize_latents: true."""
    out = tmp_path / OUT
    base = [*TINY_RUN, "--data-dir", str(image_folder), "--output-dir", str(out), "--no-figures"]
    proc = run_main(*base, "--no-diffusion-normalize-latents")
    assert proc.returncode == 0, proc.stderr[-2000:]
    vae_file = (out / "cifar_cat_dog_autoencoder.pt").read_bytes()
    assert json.loads((out / "config.json").read_text())["diffusion"]["normalize_latents"] is False

    def process() -> dict:
        state = torch.load(out / "conditional_diffusion_final.pt", weights_only=True)
        return state.get("_extra_state", {}).get("process", {})

    def recorded() -> dict:
        return json.loads((out / "config.json").read_text())

    first = process()
    proc = run_main(*base, "--retrain-diffusion")
    assert proc.returncode == 0, proc.stderr[-2000:]
    vae = torch.load(out / "cifar_cat_dog_autoencoder.pt", weights_only=True)
    assert not torch.equal(vae["latent_scale"], torch.ones(256))  # its fitted statistics, never reset
    assert (out / "cifar_cat_dog_autoencoder.pt").read_bytes() == vae_file  # the VAE stage's file, untouched
    assert process()["normalize_latents"] is True and recorded()["diffusion"]["normalize_latents"] is True
    assert first["normalize_latents"] is False  # the denoiser's file records what it was trained on
    # a run that skips every stage leaves the record of the options they were trained with, not its own flags
    before = (out / "config.json").read_bytes()
    proc = run_main(*base, "--diffusion-lr", "0.123", "--vae-lr", "0.456")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "config.json").read_bytes() == before
    # a run that trains one stage records the options the skipped ones were trained with
    proc = run_main(*base, "--retrain-diffusion", "--vae-lr", "0.456")
    assert proc.returncode == 0, proc.stderr[-2000:]
    config = recorded()
    assert config["vae"]["lr"] != 0.456 and config["run_facts"]["vae_stage"].startswith("skipped")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--vae-stpes", "10"], "unrecognized argument --vae-stpes (did you mean --vae-steps?)"),
        (["sample", "--num-sample", "3"], "unrecognized argument --num-sample (did you mean --num-samples?)"),
        (["evaluate", "--eval-sample=5"], "unrecognized argument --eval-sample (did you mean --eval-samples?)"),
        (["diagnose", "--diagnose-sample", "5"], "(did you mean --diagnose-samples?)"),
        (["--sampler", "euler"], "argument --sampler: invalid choice: 'euler'"),
    ],
)
def test_a_mistyped_flag_gets_one_line_that_names_it_not_the_usage(tmp_path, capsys, args, message):
    """Before: 48 lines of usage, then "argument command: invalid choice: '10'" (the flag's value taken for the
    command)."""
    assert main.main([*args, "--output-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert message in err and "--help" in err and err.count("\n") == 1 and "usage:" not in err


def test_evaluate_on_a_folder_without_a_run_says_so_before_touching_any_data(tmp_path, capsys):
    """Before: it tried to download CIFAR-10 into ./data first, and failed on the download."""
    (tmp_path / "empty").mkdir()
    args = ["--output-dir", str(tmp_path / "empty"), "--device", "cpu"]
    for command, data in (("evaluate", True), ("diagnose", True), ("sample", False)):
        assert main.main([command, *args, *(["--download-dir", str(tmp_path / "dl")] if data else [])]) == 2
        assert "no trained run in" in capsys.readouterr().err
    assert not (tmp_path / "dl").exists()


def test_a_read_only_run_folder_is_refused_in_one_line_before_any_work(trained_run, capsys, monkeypatch):
    """Before: a PermissionError traceback after the work (evaluate lost the numbers it had computed)."""
    import os

    out = trained_run / OUT
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if str(path) == str(out) else real_access(path, mode))
    for command in ("sample", "evaluate"):
        assert main.main([command, "--output-dir", str(out), "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert f"output dir {out} is not writable" in err and "cp -r" in err and err.count("\n") == 1


def test_a_second_command_on_a_folder_in_use_is_refused(trained_run, capsys):
    """Before: two runs in one folder interleaved their logs and checkpoints. A stale lock is taken over: see
    test_robustness::test_sigkill_mid_stage_then_resume_equals_an_uninterrupted_run."""
    import os
    import platform

    from training.run import LOCK_FILE

    out = trained_run / OUT
    lock = out / LOCK_FILE
    lock.write_text(json.dumps({"pid": os.getpid(), "host": platform.node(), "command": "train"}))  # a live holder
    try:
        assert main.main(["sample", "--output-dir", str(out), "--device", "cpu", "--num-samples", "1"]) == 2
        err = capsys.readouterr().err
        assert f"{out} is in use by another command (train, pid {os.getpid()} here)" in err and err.count("\n") == 1
        assert lock.is_file()  # someone else's lock is never removed
    finally:
        lock.unlink()


@pytest.mark.slow
def test_config_records_the_data_dir_resolved_and_names_it_when_it_is_gone(image_folder, tmp_path):
    """Before: config.json kept a relative --data-dir, so evaluate from another folder failed without saying why."""
    import shutil

    data = tmp_path / "work" / "images"
    shutil.copytree(image_folder, data)
    out = tmp_path / "run"
    base = [*TINY_RUN, "--no-figures", "--vae-steps", "2", "--diffusion-steps", "2"]
    proc = run_main(*base, "--data-dir", "images", "--output-dir", str(out), cwd=tmp_path / "work")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((out / "config.json").read_text())["run"]["data_dir"] == str(data)
    shutil.rmtree(data)
    proc = run_main("evaluate", "--output-dir", str(out), "--device", "cpu")
    assert proc.returncode == 2
    assert f"data dir {data}, recorded in {out / 'config.json'}, does not exist here; pass --data-dir" in proc.stderr


def test_the_project_installs_as_a_package_and_the_snippet_imports_from_anywhere(tmp_path):
    """`pip install -e .` is how the notebook snippet works outside the repository root: build the package from the
    checkout's files into a folder and import the snippet's names from elsewhere."""
    import shutil
    import subprocess
    import sys

    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    if not files:
        pytest.skip("not a git checkout")
    src = tmp_path / "src"
    for name in files:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, src / name)
    target = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(target)]
    proc = subprocess.run([*pip, str(src)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    code = "from models import SimpleAutoencoder, ConditionalUNet, ConditionalDenoiseDiffusion, generate_class_samples"
    env = {**__import__("os").environ, "PYTHONPATH": str(target)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.slow
def test_a_run_refuses_other_data_or_another_split_in_one_line(trained_run, image_folder, tmp_path):
    """Before: another --max-images against a trained run's checkpoints exited 0, and a later evaluate drew its
    held-out split from the new options: 54 of 60 "held-out" images were the model's own training images."""
    out = tmp_path / OUT
    shutil.copytree(trained_run / OUT, out)
    (out / "evaluation.json").unlink(missing_ok=True)  # an earlier test may have evaluated the shared run
    proc = run_main(*TINY_RUN, "--data-dir", str(image_folder), "--output-dir", str(out), "--max-images", "40")
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = proc.stderr.strip().splitlines()[-1]
    assert "was trained on another split of the data (max_images 600 (now 40)" in err and "--retrain-vae" in err
    proc = run_main("evaluate", "--output-dir", str(out), "--max-images", "40", "--device", "cpu")
    assert proc.returncode == 2 and "drop the options that change it" in proc.stderr.strip().splitlines()[-1]
    assert not (out / "evaluation.json").exists()
    # the split an evaluation draws from the recorded options is the one the VAE trained on: no held-out image of it
    # is a training image
    recorded = json.loads((out / "config.json").read_text())["run"]
    train, held = main.load_splits(main.resolve_configs(main.parse_args(["evaluate"]), None, {"run": recorded})["run"])
    assert split_fingerprint(train, held) == json.loads((out / "split.json").read_text())["fingerprint"]
    seen = {bytes(x.numpy()) for x in train.x}
    assert not any(bytes(x.numpy()) in seen for x in held.x)


def test_evaluate_with_a_preset_sizes_the_work_and_keeps_the_runs_data_and_split():
    """Before: evaluate --preset cpu on a smoke run replaced the recorded data folder and max_images."""
    recorded = {"run": {"data_dir": "/data/x", "max_images": 600, "holdout_fraction": 0.2, "seed": 3}}
    cfg = main.resolve_configs(main.parse_args(["evaluate", "--preset", "cpu"]), "cpu", recorded)
    run = cfg["run"]
    assert (run.data_dir, run.max_images, run.holdout_fraction, run.seed) == ("/data/x", 600, 0.2, 3)
    assert cfg["eval"].samples_per_class == 1000  # the preset's evaluation size


def test_cpu_preset_trains_the_denoiser_at_the_measured_learning_rate():
    """docs/quarter_hour.md: lr 1e-3 beat 5e-4 at two training seeds of the cpu preset (FD and recall, both classes);
    an explicit --diffusion-lr still overrides the preset."""
    cfg = main.resolve_configs(main.parse_args(["--preset", "cpu"]), "cpu", None)
    assert (cfg["diffusion"].lr, cfg["diffusion"].steps, cfg["diffusion"].batch_size) == (1e-3, 1750, 128)
    cfg = main.resolve_configs(main.parse_args(["--preset", "cpu", "--diffusion-lr", "5e-4"]), "cpu", None)
    assert cfg["diffusion"].lr == 5e-4


def test_cpu_preset_weights_the_denoiser_s_loss_by_min_snr_5_and_the_default_preset_does_not():
    """docs/shape_yardstick.md: Min-SNR-5 drew better shapes than plain MSE at two training seeds of the cpu preset;
    the default preset's compute was not measured with it, so it keeps plain MSE."""
    cfg = main.resolve_configs(main.parse_args(["--preset", "cpu"]), "cpu", None)
    assert cfg["diffusion"].min_snr_gamma == 5.0
    assert main.resolve_configs(main.parse_args([]), "default", None)["diffusion"].min_snr_gamma == 0.0
    cfg = main.resolve_configs(main.parse_args(["--preset", "cpu", "--diffusion-min-snr-gamma", "0"]), "cpu", None)
    assert cfg["diffusion"].min_snr_gamma == 0.0  # a flag still overrides the preset


def public_files_match_their_stages(out) -> list[str]:
    """What differs between the public files and the stages' finished training states: the public autoencoder holds
    the VAE stage's encoder and the decoder stage's EMA decoder; the denoiser's file holds its stage's EMA weights."""
    load = lambda name: torch.load(out / name, weights_only=False)  # noqa: E731
    public_ae, public_unet = load("cifar_cat_dog_autoencoder.pt"), load("conditional_diffusion_final.pt")
    vae, decoder = load("vae_train_state.pt"), load("decoder_train_state.pt")
    diffusion = load("diffusion_train_state.pt")
    pairs = [(k, v, vae["model"][k]) for k, v in public_ae.items() if k.startswith("encoder.")]
    pairs += [(k, public_ae["decoder." + k], v) for k, v in decoder["ema"]["model"].items()]
    pairs += [(k, public_unet[k], v) for k, v in diffusion["ema"]["model"].items() if k in public_unet]
    return [k for k, a, b in pairs if isinstance(a, torch.Tensor) and not torch.equal(a, b)]


SHORT_RUN = [*smoke_run(vae=(6, 16), diffusion=(6, 32), log_every=3, checkpoint_every=3), "--no-figures"]


@pytest.fixture(scope="module")
def short_run(image_folder, tmp_path_factory):
    """A finished run of a few steps a stage, without figures, to copy and retrain parts of."""
    out = tmp_path_factory.mktemp("short") / OUT
    proc = run_main(*SHORT_RUN, "--decoder-steps", "3", "--data-dir", str(image_folder), "--output-dir", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert public_files_match_their_stages(out) == []
    return out


@pytest.mark.slow
@pytest.mark.parametrize("flags", [["--retrain-vae"], ["--retrain-decoder"], ["--retrain-diffusion"], []])
def test_every_retrain_combination_leaves_the_public_files_as_the_log_says(short_run, tmp_path, flags):
    """Before: --retrain-vae on a finished run logged "decoder stage done for this VAE, skipping it" (the retrained
    encoder was bit-identical, so the fingerprint matched) while the public file held the VAE's pixel-loss decoder.
    And without --data-dir, a retrain tried to download CIFAR-10 instead of reading the data folder the run recorded
    (here the download would be refused by the network guard)."""
    out = tmp_path / OUT
    shutil.copytree(short_run, out)
    proc = run_main(*SHORT_RUN, "--decoder-steps", "3", "--output-dir", str(out), *flags)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert public_files_match_their_stages(out) == []
    skipped = "decoder stage done for this VAE, skipping it" in proc.stderr
    assert skipped == (flags == ["--retrain-diffusion"] or flags == [])


@pytest.mark.slow
@pytest.mark.parametrize(
    "flag, kept",
    [("--retrain-decoder", {"judge_classifier.pt"}), ("--retrain-diffusion", {"judge_classifier.pt", "r"})],
)
def test_a_stage_trained_again_removes_the_figures_and_scores_of_the_models_it_replaces(
    short_run, image_folder, tmp_path, flag, kept
):
    """Before: after --retrain-decoder --no-figures the previous decoder's figures and evaluation.json stayed."""
    out = tmp_path / OUT
    shutil.copytree(short_run, out)
    files = {
        "evaluation.json": json.dumps({"eval_config": {}}),
        "evaluation_sheet.png": "x",
        "mine.json": json.dumps({"eval_config": {}}),  # evaluate --eval-name mine
        "mine_reconstructions.png": "x",
        "diagnose.json": json.dumps({"verdict": "..."}),
        "judge_classifier.pt": "x",  # depends on real images only
        "r": "reconstruction/vae_reconstruction_final.png",
        "s": "samples/samples_grid_final.png",
        "c": "curves/loss_curves.png",
    }
    for name, content in files.items():
        path = out / content if len(name) == 1 else out / name
        path.parent.mkdir(exist_ok=True)
        path.write_text("x" if len(name) == 1 else content)
    proc = run_main(*SHORT_RUN, "--decoder-steps", "3", "--data-dir", str(image_folder), "--output-dir", str(out), flag)
    assert proc.returncode == 0, proc.stderr[-2000:]
    left = {name for name, content in files.items() if (out / (content if len(name) == 1 else name)).exists()}
    assert left == kept
    assert (out / "config.json").is_file() and (out / "split.json").is_file()


def test_tensorboard_event_files_hold_the_logged_values_and_the_sample_grid(trained_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = trained_run / OUT
    for stage in ("vae", "decoder", "diffusion"):
        board = EventAccumulator(str(out / "tensorboard" / stage)).Reload()
        logged = [json.loads(line) for line in (out / f"metrics_{stage}.jsonl").read_text().splitlines()]
        losses = [r for r in logged if "total" in r]
        events = board.Scalars("total")
        assert [e.step for e in events] == [r["step"] for r in losses]
        assert np.allclose([e.value for e in events], [r["total"] for r in losses], rtol=1e-6)
        if stage != "diffusion":  # the held-out scores at the stage's end, nested in the record
            assert board.Scalars("eval/psnr")[-1].value == pytest.approx(logged[-1]["eval"]["psnr"], rel=1e-6)
    images = EventAccumulator(str(out / "tensorboard" / "samples")).Reload()
    assert images.Tags()["images"] == ["samples_grid_final"]
