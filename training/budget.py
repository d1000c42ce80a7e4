"""`--time-budget MINUTES`: a run sized by the minutes a user gives it rather than by the preset's fixed steps.

Before any training, a few steps of each stage that will train are timed on this machine at the stage's batch,
precision and compile mode (on random data: a step costs the same whatever it holds), and so are the encoder (a run
encodes its training set a few times) and one batch of guided samples (the figures): training/calibration.py. Then
each stage gets its steps:

- the VAE and the decoder stage keep their preset's steps while the budget allows; below that they shrink with the
  budget, but to no less than KNEE of them before the denoiser gives up its share (the cpu preset's VAE lost nothing
  from 900 steps to its 675 and half a feature FD at 450; its decoder stage had what it gives by 500 of 1,000 steps);
- the denoiser takes the rest (a budget above the preset's time buys denoiser steps: the compute curve's lever);
- no stage goes below FLOOR of its preset's steps; a budget that cannot give every stage its floor is refused.

As the denoiser's stage starts, its steps are planned once more (`replan_denoiser`) from the budget actually left and
the pace of the stages before it (their real seconds over what the plan gave them): a machine whose speed drifted while
they trained, or a plan that was off for them, would otherwise carry its error to the end of the command. Its warm-up
and EMA follow those steps. Then, within its warm-up, the denoiser times its own steps in its loop and fixes its total
from that pace (`retime_denoiser`): a few calibration steps on random data scatter more than the loop itself does.

The plan is recorded in config.json (the planned steps are the stages' `steps`), so the same steps given as flags
train the same model on any machine, and a resumed run follows it instead of planning again.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from typing import Callable

from checkpoints import (
    AUTOENCODER_FILE,
    DECODER_STATE_FILE,
    DIFFUSION_FILE,
    DIFFUSION_STATE_FILE,
    VAE_STATE_FILE,
    load_file,
)
from errors import UserInputError
from training.calibration import ENCODER_PASSES, Speeds, calibrate
from training.loop import Retime

log = logging.getLogger(__name__)

STAGES = ("vae", "decoder", "diffusion")
# the share of its preset's steps the VAE and the decoder stage keep before the denoiser's share shrinks further (at
# 0.5 for both, a 20-minute budget gave them 0.70x and cost the cats 0.44 feature FD: docs/time_budget.md)
KNEE = {"vae": 0.9, "decoder": 0.7}
FLOOR = 0.25  # no stage below a quarter of its preset's steps (the cpu preset's VAE then sees 1.2 epochs)
DENOISER_ENCODER_PASSES = 2  # of ENCODER_PASSES, the denoiser's (the set and its mirror); the VAE's and decoder's: 1
PACE_LIMITS = (0.5, 2.0)  # the re-plan trusts the earlier stages' pace within these (a paused laptop is not a pace)
SAFETY = 0.97  # the plan fills this share of the budget: the rest absorbs the machine's jitter
# the denoiser's re-plan fills this share: only its own minutes are left to guess, and in five runs on the development
# machine the earlier stages' pace over-estimated its slowdown three times, and under-estimated it once, by 3%
REPLAN_SAFETY = 0.99
# the denoiser times its own steps from RETIME_START + 1 to the last of its warm-up in its loop (within the warm-up, so
# the total fixed then trains as if given up front) and fixes its total from that pace: in five 15-minute runs on the
# development machine its loop ran at 0.38-0.41 s a step while the calibration's five steps said 0.30-0.42. The
# machine's pace swings by 15% over a few minutes; in six runs, steps 4-40 were off the rest's pace by 4-21% (17% and
# 21% in two), the whole warm-up by 1-14% (docs/time_budget.md): the longer window, the less it is a snapshot
RETIME_START = 3


def floors(preset: dict[str, int]) -> dict[str, int]:
    """The fewest steps a stage is worth running: FLOOR of its preset's, at least one."""
    return {stage: max(1, math.ceil(FLOOR * steps)) for stage, steps in preset.items()}


