"""Kills, interrupts, NaNs and repeat runs: no work is lost and the same seed gives the same weights."""

import json
import signal
import subprocess
import sys
import time

import pytest
import torch

import main
from conftest import ROOT, run_main, same_state, smoke_run
from training.context import RunContext
from training.loop import MetricsLog, run_steps

# Long enough to be killed mid-stage, short enough for CI; no figures, only checkpoints matter here.
RUN = [
    *smoke_run(vae=(40, 8), diffusion=(16, 16), log_every=4, checkpoint_every=8),
    "--no-figures",
    "--decoder-steps",  # the decoder stage's discriminator, its optimizer and the EMA are part of the resumed state
    "16",
]
PUBLIC = ("cifar_cat_dog_autoencoder.pt", "conditional_diffusion_final.pt")


def start(image_folder, out, *extra):
    # Ctrl-C as in a terminal, however the suite was started (a shell's background job inherits SIGINT ignored)
    return subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "main.py"),
            *RUN,
            "--data-dir",
            str(image_folder),
            "--output-dir",
            str(out),
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def wait_for(path, proc, timeout=120):
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def same_weights(a, b) -> bool:
    for name in PUBLIC:
        sa, sb = torch.load(a / name, weights_only=True), torch.load(b / name, weights_only=True)
        if not same_state(sa, sb):
            return False
    return True


