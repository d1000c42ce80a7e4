"""What the training stages share: run context, checkpoints, EMA, learning-rate schedule, metric logs."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import pickletools
import tempfile
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from errors import UserInputError

log = logging.getLogger(__name__)

AUTOENCODER_FILE = "cifar_cat_dog_autoencoder.pt"
DIFFUSION_FILE = "conditional_diffusion_final.pt"
VAE_STATE_FILE = "vae_train_state.pt"
DIFFUSION_STATE_FILE = "diffusion_train_state.pt"


@dataclass
class RunContext:
    """Where a stage runs and writes: device, output folder, precision, logging cadence, process rank."""

    device: torch.device
    out_dir: Path
    amp: bool = False
    log_every: int = 100
    checkpoint_every: int = 1000
    resume: bool = True
    visualize_every: int = 0
    rank: int = 0
    world_size: int = 1
    extra: dict = field(default_factory=dict)  # run facts recorded with the config (e.g. perceptual loss availability)

    @property
    def is_main(self) -> bool:
        """Only rank 0 writes files and shows progress bars."""
        return self.rank == 0

    def wrap(self, model: nn.Module) -> nn.Module:
        """DistributedDataParallel around `model` under torchrun (world_size > 1), else the model itself."""
        if self.world_size == 1:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def shard(self, n: int) -> torch.Tensor:
        """Indices of the n training examples this process draws its batches from (all of them without DDP)."""
        return torch.arange(self.rank, n, self.world_size, device=self.device)

    def autocast(self):
        """bf16 autocast when amp is on (make_context turns it on only where bf16 is native); else a no-op context."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp)


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes in bf16 natively: a CUDA GPU that supports it, or a CPU with AVX512-BF16 or AMX
    (read from /proc/cpuinfo; elsewhere False). Without such hardware bf16 is emulated and slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    try:
        flags = {word for line in open("/proc/cpuinfo") if line.startswith("flags") for word in line.split()}
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def atomic_save(obj, path: Path) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename: a kill leaves the old file intact."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; checkpoints are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_weights(model: nn.Module, path: Path) -> None:
    """Write a public checkpoint: a plain state dict of CPU tensors, loadable by torch.load on any machine."""
    atomic_save({k: v.detach().cpu() for k, v in model.state_dict().items()}, path)


def load_file(path: str | Path, map_location: str | torch.device = "cpu"):
    """torch.load with weights_only=True (a checkpoint never runs code), with one-line errors: "refused" for a pickle
    that would import and call something, "cannot read" for any other file that is not a readable torch file."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"checkpoint not found: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about the pickle protocol of foreign files before refusing
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises EOFError, KeyError, RuntimeError, ... for damaged files
        imports = _foreign_imports(path)
        if imports:
            raise UserInputError(
                f"refused to load {path}: unpickling it would call {', '.join(sorted(imports)[:3])} "
                "(checkpoints are read as plain weights and never run code)"
            ) from None
        raise UserInputError(f"cannot read checkpoint {path} ({_what_is_wrong(path, err)})") from None


def _what_is_wrong(path: Path, err: Exception) -> str:
    """A short description of an unreadable file, from its first bytes (torch's own messages are long or empty)."""
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        return "empty file"
    if head == b"PK\x03\x04":  # a zip archive, as torch.save writes, that torch could not read
        return f"damaged torch archive: truncated or corrupted, {type(err).__name__}"
    return "not a torch file"


SAFE_MODULES = ("torch", "collections", "numpy")  # what torch's own files import when unpickled


def _pickle_bytes(path: Path) -> bytes:
    """The pickle stream of a torch file: the data.pkl member of its zip, or the file itself (legacy or raw)."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith("data.pkl")]
            return archive.read(names[0]) if names else b""
    return path.read_bytes()


def _foreign_imports(path: Path) -> set[str]:
    """Names outside torch's own that the file's pickle would import (and could call); empty if none or unreadable."""
    found, strings = set(), []
    try:
        for op, arg, _ in pickletools.genops(_pickle_bytes(path)):
            if op.name in ("GLOBAL", "INST"):
                found.add(arg.replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.add(f"{strings[-2]}.{strings[-1]}")
            elif isinstance(arg, str):
                strings.append(arg)
    except Exception:  # noqa: BLE001 - a damaged stream: report what was found before the damage
        pass
    return {name for name in found if name.split(".")[0] not in SAFE_MODULES}


def load_weights(model: nn.Module, path: str | Path, map_location: str | torch.device = "cpu") -> None:
    """Load a plain state dict into `model`; a mismatch names the file and the keys/shapes that differ."""
    state = load_file(path, map_location)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserInputError(f"{path} is not a state dict of tensors (is it a training-state file?)")
    check_state_dict(model, state, path)
    model.load_state_dict(state)


def check_state_dict(model: nn.Module, state: dict, path: str | Path) -> None:
    """Raise UserInputError naming `path` and what differs if `state` does not fit `model`."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state) - set(getattr(model, "optional_state_keys", ())))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        parts = [
            f"{len(missing)} missing key(s), e.g. {missing[:3]}" if missing else "",
            f"{len(unexpected)} unexpected key(s), e.g. {unexpected[:3]}" if unexpected else "",
            f"{len(shapes)} shape mismatch(es), e.g. {shapes[:2]}" if shapes else "",
        ]
        raise UserInputError(
            f"{path} does not match {type(model).__name__}: "
            + "; ".join(p for p in parts if p)
            + " (another architecture, latent size or file?)"
        )