def plan_steps(budget_s: float, step_s: dict[str, float], preset: dict[str, int], fixed: dict[str, int]) -> dict:
    """The steps of each stage that trains (the keys of `step_s`: seconds per step) within `budget_s` seconds of
    training; `fixed` holds the steps given on the command line, and the rest of the budget is split among the others.
    Raises BudgetTooSmall with the smallest budget that gives every free stage its floor."""
    free = [s for s in STAGES if s in step_s and s not in fixed]
    lowest = floors({s: preset[s] for s in free})
    cost = lambda steps: sum(n * step_s[s] for s, n in steps.items())  # noqa: E731
    spare = budget_s - cost({s: n for s, n in fixed.items() if s in step_s})
    if spare < cost(lowest):
        raise BudgetTooSmall(budget_s - spare + cost(lowest))
    share = spare / cost({s: preset[s] for s in free}) if free else 0.0
    steps = {s: n for s, n in fixed.items() if s in step_s}
    if "diffusion" not in free:  # the denoiser's steps are given: the others share the budget alike
        return {**steps, **{s: max(lowest[s], math.floor(share * preset[s])) for s in free}}
    before = {s: preset[s] * min(1.0, max(share, KNEE[s])) for s in free if s != "diffusion"}
    denoiser = (spare - cost(before)) / step_s["diffusion"]
    if denoiser < lowest["diffusion"]:  # give the denoiser its floor: the others shrink toward theirs, alike
        need = (lowest["diffusion"] - denoiser) * step_s["diffusion"]
        room = sum((before[s] - lowest[s]) * step_s[s] for s in before)
        shrink = min(1.0, need / room) if room > 0 else 1.0
        before = {s: n - (n - lowest[s]) * shrink for s, n in before.items()}
        denoiser = lowest["diffusion"]
    planned = {**before, "diffusion": denoiser}
    return {**steps, **{s: max(lowest[s], math.floor(n)) for s, n in planned.items()}}


class BudgetTooSmall(UserInputError):
    """A budget below what the stages' floors cost on this machine; `minimum_s` is the smallest that works."""

    def __init__(self, minimum_s: float):
        self.minimum_s = minimum_s
        super().__init__(f"needs {minimum_s:.0f} s")


def make_plan(budget_min: float, elapsed_s: float, speeds: Speeds, preset: dict, fixed: dict) -> dict:
    """The run's plan as config.json records it: the steps of each stage, the seconds each is expected to take, and
    the other work, all within `budget_min` minutes counted from the command's start (`elapsed_s` ago)."""
    other = {
        "before planning (data, calibration)": elapsed_s,
        "encoding the training set": speeds.encoding_seconds,
        "figures": speeds.figures_seconds,
        "first steps (compilation, warm-up)": sum(speeds.first_step_extra.values()),
    }
    budget_s = budget_min * 60
    training_s = SAFETY * budget_s - sum(other.values())
    try:
        steps = plan_steps(training_s, speeds.step_seconds, preset, fixed)
    except BudgetTooSmall as err:
        smallest = math.ceil((err.minimum_s + sum(other.values())) / SAFETY / 6) / 10  # minutes, rounded up
        raise UserInputError(
            f"--time-budget {budget_min:g} is too small on this machine: the smallest budget that gives every stage "
            f"its floor ({FLOOR:.0%} of the preset's steps) is {smallest:g} minutes"
        ) from None
    seconds = {s: n * speeds.step_seconds[s] for s, n in steps.items()}
    return {
        "budget_minutes": budget_min,
        "steps": steps,
        "seconds_per_step": {s: round(v, 4) for s, v in speeds.step_seconds.items()},
        "first_step_seconds": {s: round(v, 1) for s, v in speeds.first_step_extra.items()},
        "stage_seconds": {s: round(v, 1) for s, v in seconds.items()},
        "other_seconds": {k: round(v, 1) for k, v in other.items()},
        "total_seconds": round(sum(seconds.values()) + sum(other.values()), 1),
    }


def stages_to_train(cfg: dict, out_dir) -> tuple[str, ...]:
    """The stages a training command will run in `out_dir`, as main.py decides: a stage whose file is missing or that
    a --retrain flag names, and every stage after a VAE that trains."""

    run = cfg["run"]
    copied = run.autoencoder_from is not None  # the VAE and decoder stage come from another run
    vae = not copied and (run.retrain_vae or not (out_dir / AUTOENCODER_FILE).is_file())
    decoder_state = out_dir / DECODER_STATE_FILE
    decoder_done = decoder_state.is_file() and bool(load_file(decoder_state).get("done"))
    decoder = not copied and cfg["decoder"].steps > 0 and (vae or run.retrain_decoder or not decoder_done)
    diffusion = vae or run.retrain_diffusion or not (out_dir / DIFFUSION_FILE).is_file()
    return tuple(s for s, trains in zip(STAGES, (vae, decoder, diffusion)) if trains)


