"""The step loop every stage runs: metric logs, NaN checks, training-state checkpoints, resume, Ctrl-C."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from tqdm import tqdm

from checkpoints import atomic_save, check_state_dict, load_file
from training.board import board_writer, write_scalars
from training.context import RunContext
from models.compiled import compile_mode, maybe_compile, report_graphs
from training.optim import make_optimizer, set_total, warmup_cosine

log = logging.getLogger(__name__)
_ctrl_c = threading.Event()  # set by Ctrl-C while `interrupts_remembered` is active
_in_steps = threading.Event()  # set while `run_steps` runs: a first Ctrl-C then waits for the end of the step


@contextlib.contextmanager
def interrupts_remembered():
    """Ctrl-C raises KeyboardInterrupt as always, except inside the step loop, where the first one is remembered and
    `run_steps` stops at the end of the step: a step cut in half (the batch drawn, the weights not yet updated) would
    be saved as a state that no uninterrupted run passes through, and the resumed run would differ. A second Ctrl-C
    raises at once. The flag also catches a Ctrl-C that a finaliser (`__del__`) swallowed. Only on the main thread,
    and only where Ctrl-C raises KeyboardInterrupt already (a job that its shell started with SIGINT ignored stays
    so); the previous handler is restored on exit."""
    main_thread = threading.current_thread() is threading.main_thread()
    if not main_thread or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return

    def remember(signum, frame):
        first_in_steps = _in_steps.is_set() and not _ctrl_c.is_set()
        _ctrl_c.set()
        if not first_in_steps:
            raise KeyboardInterrupt

    _ctrl_c.clear()
    previous = signal.signal(signal.SIGINT, remember)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _ctrl_c.clear()


class MetricsLog:
    """Appends one JSON object per line to a file (only on the main process).

    A stage that starts at `start_step` (0: afresh; else resumed from its checkpoint) first drops the records past
    that step, which a killed run wrote after its last checkpoint: every step is then logged once."""

    def __init__(self, path: Path, enabled: bool = True, start_step: int = 0, board: bool = False):
        self.path, self.enabled = Path(path), enabled
        if enabled and self.path.is_file():
            kept = [line for line in self.path.read_text().splitlines() if _step_of(line) <= start_step]
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            tmp.write_text("".join(line + "\n" for line in kept))
            os.replace(tmp, self.path)
        stage = self.path.stem.removeprefix("metrics_")  # metrics_vae.jsonl: the stage's TensorBoard run "vae"
        self.board = board_writer(self.path.parent, stage, start_step) if enabled and board else None

    def write(self, record: dict) -> None:
        """Append one record (with its "step"), and show its numbers in TensorBoard where that is on."""
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.board is not None:
            write_scalars(self.board, record)


def _step_of(line: str) -> float:
    """The step of one metrics record; a damaged line (a kill mid-write) counts as past every step."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf


def check_finite(losses: dict[str, float], step: int, stage: str, saved_at: int | None) -> None:
    """Stop the stage with a clear message on a NaN or inf loss; `saved_at`: the step of the last training state saved
    (which stays intact), None if there is none."""
    bad = [k for k, v in losses.items() if not math.isfinite(v)]
    if bad:
        kept = (
            f"the training state of step {saved_at} is kept; lower the learning rate (--{stage}-lr) and run again "
            "to resume from it"
            if saved_at is not None
            else f"no training state was saved before it; lower the learning rate (--{stage}-lr) and run again"
        )
        raise FloatingPointError(f"{stage}: non-finite loss ({', '.join(bad)}) at step {step}; {kept}")


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


@dataclass
class Retime:
    """A stage that fixes its total steps from its own pace: steps `start` + 1 to `at` are timed, then, after step
    `at` (within the learning-rate warm-up), `decide(at, seconds_per_step)` returns the total. A resumed stage that
    starts past `start` keeps its total."""

    start: int
    at: int
    decide: Callable[[int, float], int]