@pytest.fixture(scope="module")
def reference(image_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    proc = run_main(*RUN, "--data-dir", str(image_folder), "--output-dir", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


@pytest.mark.slow
def test_same_seed_gives_identical_checkpoints(image_folder, reference, tmp_path):
    proc = run_main(*RUN, "--data-dir", str(image_folder), "--output-dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert same_weights(reference, tmp_path)


def logged_steps(path) -> list[int]:
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if "total" in line]


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["vae", "decoder"])
def test_sigkill_mid_stage_then_resume_equals_an_uninterrupted_run(image_folder, reference, tmp_path, stage):
    proc = start(image_folder, tmp_path)
    wait_for(tmp_path / f"{stage}_train_state.pt", proc)  # the stage's first checkpoint (step 8) is on disk
    deadline = time.time() + 60
    while 12 not in logged_steps(tmp_path / f"metrics_{stage}.jsonl"):  # logged past the checkpoint: lost on resume
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not torch.load(tmp_path / f"{stage}_train_state.pt", weights_only=True)["done"]  # it died mid-stage
    resumed = run_main(*RUN, "--data-dir", str(image_folder), "--output-dir", str(tmp_path))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from step" in resumed.stderr
    assert "took over the lock" in resumed.stderr  # the killed run's lock: its process is gone
    assert not list(tmp_path.glob(".*.tmp"))
    assert same_weights(reference, tmp_path)
    # the resumed stage dropped the log lines past its checkpoint: every step once, as in an uninterrupted run
    for name in ("metrics_vae.jsonl", "metrics_decoder.jsonl", "metrics_diffusion.jsonl"):
        assert logged_steps(tmp_path / name) == logged_steps(reference / name)
    assert logged_steps(tmp_path / "metrics_vae.jsonl") == list(range(4, 41, 4))
    assert logged_steps(tmp_path / "metrics_decoder.jsonl") == list(range(4, 17, 4))


@pytest.mark.slow
def test_ctrl_c_saves_state_and_says_how_to_resume(image_folder, tmp_path):
    proc = start(image_folder, tmp_path)
    wait_for(tmp_path / "vae_train_state.pt", proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "interrupted" in err and "run the same command again to resume" in err and "Traceback" not in err
    state = torch.load(tmp_path / "vae_train_state.pt", weights_only=True)
    assert 8 <= state["step"] < 40 and not state["done"]


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["vae", "decoder"])
def test_ctrl_c_then_the_same_command_equals_an_uninterrupted_run(image_folder, reference, tmp_path, stage):
    """Before: the Ctrl-C landed inside a step (its batch drawn, its update half done) and that state was saved, so
    the resumed run ended on other weights (final loss 0.8945 against 0.8681)."""
    proc = start(image_folder, tmp_path)
    wait_for(tmp_path / f"{stage}_train_state.pt", proc)
    deadline = time.time() + 60
    while 12 not in logged_steps(tmp_path / f"metrics_{stage}.jsonl"):  # past the periodic checkpoint, mid-stage
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    state = torch.load(tmp_path / f"{stage}_train_state.pt", weights_only=True)
    assert state["step"] >= 12 and not state["done"]  # saved where it stopped, not at the last periodic checkpoint
    resumed = run_main(*RUN, "--data-dir", str(image_folder), "--output-dir", str(tmp_path))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming from step {state['step']}" in resumed.stderr
    assert same_weights(reference, tmp_path)
    for name in ("metrics_vae.jsonl", "metrics_decoder.jsonl", "metrics_diffusion.jsonl"):
        assert logged_steps(tmp_path / name) == logged_steps(reference / name)


def test_an_interrupt_inside_a_step_keeps_the_last_checkpoint(tmp_path):
    """Without the held Ctrl-C (a second one, or a library caller), a half-done step is never saved."""
    saved = []
    ctx = RunContext(device=torch.device("cpu"), out_dir=tmp_path, log_every=2, checkpoint_every=4)

    def step_fn(step):
        if step == 5:
            raise KeyboardInterrupt
        return {"total": torch.tensor(1.0)}

    with pytest.raises(KeyboardInterrupt):
        run_steps("VAE", 0, 20, step_fn, saved.append, MetricsLog(tmp_path / "m.jsonl"), ctx)
    assert saved == [4]  # the periodic checkpoint only


def test_nan_loss_stops_the_stage_and_keeps_the_last_good_state(tmp_path):
    saved = []
    ctx = RunContext(device=torch.device("cpu"), out_dir=tmp_path, log_every=2, checkpoint_every=4)
    losses = iter([1.0] * 5 + [float("nan")] * 10)
    with pytest.raises(FloatingPointError, match="non-finite loss.*step 6; the training state of step 4 is kept"):
        run_steps(
            "VAE",
            0,
            20,
            lambda step: {"total": torch.tensor(next(losses))},
            saved.append,
            MetricsLog(tmp_path / "m.jsonl"),
            ctx,
        )
    assert saved == [4]  # the state at step 4 was saved; nothing after the NaN was


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the dropped interrupt, by design
def test_a_ctrl_c_that_a_finaliser_swallows_still_stops_the_loop(tmp_path):
    """Before: Python drops an exception raised inside __del__, so a Ctrl-C that landed in one was lost and the run
    went on to the end."""
    import os

    from training.loop import interrupts_remembered

    class SignalsOnCollection:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGINT)  # the handler's KeyboardInterrupt is raised here, and dropped
            time.sleep(0.05)

    def step_fn(step):
        if step == 2:
            SignalsOnCollection()  # collected at once: the Ctrl-C lands inside its finaliser
        return {"total": torch.tensor(1.0)}

    saved = []
    ctx = RunContext(device=torch.device("cpu"), out_dir=tmp_path, log_every=2, checkpoint_every=100)
    outer = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, however pytest was started
    try:
        with interrupts_remembered(), pytest.raises(KeyboardInterrupt):
            run_steps("VAE", 0, 20, step_fn, saved.append, MetricsLog(tmp_path / "m.jsonl"), ctx)
        assert saved == [3]  # stopped at the next step and saved it
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is put back
    finally:
        signal.signal(signal.SIGINT, outer)