def schedules(cfg) -> dict:
    """The values of a stage's config that `scale_schedules` scales with its steps: its warm-up and its EMA's decay."""
    return {"warmup_steps": cfg.warmup_steps, **({"ema_decay": cfg.ema_decay} if hasattr(cfg, "ema_decay") else {})}


def scale_schedules(cfg, planned: int, preset: int, preset_schedules: dict | None = None):
    """A stage's config at `planned` steps, from its preset's `preset` steps and `preset_schedules` (`schedules` of
    its unscaled config; default: `cfg`'s own): where the plan has fewer steps than the preset, the warm-up and the
    EMA's half-life shrink in proportion, so they stay the share of training the preset gives them (the VAE's phases
    and every cosine are fractions of the steps already)."""
    changes = {"steps": planned, **(preset_schedules or schedules(cfg))}
    if planned < preset:
        ratio = planned / preset
        changes["warmup_steps"] = max(1, round(changes["warmup_steps"] * ratio))
        if changes.get("ema_decay", 0) > 0:
            half_life = math.log(0.5) / math.log(changes["ema_decay"])  # steps
            changes["ema_decay"] = 0.5 ** (1 / max(1.0, half_life * ratio))
    return dataclasses.replace(cfg, **changes)


def follow_budget(cfg: dict, ctx, n_images: int, fixed: dict[str, int], elapsed_s: float) -> dict | None:
    """--time-budget: plan the stages' steps from speeds measured here (or, for an interrupted budgeted run, take the
    plan its config.json recorded), set them in `cfg`, and return the plan (None without a budget)."""

    run = cfg["run"]
    if run.time_budget is None:
        return None
    if ctx.world_size > 1:  # each process would time its own steps and plan other step counts than the others
        raise UserInputError(
            "--time-budget plans on one process: under torchrun give each stage's steps instead (a single-process "
            "run with --time-budget records the plan in its config.json)"
        )
    stages = stages_to_train(cfg, ctx.out_dir)
    if not stages:  # a finished run: its recorded plan stays the record of how it was trained
        log.info("time budget: every stage is trained already, nothing to plan")
        return None
    config = ctx.out_dir / "config.json"
    recorded = json.loads(config.read_text()).get("run_facts", {}).get("time_plan") if config.is_file() else None
    if recorded and ctx.resume and any(_interrupted(ctx.out_dir, s) for s in stages):
        plan = recorded
        plan.setdefault("denoiser_replanned", None)  # None: a resumed run does not plan the denoiser again either
        log.info("time budget: resuming, so following the plan recorded in %s (not planning again)", config)
    else:
        speeds = calibrate(cfg, ctx, stages, n_images, run.figures)
        preset = {s: cfg[s].steps for s in stages}
        plan = make_plan(run.time_budget, elapsed_s + speeds.calibration_seconds, speeds, preset, fixed)
        plan.update(preset_steps=preset, preset_schedules={s: schedules(cfg[s]) for s in stages}, given=sorted(fixed))
        timed = ", ".join(stages)
        log.info("time budget: timed %s on this machine in %.0f s (not training)", timed, speeds.calibration_seconds)
    retimed = plan.get("denoiser_retimed") or {}
    for stage, steps in plan["steps"].items():  # a recorded plan keeps the presets it scaled from
        scaled_at = retimed["from_steps"] if stage == "diffusion" and retimed else steps  # a total fixed in the loop
        cfg[stage] = scale_schedules(  # kept the warm-up and EMA of the steps planned before it
            cfg[stage], scaled_at, plan["preset_steps"].get(stage, steps), plan.get("preset_schedules", {}).get(stage)
        )
        cfg[stage] = dataclasses.replace(cfg[stage], steps=steps)
    for line in describe(plan):
        log.info(line)
    return plan