def clock(device: torch.device) -> float:
    """time.perf_counter() once the work queued on `device` has run (synchronised on CUDA)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


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
    retime: Retime | None = None,
) -> int:
    """Call `step_fn(step) -> {name: loss tensor}` until `total` steps (or the total `retime` decides); every
    log_every steps sync, check for NaN/inf and log; every checkpoint_every steps call `checkpoint_fn(step)`; every
    visualize_every steps call `visualize(step)` on the main process; on Ctrl-C (which `interrupts_remembered` holds
    to the end of the step) checkpoint, then re-raise. A KeyboardInterrupt raised inside a step (a second Ctrl-C, or
    one without `interrupts_remembered`) keeps the last checkpoint instead: a half-done step is no state to resume
    from."""
    bar = tqdm(total=total, initial=step, desc=name, disable=not ctx.is_main, dynamic_ncols=True)
    mid_step, started = False, None
    saved_at = step if step > 0 else None  # a resumed stage starts from a saved state
    if retime is not None and step >= retime.start:
        retime = None
    _in_steps.set()
    try:
        while step < total:
            if _ctrl_c.is_set():  # a Ctrl-C held to the end of the step, or one a finaliser swallowed
                raise KeyboardInterrupt
            mid_step = True
            losses = step_fn(step)
            step += 1
            bar.update(1)
            if retime is not None and step == retime.start:
                started = clock(ctx.device)
            elif retime is not None and step == retime.at:
                total = retime.decide(step, (clock(ctx.device) - started) / (retime.at - retime.start))
                bar.total = total
                bar.refresh()
            if step % ctx.log_every == 0 or step % ctx.checkpoint_every == 0 or step == total:
                record = {k: v.item() if v.numel() == 1 else v.tolist() for k, v in losses.items()}
                check_finite({k: v for k, v in record.items() if isinstance(v, float)}, step, name.lower(), saved_at)
                record.update(step=step, **describe(step))
                metrics.write(record)
                bar.set_postfix(loss=f"{record['total']:.4f}")
            if step % ctx.checkpoint_every == 0 and step < total:
                checkpoint_fn(step)
                saved_at = step
            mid_step = False
            if visualize and ctx.visualize_every and step % ctx.visualize_every == 0 and step < total and ctx.is_main:
                visualize(step)
    except KeyboardInterrupt:
        if mid_step:
            log.warning("interrupted inside step %d: the last checkpoint is kept, not the half-done step", step + 1)
        else:
            checkpoint_fn(step)
        raise
    finally:
        _in_steps.clear()
        bar.close()
    return step


def graph_steps(name: str, step_fn: Callable, mode: str, check_after: int = 3) -> Callable:
    """`step_fn` for a network compiled with CUDA graphs: each step starts a new graph iteration (so the replay may
    reuse the previous step's buffers, whose values the loop never holds on to), and after `check_after` steps the
    log says whether graphs are in use."""
    calls = 0

    def step(step_index: int) -> dict:
        nonlocal calls
        torch.compiler.cudagraph_mark_step_begin()
        out = step_fn(step_index)
        calls += 1
        if calls == check_after:
            report_graphs(name, mode)
        return out

    return step


@dataclass
class Stage:
    """A training stage as the loop sees it: its name, network and options (steps, lr, warmup_steps, weight_decay,
    grad_clip, compile), the files it owns, and anything besides the model and optimizer to checkpoint."""

    name: str  # "VAE" or "Diffusion": progress bar, log lines, and the --<name>-lr hint on a NaN
    model: nn.Module
    cfg: object
    state_file: str
    metrics_file: str
    extra_parts: dict = field(default_factory=dict)  # e.g. {"ema": ema}
    schedule: Callable = warmup_cosine  # (optimizer, warmup_steps, steps) -> the learning-rate scheduler
    checkpoint: Callable | None = field(default=None, init=False)  # save(step, done=False), set by train_stage
    metrics: MetricsLog | None = field(default=None, init=False)  # the stage's metric log, set by train_stage


def train_stage(
    stage: Stage,
    ctx: RunContext,
    generator: torch.Generator,
    make_step: Callable,
    describe: Callable[[int], dict] = lambda step: {},
    visualize: Callable[[int], None] | None = None,
    retime: Retime | None = None,
) -> int:
    """The skeleton every stage shares: AdamW with the stage's schedule (warm-up + cosine unless it says), resume
    from the stage's training state, DDP and compile wrapping, then the step loop until cfg.steps, or until the total
    that `retime` fixes within the warm-up (then `stage.cfg` and its checkpoints hold that total).
    `make_step(net, optimizer, scheduler)` returns the stage's `step_fn(step) -> {name: loss tensor}`; it is called
    after resuming. Returns the last step; the stage then writes its public file and marks its training state done
    (`stage.checkpoint(step, done=True)`)."""
    cfg = stage.cfg
    optimizer = make_optimizer(stage.model, cfg.lr, cfg.weight_decay, ctx.device)
    scheduler = stage.schedule(optimizer, cfg.warmup_steps, cfg.steps)
    parts = dict(model=stage.model, **stage.extra_parts, optimizer=optimizer, scheduler=scheduler)
    state_path = ctx.out_dir / stage.state_file
    step = resume_train_state(state_path, ctx, generator, **parts)
    mode = compile_mode(cfg.compile, ctx.device, distributed=ctx.world_size > 1)
    net = maybe_compile(ctx.wrap(stage.model), mode)
    step_fn = make_step(net, optimizer, scheduler)
    if mode == "reduce-overhead":
        step_fn = graph_steps(stage.name, step_fn, mode)
    stage.checkpoint = checkpointer(ctx, state_path, generator, cfg, **parts)
    stage.metrics = MetricsLog(ctx.out_dir / stage.metrics_file, ctx.is_main, start_step=step, board=True)
    if retime is not None:
        if retime.at >= cfg.warmup_steps or not 1 <= retime.start < retime.at:
            raise ValueError(f"{stage.name}: its total can be fixed only within its {cfg.warmup_steps}-step warm-up")
        decide = retime.decide

        def fix_total(step: int, seconds_per_step: float) -> int:
            total = decide(step, seconds_per_step)
            set_total(scheduler, total)
            stage.cfg = dataclasses.replace(stage.cfg, steps=total)
            stage.checkpoint = checkpointer(ctx, state_path, generator, stage.cfg, **parts)
            return total

        retime = dataclasses.replace(retime, decide=fix_total)
    stage.model.train()
    return run_steps(
        stage.name,
        step,
        cfg.steps,
        step_fn,
        lambda step: stage.checkpoint(step),
        stage.metrics,
        ctx,
        lambda step: {**describe(step), "lr": scheduler.get_last_lr()[0]},
        visualize,
        retime,
    )
