import os
import pickle

import pytest
import torch
from torch import nn

from errors import UserInputError
from checkpoints import atomic_save, load_file, load_weights
from training.context import RunContext
from training.loop import check_finite
from training.optim import EMA, warmup_cosine
from training.run import precision_note, resolve_device


def test_atomic_save_leaves_no_temp_file_and_keeps_the_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "w.pt"
    atomic_save({"a": torch.ones(2)}, path)
    assert torch.equal(load_file(path)["a"], torch.ones(2))
    assert oct(path.stat().st_mode & 0o777) == "0o644"

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        atomic_save({"a": torch.zeros(2)}, path)
    assert torch.equal(load_file(path)["a"], torch.ones(2))
    assert os.listdir(tmp_path) == ["w.pt"]


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("saver", ["pickle", "torch.save"])
def test_a_pickle_that_runs_code_is_refused(tmp_path, saver):
    path = tmp_path / "evil.pt"
    if saver == "pickle":
        with open(path, "wb") as f:
            pickle.dump({"weight": Evil()}, f, protocol=4)
    else:
        torch.save({"weight": Evil()}, path)
    with pytest.raises(UserInputError, match=r"refused to load .*evil.pt: unpickling it would call .*system"):
        load_file(path)


def _good_file(tmp_path) -> bytes:
    torch.save(nn.Linear(4, 4).state_dict(), tmp_path / "good.pt")
    return (tmp_path / "good.pt").read_bytes()