def replan_denoiser(plan: dict, elapsed_s: float, real_seconds: dict[str, float | None]) -> dict:
    """The denoiser's steps planned again as its stage starts, `elapsed_s` into the command, from the budget left and
    the pace of the stages that trained before it (`real_seconds` over what the plan gave them: their steps, first
    steps and encoding pass; within PACE_LIMITS): its calibrated step, its encoding passes and the figures are taken
    to run at that pace too. Returns the pace, the seconds left, the steps before and after (no fewer than its floor),
    the seconds those steps and the rest of the command are expected to take."""
    other, first = plan["other_seconds"], plan.get("first_step_seconds", {})
    encoding_pass = other["encoding the training set"] / ENCODER_PASSES
    before = [s for s in ("vae", "decoder") if s in plan["steps"] and real_seconds.get(s) is not None]
    planned = sum(plan["stage_seconds"][s] + first.get(s, 0.0) + encoding_pass for s in before)
    pace = sum(real_seconds[s] for s in before) / planned if planned > 0 else 1.0
    pace = min(max(pace, PACE_LIMITS[0]), PACE_LIMITS[1])
    left = REPLAN_SAFETY * plan["budget_minutes"] * 60 - elapsed_s
    rest = pace * (DENOISER_ENCODER_PASSES * encoding_pass + other["figures"]) + first.get("diffusion", 0.0)
    step_s = pace * plan["seconds_per_step"]["diffusion"]
    lowest = floors({"diffusion": plan["preset_steps"]["diffusion"]})["diffusion"]
    fits = math.floor((left - rest) / step_s)
    steps = max(lowest, fits)
    return {
        "pace": round(pace, 3),
        "seconds_left": round(left, 1),
        "from_steps": plan["steps"]["diffusion"],
        "steps": steps,
        "stage_seconds": round(steps * step_s, 1),
        "expected_seconds": round(rest + steps * step_s, 1),
        "past_budget": fits < lowest,  # its floor is more than the time left: the command will run past the budget
    }


def follow_budget_at_denoiser(cfg: dict, ctx, elapsed_s: float) -> bool:
    """As the denoiser's stage starts in a budgeted run that planned in this command: plan its steps again
    (`replan_denoiser`), set them and its schedules in `cfg`, and record the change in the plan. Steps given as a
    flag, and a resumed run's recorded plan, stay as they are. Returns whether the steps were planned again."""
    plan = ctx.extra.get("time_plan")
    if plan is None or "denoiser_replanned" in plan or "diffusion" in plan["given"] or "diffusion" not in plan["steps"]:
        return False
    real = {s: ctx.extra.get(f"{s}_seconds") for s in plan["steps"]}
    change = replan_denoiser(plan, elapsed_s, real)
    steps = change["steps"]
    plan["denoiser_replanned"] = change
    plan["steps"]["diffusion"] = steps
    plan["stage_seconds"]["diffusion"] = change["stage_seconds"]
    plan["total_seconds"] = round(elapsed_s + change["expected_seconds"], 1)  # what the command now expects to take
    cfg["diffusion"] = scale_schedules(
        cfg["diffusion"], steps, plan["preset_steps"]["diffusion"], plan["preset_schedules"]["diffusion"]
    )
    log.info(
        "time budget: %.1f of %g min left as the denoiser starts, the stages before it ran at %.2fx their planned "
        "time: the denoiser trains %d steps (planned %d), %.1f min%s",
        change["seconds_left"] / 60,
        plan["budget_minutes"],
        change["pace"],
        steps,
        change["from_steps"],
        plan["stage_seconds"]["diffusion"] / 60,
        " (its floor: the command will run past its budget)" if change["past_budget"] else "",
    )
    return True