class EMA:
    """Exponential moving average of a model's weights, with the usual warm-up of the decay."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay, self.updates = decay, 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """ema <- d * ema + (1 - d) * model, with d = min(decay, (1 + n) / (10 + n))."""
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        ema_params = list(self.model.parameters()) + list(self.model.buffers())
        params = list(model.parameters()) + list(model.buffers())
        torch._foreach_lerp_(
            [e for e in ema_params if e.is_floating_point()],
            [p.detach() for p in params if p.is_floating_point()],
            1 - d,
        )

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.updates = state["updates"]


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up to the peak LR, then cosine annealing to zero (Loshchilov & Hutter 2017)."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def make_optimizer(model: nn.Module, lr: float, weight_decay: float, device: torch.device) -> torch.optim.AdamW:
    """AdamW, fused on CUDA."""
    return torch.optim.AdamW(
        model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.99), fused=device.type == "cuda"
    )


def maybe_compile(model: nn.Module, enabled: bool) -> nn.Module:
    """torch.compile the model if asked; where compilation is unavailable, warn and return it unchanged.
    Errors that surface later, at the first compiled call, also fall back to eager (dynamo's suppress_errors)."""
    if not enabled:
        return model
    try:
        import torch._dynamo

        if not torch._dynamo.is_dynamo_supported():
            raise RuntimeError("dynamo is not supported on this platform")
        torch._dynamo.config.suppress_errors = True
        return torch.compile(model)
    except Exception as err:  # noqa: BLE001 - any backend failure falls back to eager
        log.warning("torch.compile unavailable (%s); training without it", err)
        return model


class MetricsLog:
    """Appends one JSON object per line to a file (only on the main process).

    A stage that starts at `start_step` (0: afresh; else resumed from its checkpoint) first drops the records past
    that step, which a killed run wrote after its last checkpoint: every step is then logged once."""

    def __init__(self, path: Path, enabled: bool = True, start_step: int = 0):
        self.path, self.enabled = Path(path), enabled
        if enabled and self.path.is_file():
            kept = [line for line in self.path.read_text().splitlines() if _step_of(line) <= start_step]
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            tmp.write_text("".join(line + "\n" for line in kept))
            os.replace(tmp, self.path)

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def _step_of(line: str) -> float:
    """The step of one metrics record; a damaged line (a kill mid-write) counts as past every step."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf


def check_finite(losses: dict[str, float], step: int, stage: str) -> None:
    """Stop the stage with a clear message on a NaN or inf loss (the last saved state stays intact)."""
    bad = [k for k, v in losses.items() if not math.isfinite(v)]
    if bad:
        raise FloatingPointError(
            f"{stage}: non-finite loss ({', '.join(bad)}) at step {step}; the last good training "
            f"state is kept. Lower the learning rate (--{stage}-lr) and run again to resume."
        )


def save_train_state(path: Path, *, step: int, generator: torch.Generator, done: bool = False, **parts) -> None:
    """Write everything needed to resume a stage: each part's state_dict (or the value itself), step and RNG."""
    state = {name: part.state_dict() if hasattr(part, "state_dict") else part for name, part in parts.items()}
    atomic_save({**state, "step": step, "generator": generator.get_state(), "done": done}, path)


def checkpointer(ctx: RunContext, path: Path, generator: torch.Generator, cfg, **parts):
    """`save(step, done=False)`: write the stage's training state (main process only), with its config."""

    def save(step: int, done: bool = False) -> None:
        if ctx.is_main:
            save_train_state(
                path,
                step=step,
                generator=generator,
                done=done,
                config=dataclasses.asdict(cfg),
                model_config=parts["model"].config,
                **parts,
            )

    return save


def resume_train_state(path: Path, ctx: RunContext, generator: torch.Generator, **parts) -> int:
    """Load a stage's training state into `parts` and `generator` if resuming is on and it exists; return its step."""
    if not (ctx.resume and Path(path).is_file()):
        return 0
    state = load_file(path, ctx.device)
    if state.get("done"):
        return 0  # a finished stage is retrained from scratch, never continued
    for name, part in parts.items():
        if name == "model":
            check_state_dict(part, state[name], path)
        part.load_state_dict(state[name])
    generator.set_state(state["generator"].to(generator.get_state().device))
    log.info("resuming from step %d of %s", state["step"], path)
    return state["step"]


def run_steps(
    name: str,
    step: int,
    total: int,
    step_fn,
    checkpoint_fn,
    metrics: MetricsLog,
    ctx: RunContext,
    describe=lambda step: {},
    visualize=None,
) -> int:
    """Call `step_fn(step) -> {name: loss tensor}` until `total` steps; every log_every steps sync, check for
    NaN/inf and log; every checkpoint_every steps call `checkpoint_fn(step)`; every visualize_every steps call
    `visualize(step)` on the main process; on Ctrl-C checkpoint, then re-raise."""
    bar = tqdm(total=total, initial=step, desc=name, disable=not ctx.is_main, dynamic_ncols=True)
    try:
        while step < total:
            losses = step_fn(step)
            step += 1
            bar.update(1)
            if step % ctx.log_every == 0 or step % ctx.checkpoint_every == 0 or step == total:
                record = {k: v.item() if v.numel() == 1 else v.tolist() for k, v in losses.items()}
                check_finite({k: v for k, v in record.items() if isinstance(v, float)}, step, name.lower())
                record.update(step=step, **describe(step))
                metrics.write(record)
                bar.set_postfix(loss=f"{record['total']:.4f}")
            if step % ctx.checkpoint_every == 0 and step < total:
                checkpoint_fn(step)
            if visualize and ctx.visualize_every and step % ctx.visualize_every == 0 and step < total and ctx.is_main:
                visualize(step)
    except KeyboardInterrupt:
        checkpoint_fn(step)
        raise
    finally:
        bar.close()
    return step