@pytest.mark.parametrize(
    "name, content, reason",
    [
        ("empty", lambda good: b"", "empty file"),
        ("text", lambda good: b"hello\n", "not a torch file"),
        ("random bytes", lambda good: bytes(range(256)) * 8, "not a torch file"),
        ("truncated zip", lambda good: good[: len(good) // 2], "damaged torch archive"),
        ("zip header only", lambda good: good[:100], "damaged torch archive"),
    ],
)
def test_every_unreadable_file_gives_one_cannot_read_line(tmp_path, name, content, reason):
    """Not a traceback (EOFError, KeyError, ...), and not "refused": that word is kept for pickles that run code."""
    bad = tmp_path / "bad.pt"
    bad.write_bytes(content(_good_file(tmp_path)))
    with pytest.raises(UserInputError) as info:
        load_file(bad)
    assert str(info.value).startswith(f"cannot read checkpoint {bad} ({reason}")
    assert str(info.value).endswith("delete it and run the training command again to retrain that stage")  # the fix
    with pytest.raises(UserInputError, match=r"not found: .*missing.pt \(train the run first"):
        load_file(tmp_path / "missing.pt")


def test_a_good_file_that_a_device_cannot_take_is_a_device_error_not_damage(tmp_path, monkeypatch):
    """Before: `sample --device mps` called a good checkpoint a "damaged torch archive" and advised deleting it."""
    good = tmp_path / "good.pt"
    _good_file(tmp_path)
    real_load = torch.load

    def load_on(path, map_location=None, **kw):
        if torch.device(map_location).type != "cpu":
            raise RuntimeError("Attempting to deserialize object on an MPS device\nbut it is not available")
        return real_load(path, map_location=map_location, **kw)

    monkeypatch.setattr(torch, "load", load_on)
    with pytest.raises(UserInputError) as info:
        load_file(good, torch.device("meta"))
    message = str(info.value)
    assert message.startswith(f"{good} is a readable checkpoint, but loading it onto meta failed (RuntimeError: ")
    assert "delete" not in message and "damaged" not in message and message.endswith("(cpu works)")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(good.read_bytes()[:100])  # a damaged file stays damaged on any device
    with pytest.raises(UserInputError, match="damaged torch archive"):
        load_file(bad, torch.device("meta"))


@pytest.mark.parametrize(
    "name, message",
    [
        ("meta", "unknown device 'meta': use cpu, cuda, cuda:N, mps or auto"),
        ("xla", "unknown device 'xla': use cpu, cuda, cuda:N, mps or auto"),
        ("gpu", "unknown device 'gpu': use cpu, cuda, cuda:N, mps or auto"),
        ("mps", "device mps requested but MPS (Apple's GPU) is not available here; use --device cpu"),
        ("cuda:1", "device cuda:1 requested but CUDA is not available here; use --device cpu"),
    ],
)
def test_a_device_that_cannot_run_here_is_one_line(name, message, monkeypatch):
    """Before: --device mps gave a traceback and --device meta one of 144 lines."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(UserInputError) as info:
        resolve_device(name)
    assert str(info.value) == message
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("mps") and resolve_device("mps") == torch.device("mps")


def test_mismatched_state_dict_names_file_and_difference(tmp_path):
    path = tmp_path / "other.pt"
    torch.save(nn.Linear(4, 8).state_dict(), path)
    with pytest.raises(UserInputError, match=r"other.pt does not match Linear: .*shape mismatch.*\(8, 4\).*\(3, 4\)"):
        load_weights(nn.Linear(4, 3), path)
    with pytest.raises(UserInputError, match="retrain that stage with --retrain-vae or --retrain-diffusion"):
        load_weights(nn.Linear(4, 3), path)
    torch.save({"step": 3}, path)
    with pytest.raises(UserInputError, match="not a state dict of tensors"):
        load_weights(nn.Linear(4, 3), path)


def test_ema_follows_the_model_with_warmup():
    model = nn.Linear(2, 1, bias=False)
    nn.init.zeros_(model.weight)
    ema = EMA(model, decay=0.9)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)  # decay at update 1 is min(0.9, 2/11)
    assert torch.allclose(ema.model.weight, torch.full((1, 2), 1 - 2 / 11))
    for _ in range(200):
        ema.update(model)
    assert torch.allclose(ema.model.weight, torch.ones(1, 2), atol=1e-6)
    assert not ema.model.weight.requires_grad


def test_warmup_cosine_schedule():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_cosine(opt, warmup=10, total=110)
    lrs = []
    for _ in range(110):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[60] == pytest.approx(0.5, abs=1e-6) and lrs[-1] < 1e-3
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))


def test_check_finite_names_the_bad_term():
    check_finite({"total": 1.0}, 3, "vae", None)
    with pytest.raises(FloatingPointError, match=r"kl.*step 7; the training state of step 4 is kept.*--vae-lr"):
        check_finite({"total": 1.0, "kl": float("nan")}, 7, "vae", 4)
    with pytest.raises(FloatingPointError, match=r"no training state was saved before it.*--vae-lr"):
        check_finite({"total": 1.0, "kl": float("nan")}, 7, "vae", None)


def test_compile_falls_back_to_eager_where_unavailable(monkeypatch, caplog):
    import torch._dynamo

    from models.compiled import maybe_compile

    model = nn.Linear(2, 2)
    assert maybe_compile(model, "off") is model
    monkeypatch.setattr(torch._dynamo, "is_dynamo_supported", lambda: False)
    assert maybe_compile(model, "reduce-overhead") is model
    assert "torch.compile unavailable" in caplog.text


def test_auto_compiles_with_cuda_graphs_on_cuda_only():
    from models.compiled import compile_mode

    assert compile_mode("auto", torch.device("cuda", 0)) == "reduce-overhead"
    assert compile_mode("auto", torch.device("cpu")) == "off"
    assert compile_mode("default", torch.device("cpu")) == "default"
    assert compile_mode("auto", torch.device("cuda", 0), distributed=True) == "default"  # DDP hooks: no graphs


@pytest.mark.slow
def test_compiled_training_step_matches_the_eager_step():
    """The compiled path (inductor on the CPU here; CUDA graphs on a GPU) computes the same losses and weights."""
    from models import ConditionalDenoiseDiffusion, ConditionalUNet
    from training.config import DiffusionConfig
    from training.context import RunContext
    from training.diffusion import train_step
    from models.compiled import maybe_compile
    from training.optim import EMA, make_optimizer, warmup_cosine

    cfg, ctx = DiffusionConfig(), RunContext(device=torch.device("cpu"), out_dir=None)
    z0 = torch.randn(16, 64, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1] * 8)
    results = []
    for mode in ("off", "default"):
        torch.manual_seed(0)
        unet = ConditionalUNet(latent_dim=64, hidden_dims=[32, 64, 32], time_emb_dim=32, latent_channels=1)
        diffusion = ConditionalDenoiseDiffusion(unet, n_steps=100, device="cpu")
        optimizer = make_optimizer(unet, 1e-3, 0.0, ctx.device)
        scheduler, ema, gen = warmup_cosine(optimizer, 2, 10), EMA(unet, 0.9), torch.Generator().manual_seed(1)
        net = maybe_compile(unet, mode)
        losses = [
            train_step(net, diffusion, optimizer, scheduler, ema, z0, y, cfg, ctx, gen)["total"] for _ in range(3)
        ]
        results.append((torch.stack(losses), [p.detach().clone() for p in unet.parameters()]))
    (eager_loss, eager_w), (compiled_loss, compiled_w) = results
    assert torch.allclose(eager_loss, compiled_loss, rtol=1e-4)
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(eager_w, compiled_w))  # measured: 1.1e-5 apart


def test_the_log_says_which_precision_training_runs_in_and_why_bf16_is_off(tmp_path):
    cpu = torch.device("cpu")
    assert precision_note(True, RunContext(device=cpu, out_dir=tmp_path, amp=True)) == "precision: bf16 autocast on cpu"
    no_native = precision_note(True, RunContext(device=cpu, out_dir=tmp_path, amp=False))
    assert no_native.startswith("precision: fp32") and "no native bf16" in no_native and "2.5x" in no_native
    assert precision_note(False, RunContext(device=cpu, out_dir=tmp_path, amp=False)) == "precision: fp32 (--no-amp)"