def test_nan_loss_ends_the_run_with_one_line(image_folder, tmp_path, capsys, monkeypatch):
    import training.vae

    real = training.vae.vae_losses

    def poisoned(*args, **kwargs):
        losses, x_hat = real(*args, **kwargs)
        losses["pixel"] = losses["pixel"] * float("nan")
        return losses, x_hat

    monkeypatch.setattr(training.vae, "vae_losses", poisoned)
    code = main.main([*RUN, "--data-dir", str(image_folder), "--output-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 3 and "vae: non-finite loss (pixel," in err[-1] and "--vae-lr" in err[-1]
    assert "no training state was saved before it" in err[-1]  # before: "the last good training state is kept"
    assert err[-1] in (tmp_path / "log.txt").read_text()  # before: the line ending the run was not in the log
    assert not (tmp_path / PUBLIC[0]).exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--vae-steps", "0"], "--vae-steps must be positive"),
        (["--vae-kl-start", "0.5", "--vae-cls-start", "0.2"], "VAE phases out of order"),
        (["--decoder-adversarial-weight", "0"], "--decoder-adversarial-weight must be positive"),
        (["--holdout-fraction", "1.0"], "--holdout-fraction must be strictly between 0 and 1"),
        (["--sample-steps", "5000"], "--sample-steps must be an integer in [1, 1000], got 5000"),
        (["--sample-steps", "600", "--diffusion-n-steps", "500"], "--sample-steps must be an integer in [1, 500]"),
        (["sample", "--guidance-interval", "0.9", "0.1"], "--guidance-interval must be two fractions"),
        (["sample", "--eta", "1.5"], "--eta must be in [0, 1]"),
        (["sample", "--guidance-scale", "-2"], "--guidance-scale must be >= 0"),
        (["sample", "--num-samples", "0"], "--num-samples must be positive"),
        (["--vae-lr", "inf"], "--vae-lr must be a finite number, got inf"),  # before: Infinity in config.json
        (["--diffusion-lr", "nan"], "--diffusion-lr must be a finite number, got nan"),
        (["sample", "--sample-seed", str(2**70)], "--sample-seed must be between 0 and 2**63 - 1"),  # before: a
        (["--seed", "-1"], "--seed must be between 0 and 2**63 - 1"),  # traceback from torch's manual_seed
        (["evaluate", "--eval-name", "config"], "--eval-name must be a plain name"),  # before: config.json replaced
        (["evaluate", "--eval-name", "../x"], "--eval-name must be a plain name"),
        (["evaluate", "--eval-name", "Split"], "--eval-name must be a plain name"),
        (["sample", "--class", "horse"], "unknown class 'horse' for --class: use cat, dog, 0, 1 or both"),
        (["-preset", "smoke"], "unrecognized argument -preset (did you mean --preset?)"),
        (["--out", "x"], "unrecognized argument --out (did you mean --output-dir?)"),  # before: --eta
    ],
)
def test_options_out_of_range(tmp_path, capsys, args, message):
    assert main.main([*args, "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_checkpoint_of_another_architecture_is_named_in_the_error(trained_run, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    for name in PUBLIC:
        (out / name).write_bytes((trained_run / "cifar_cat_dog_conditional_improved" / name).read_bytes())
    torch.save(torch.nn.Linear(3, 3).state_dict(), out / PUBLIC[1])
    assert main.main(["sample", "--output-dir", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "conditional_diffusion_final.pt does not match ConditionalUNet" in err and "missing key" in err
    (out / PUBLIC[0]).write_bytes((out / PUBLIC[0]).read_bytes()[:1000])  # truncated
    assert main.main(["sample", "--output-dir", str(out), "--device", "cpu"]) == 2
    assert "cannot read checkpoint" in capsys.readouterr().err


def test_swapped_public_files_are_named_for_what_they_are(trained_run, tmp_path, capsys):
    """Before: the denoiser's file under the autoencoder's name got advice to retrain a stage whose file was fine."""
    out = tmp_path / "run"
    out.mkdir()
    for mine, theirs in zip(PUBLIC, reversed(PUBLIC)):
        (out / mine).write_bytes((trained_run / "cifar_cat_dog_conditional_improved" / theirs).read_bytes())
    assert main.main(["sample", "--output-dir", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert f"{out / PUBLIC[0]} holds the weights of a ConditionalUNet, not of a SimpleAutoencoder" in err
    assert f"belongs in a run folder as {PUBLIC[1]}" in err and "retrain" not in err and err.count("\n") == 1


def test_generate_class_samples_refuses_bad_arguments_and_batches_large_requests(trained_run):
    from errors import UserInputError
    from models import generate_class_samples
    from models.pipeline import load_pipeline

    ae, diffusion = load_pipeline(trained_run / "cifar_cat_dog_conditional_improved")
    for kwargs in (
        {"target_class": 2},
        {"target_class": "horse"},
        {"num_samples": 0},
        {"num_samples": -3},
        {"steps": 0},
        {"guidance_scale": -1.0},
        {"eta": 3.0},
    ):
        args = {"target_class": 0, "num_samples": 2, **kwargs}
        with pytest.raises(UserInputError):
            generate_class_samples(ae, diffusion, **args)
    out = generate_class_samples(ae, diffusion, "dog", 7, steps=2, batch_size=3, seed=0)
    assert out.shape == (7, 3, 32, 32) and 0 <= out.min() and out.max() <= 1
    assert torch.equal(out, generate_class_samples(ae, diffusion, "dog", 7, steps=2, batch_size=3, seed=0))
    assert not torch.equal(out, generate_class_samples(ae, diffusion, "dog", 7, steps=2, batch_size=3, seed=1))