def retime_denoiser(plan: dict, elapsed_s: float, step: int, step_s: float) -> dict:
    """The denoiser's total steps fixed after `step` steps, `elapsed_s` into the command, from its own `step_s`
    seconds a step: the steps that fill REPLAN_SAFETY of the budget with the figures still to come (at the earlier
    stages' pace), no fewer than its floor or than it has trained. Returns the steps before and after, the seconds a
    step, the stage's expected seconds and the command's (from its start)."""
    pace = plan["denoiser_replanned"]["pace"]
    rest = pace * plan["other_seconds"]["figures"]
    left = REPLAN_SAFETY * plan["budget_minutes"] * 60 - elapsed_s - rest
    lowest = floors({"diffusion": plan["preset_steps"]["diffusion"]})["diffusion"]
    fits = step + math.floor(left / step_s)
    steps = max(lowest, step, fits)
    return {
        "at_step": step,
        "seconds_per_step": round(step_s, 4),
        "from_steps": plan["steps"]["diffusion"],
        "steps": steps,
        "stage_seconds": round(steps * step_s, 1),
        "command_seconds": round(elapsed_s + (steps - step) * step_s + rest, 1),
        "past_budget": fits < steps,
    }


def denoiser_retime(cfg: dict, ctx, started: float, on_change: Callable[[], None]) -> Retime | None:
    """For a denoiser planned again as its stage started (`follow_budget_at_denoiser`): the loop's `Retime`, which
    times its steps within the warm-up and then sets its total (`retime_denoiser`) in `cfg` and in the plan, records
    the change and calls `on_change()` (which writes config.json). None otherwise, and for a warm-up too short to time
    in. `started`: the command's start (time.perf_counter())."""
    plan, c = ctx.extra.get("time_plan"), cfg["diffusion"]
    if plan is None or not plan.get("denoiser_replanned") or "denoiser_retimed" in plan:
        return None
    at = c.warmup_steps - 1
    start = min(RETIME_START, at - 1)
    if start < 1:
        return None

    def decide(step: int, step_s: float) -> int:
        change = retime_denoiser(plan, time.perf_counter() - started, step, step_s)
        plan["denoiser_retimed"] = change
        plan["steps"]["diffusion"] = change["steps"]
        plan["stage_seconds"]["diffusion"] = change["stage_seconds"]
        plan["total_seconds"] = change["command_seconds"]
        cfg["diffusion"] = dataclasses.replace(cfg["diffusion"], steps=change["steps"])
        on_change()
        log.info(
            "time budget: the denoiser's own steps took %.3f s, its calibrated pace said %.3f s: it trains %d steps "
            "(planned %d)%s",
            step_s,
            plan["denoiser_replanned"]["pace"] * plan["seconds_per_step"]["diffusion"],
            change["steps"],
            change["from_steps"],
            " (its floor: the command will run past its budget)" if change["past_budget"] else "",
        )
        return change["steps"]

    return Retime(start, at, decide)


def _interrupted(out_dir, stage: str) -> bool:

    path = out_dir / {"vae": VAE_STATE_FILE, "decoder": DECODER_STATE_FILE, "diffusion": DIFFUSION_STATE_FILE}[stage]
    return path.is_file() and not load_file(path).get("done")


def describe(plan: dict) -> list[str]:
    """The plan as log lines: each stage's speed, steps and expected minutes, the other work, the total."""
    lines = [f"time plan for {plan['budget_minutes']:g} minutes:"]
    for stage, steps in plan["steps"].items():
        rate = 1 / plan["seconds_per_step"][stage]
        lines.append(f"  {stage}: {steps} steps at {rate:.2f} steps/s, {plan['stage_seconds'][stage] / 60:.1f} min")
    lines += [f"  {what}: {seconds / 60:.1f} min" for what, seconds in plan["other_seconds"].items()]
    lines.append(f"  total: {plan['total_seconds'] / 60:.1f} min (steps given as flags train the same model anywhere)")
    return lines


def report_plan(plan: dict, ctx, elapsed_s: float) -> None:
    """Log the planned minutes of each stage and of the command against the real ones, and record the real ones in
    the run facts (config.json)."""

    real = {stage: ctx.extra.get(f"{stage}_seconds") for stage in plan["steps"]}
    ctx.extra["time_plan_real_seconds"] = {**real, "total": round(elapsed_s, 1)}
    parts = [
        f"{stage} {plan['stage_seconds'][stage] / 60:.1f} / {'skipped' if s is None else f'{s / 60:.1f}'}"
        for stage, s in real.items()
    ]
    log.info(
        "time budget %g min, planned / real minutes: %s; the command %.1f / %.1f",
        plan["budget_minutes"],
        ", ".join(parts),
        plan["total_seconds"] / 60,
        elapsed_s / 60,
    )
