"""--time-budget: the plan's arithmetic on given speeds, the refusal, a resumed run that keeps its plan, and a small
budget on the smoke preset end to end. No test asserts on wall time: they assert on plans computed from speeds."""

import json
import math
import time
from pathlib import Path

import pytest
import torch

from checkpoints import DIFFUSION_STATE_FILE, VAE_STATE_FILE, load_file
from conftest import run_main, same_state
from errors import UserInputError
from models import ConditionalUNet, SimpleAutoencoder
from training import budget, calibration
from training.config import DecoderConfig, DiffusionConfig, RunConfig, SampleConfig, VAEConfig
from training.context import RunContext
from training.diffusion import train_denoiser
from training.loop import Retime
from training.optim import set_total, warmup_cosine

PRESET = {"vae": 675, "decoder": 700, "diffusion": 1750}  # the cpu preset's steps
SPEED = {"vae": 0.37, "decoder": 0.31, "diffusion": 0.40}  # seconds a step, as on a 2-core CPU with bf16


def cost(steps: dict) -> float:
    return sum(n * SPEED[s] for s, n in steps.items())


def test_the_preset_s_own_time_plans_the_preset_and_more_time_goes_to_the_denoiser():
    assert budget.plan_steps(cost(PRESET), SPEED, PRESET, {}) == PRESET
    doubled = budget.plan_steps(2 * cost(PRESET), SPEED, PRESET, {})
    assert doubled["vae"] == 675 and doubled["decoder"] == 700  # past their knees: more buys them nothing
    assert doubled["diffusion"] == math.floor(1750 + cost(PRESET) / SPEED["diffusion"])
    assert cost(doubled) <= 2 * cost(PRESET)


def test_a_smaller_budget_shrinks_every_stage_alike_down_to_a_knee_then_the_denoiser_gives():
    plan = budget.plan_steps(0.95 * cost(PRESET), SPEED, PRESET, {})
    assert all(abs(plan[s] - 0.95 * n) <= 1 for s, n in PRESET.items())
    plan = budget.plan_steps(0.65 * cost(PRESET), SPEED, PRESET, {})
    knees = {s: math.floor(budget.KNEE[s] * PRESET[s]) for s in ("vae", "decoder")}
    assert knees == {"vae": 607, "decoder": 489} and {s: plan[s] for s in knees} == knees  # held at their knees
    rest = (0.65 * cost(PRESET) - cost(knees)) / SPEED["diffusion"]  # the denoiser takes what they leave
    assert rest - 2 <= plan["diffusion"] <= rest < 0.65 * 1750 and cost(plan) <= 0.65 * cost(PRESET)
    small = budget.plan_steps(0.45 * cost(PRESET), SPEED, PRESET, {})  # the knees would leave the denoiser < its floor
    floors = budget.floors(PRESET)
    assert small["diffusion"] == floors["diffusion"] and cost(small) <= 0.45 * cost(PRESET)
    assert all(floors[s] < small[s] < knees[s] for s in knees)


def test_near_the_floors_the_others_shrink_so_the_denoiser_keeps_its_floor():
    floors = budget.floors(PRESET)
    assert floors == {"vae": 169, "decoder": 175, "diffusion": 438}
    tight = cost(floors) + 20
    plan = budget.plan_steps(tight, SPEED, PRESET, {})
    assert plan["diffusion"] == 438 and all(plan[s] >= floors[s] for s in PRESET) and cost(plan) <= tight + 1e-9
    with pytest.raises(budget.BudgetTooSmall) as info:
        budget.plan_steps(cost(floors) - 1, SPEED, PRESET, {})
    assert info.value.minimum_s == pytest.approx(cost(floors))


def test_steps_given_as_flags_are_kept_and_the_rest_of_the_budget_is_split():
    plan = budget.plan_steps(cost(PRESET), SPEED, PRESET, {"vae": 100})
    assert plan["vae"] == 100 and plan["decoder"] == 700  # the VAE's saved time buys denoiser steps
    assert plan["diffusion"] == math.floor(1750 + (675 - 100) * SPEED["vae"] / SPEED["diffusion"])
    only = budget.plan_steps(cost(PRESET), SPEED, PRESET, {"diffusion": 1000})
    assert only["diffusion"] == 1000 and only["vae"] > 675 and cost(only) <= cost(PRESET)
    retrain = budget.plan_steps(400.0, {"diffusion": 0.4}, PRESET, {})  # --retrain-diffusion: it takes it all
    assert retrain == {"diffusion": 1000}


def speeds(**overrides) -> budget.Speeds:
    values = dict(
        step_seconds=dict(SPEED),
        first_step_extra={s: 1.0 for s in SPEED},
        encoding_seconds=20.0,
        figures_seconds=30.0,
        calibration_seconds=10.0,
    )
    return budget.Speeds(**{**values, **overrides})


def test_the_plan_counts_the_other_work_and_fits_the_budget():
    plan = budget.make_plan(15, 25.0, speeds(), PRESET, {})
    assert plan["total_seconds"] <= 15 * 60 and plan["total_seconds"] >= 0.9 * 15 * 60
    assert plan["other_seconds"] == {
        "before planning (data, calibration)": 25.0,
        "encoding the training set": 20.0,
        "figures": 30.0,
        "first steps (compilation, warm-up)": 3.0,
    }
    assert set(plan["steps"]) == set(PRESET) and plan["stage_seconds"]["vae"] == round(plan["steps"]["vae"] * 0.37, 1)
    lines = budget.describe({**plan, "preset_steps": PRESET})
    assert lines[0] == "time plan for 15 minutes:" and lines[-1].startswith("  total: ")


def test_a_budget_too_small_is_one_line_naming_the_smallest_that_works():
    with pytest.raises(UserInputError) as info:
        budget.make_plan(2, 25.0, speeds(), PRESET, {})
    message = str(info.value)
    assert "\n" not in message and message.startswith("--time-budget 2 is too small on this machine")
    smallest = (cost(budget.floors(PRESET)) + 25 + 20 + 30 + 3) / budget.SAFETY / 60
    assert message.endswith(f"is {math.ceil(smallest * 10) / 10:g} minutes")
    budget.make_plan(math.ceil(smallest * 10) / 10, 25.0, speeds(), PRESET, {})  # that one is planned


def test_the_figures_are_calibrated_on_one_sampling_batch_after_a_short_one(monkeypatch):
    """A guided batch takes seconds: timed like a training step (a first call, 2 discarded, 5 timed) it was most of
    the calibration. Now a batch of a few sampler steps warms up the same shapes and one full batch is timed."""
    drawn = []

    def draw(autoencoder, diffusion, label, n, options, seed):
        drawn.append((n, options.step_count))
        time.sleep(0.001 * options.step_count)

    monkeypatch.setattr(calibration, "generate_class_samples", draw)
    cfg, ctx = {"sample": SampleConfig()}, RunContext(device=torch.device("cpu"), out_dir=Path("."))
    assert calibration.calibrate(cfg, ctx, (), 100, figures=False).figures_seconds == 0 and drawn == []
    speeds = calibration.calibrate(cfg, ctx, (), 100, figures=True)
    full = cfg["sample"].options().step_count
    assert drawn == [(64, calibration.WARMUP_SAMPLER_STEPS), (64, full)] and calibration.WARMUP_SAMPLER_STEPS < full
    assert speeds.figures_seconds >= calibration.FIGURE_BATCHES * 0.001 * full  # the full batch is what was timed


def test_fewer_steps_than_the_preset_scale_the_warm_up_and_the_ema_half_life_alike():
    cfg = DiffusionConfig(steps=1750, warmup_steps=100, ema_decay=0.998)
    half = budget.scale_schedules(cfg, 875, 1750)
    assert half.steps == 875 and half.warmup_steps == 50
    half_life = lambda d: math.log(0.5) / math.log(d)  # noqa: E731
    assert half_life(half.ema_decay) == pytest.approx(half_life(0.998) / 2)
    more = budget.scale_schedules(cfg, 3000, 1750)
    assert (more.steps, more.warmup_steps, more.ema_decay) == (3000, 100, 0.998)
    vae = budget.scale_schedules(VAEConfig(steps=675, warmup_steps=50), 338, 675)
    assert vae.warmup_steps == 25 and vae.kl_start == VAEConfig().kl_start  # phases are fractions already


def test_a_resumed_budgeted_run_follows_its_recorded_plan(tmp_path, monkeypatch):
    recorded = {"budget_minutes": 15, "steps": {"vae": 300, "decoder": 350, "diffusion": 900}}
    recorded.update(seconds_per_step=SPEED, stage_seconds={s: 1.0 for s in SPEED}, other_seconds={}, total_seconds=3.0)
    facts = {"time_plan": {**recorded, "preset_steps": PRESET}}
    (tmp_path / "config.json").write_text(json.dumps({"run_facts": facts}))
    torch.save({"done": False, "step": 100}, tmp_path / VAE_STATE_FILE)  # the VAE stage was interrupted
    monkeypatch.setattr(budget, "calibrate", lambda *a, **k: pytest.fail("a resumed run planned again"))
    cfg = {
        "run": RunConfig(time_budget=15),
        "vae": VAEConfig(steps=675, warmup_steps=50),
        "decoder": DecoderConfig(steps=700),
        "diffusion": DiffusionConfig(steps=1750, ema_decay=0.998),
        "sample": SampleConfig(),
    }
    ctx = RunContext(device=torch.device("cpu"), out_dir=Path(tmp_path), resume=True)
    plan = budget.follow_budget(cfg, ctx, 9000, {}, 5.0)
    assert plan["steps"] == recorded["steps"] and plan["denoiser_replanned"] is None  # nor planned again later
    assert (cfg["vae"].steps, cfg["decoder"].steps, cfg["diffusion"].steps) == (300, 350, 900)
    assert cfg["diffusion"].warmup_steps == round(100 * 900 / 1750)  # the same schedules as when it was planned
    facts["time_plan"]["denoiser_retimed"] = {"from_steps": 800}  # its total was fixed in its loop: 800 -> 900
    (tmp_path / "config.json").write_text(json.dumps({"run_facts": facts}))
    cfg["diffusion"] = DiffusionConfig(steps=1750, ema_decay=0.998)
    budget.follow_budget(cfg, ctx, 9000, {}, 5.0)
    assert cfg["diffusion"].steps == 900 and cfg["diffusion"].warmup_steps == round(100 * 800 / 1750)
    assert cfg["diffusion"].ema_decay == budget.scale_schedules(DiffusionConfig(ema_decay=0.998), 800, 1750).ema_decay


def fresh_plan(**fixed) -> dict:
    """A plan as follow_budget makes it in the command that trains (15 minutes, the speeds above)."""
    plan = budget.make_plan(15, 25.0, speeds(), PRESET, fixed)
    schedules = {"vae": {"warmup_steps": 50}, "decoder": {"warmup_steps": 50}}
    schedules["diffusion"] = {"warmup_steps": 100, "ema_decay": 0.998}
    return {**plan, "preset_steps": PRESET, "preset_schedules": schedules, "given": sorted(fixed)}


def test_the_denoiser_is_planned_again_from_the_time_left_and_the_earlier_stages_pace():
    plan = fresh_plan()
    # what the plan gave the stages before the denoiser: their steps, first step (1 s) and encoding pass (20 s / 4)
    on_time = {s: plan["stage_seconds"][s] + 1.0 + 5.0 for s in ("vae", "decoder")}
    elapsed = 25.0 + sum(on_time.values())  # they ran as planned
    same = budget.replan_denoiser(plan, elapsed, on_time)
    spare = (budget.REPLAN_SAFETY - budget.SAFETY) * 15 * 60  # the re-plan fills more of the budget
    assert same["pace"] == 1.0 and abs(same["steps"] - plan["steps"]["diffusion"] - spare / SPEED["diffusion"]) < 2
    assert abs(elapsed + same["expected_seconds"] - plan["total_seconds"] - spare) < 2 * SPEED["diffusion"]
    slow = {s: 1.3 * t for s, t in on_time.items()}  # the machine slowed down by 30%
    late = budget.replan_denoiser(plan, 25.0 + sum(slow.values()), slow)
    assert late["pace"] == 1.3 and late["from_steps"] == plan["steps"]["diffusion"]
    left = budget.REPLAN_SAFETY * 15 * 60 - 25.0 - sum(slow.values())
    rest = 1.3 * (2 * 5.0 + 30.0) + 1.0  # its two encoding passes and the figures at that pace, its first step
    assert late["steps"] == math.floor((left - rest) / (1.3 * SPEED["diffusion"])) < plan["steps"]["diffusion"]
    assert late["expected_seconds"] <= left
    fast = {s: 0.8 * t for s, t in on_time.items()}
    assert budget.replan_denoiser(plan, 25.0 + sum(fast.values()), fast)["steps"] > plan["steps"]["diffusion"]
    paused = {s: 10 * t for s, t in on_time.items()}  # a laptop asleep for a while is not a pace
    assert budget.replan_denoiser(plan, 25.0, paused)["pace"] == budget.PACE_LIMITS[1]
    gone = budget.replan_denoiser(plan, 15 * 60, on_time)  # no time left: the floor, said to run past the budget
    assert gone["steps"] == budget.floors(PRESET)["diffusion"] and gone["past_budget"]
    alone = budget.replan_denoiser(plan, 25.0, {"vae": None, "decoder": None})  # --retrain-diffusion: no pace yet
    assert alone["pace"] == 1.0 and not alone["past_budget"]


def test_planning_the_denoiser_again_sets_its_steps_and_schedules_from_the_preset_and_records_it():
    plan = fresh_plan()
    cfg = {"diffusion": budget.scale_schedules(DiffusionConfig(steps=1750, ema_decay=0.998), 1000, 1750)}
    ctx = RunContext(device=torch.device("cpu"), out_dir=Path("."))
    ctx.extra.update(time_plan=plan, vae_seconds=1.3 * plan["stage_seconds"]["vae"])
    ctx.extra["decoder_seconds"] = 1.3 * plan["stage_seconds"]["decoder"]
    total = plan["total_seconds"]
    assert budget.follow_budget_at_denoiser(cfg, ctx, 400.0)
    steps = plan["steps"]["diffusion"]
    assert plan["denoiser_replanned"]["steps"] == steps == cfg["diffusion"].steps
    assert cfg["diffusion"].warmup_steps == round(100 * steps / 1750)  # scaled from the preset's, not twice
    half_life = lambda d: math.log(0.5) / math.log(d)  # noqa: E731
    assert half_life(cfg["diffusion"].ema_decay) == pytest.approx(half_life(0.998) * steps / 1750)
    pace = plan["denoiser_replanned"]["pace"]
    seconds = steps * pace * SPEED["diffusion"]  # (the recorded pace is rounded to 3 decimals)
    assert 1.2 < pace < 1.3 and plan["stage_seconds"]["diffusion"] == pytest.approx(seconds, abs=0.3)
    assert plan["total_seconds"] == round(400.0 + plan["denoiser_replanned"]["expected_seconds"], 1) != total
    assert not budget.follow_budget_at_denoiser(cfg, ctx, 400.0)  # once
    given = fresh_plan(diffusion=1200)
    ctx.extra["time_plan"] = given
    assert not budget.follow_budget_at_denoiser(cfg, ctx, 400.0) and given["steps"]["diffusion"] == 1200  # a flag's
    resumed = {**fresh_plan(), "denoiser_replanned": None}  # as follow_budget leaves a resumed run's plan
    ctx.extra["time_plan"] = resumed
    assert not budget.follow_budget_at_denoiser(cfg, ctx, 400.0)


def tiny_denoiser(out: Path, steps: int, retime: Retime | None = None) -> tuple[ConditionalUNet, dict, str]:
    """A small denoiser trained `steps` steps (warm-up 6) on fixed random latents: its EMA weights, its training
    state and its metrics log."""
    torch.manual_seed(0)
    unet, autoencoder = ConditionalUNet(hidden_dims=[16, 32, 16], time_emb_dim=32), SimpleAutoencoder()
    gen = torch.Generator().manual_seed(1)
    latents = (torch.randn(64, 256, generator=gen), torch.full((64, 256), -4.0), torch.randint(0, 2, (64,)))
    cfg = DiffusionConfig(steps=steps, batch_size=16, lr=1e-3, warmup_steps=6, ema_decay=0.9, compile="off")
    ctx = RunContext(device=torch.device("cpu"), out_dir=out, log_every=1, checkpoint_every=1000)
    unet = train_denoiser(unet, latents, autoencoder, cfg, ctx, torch.Generator().manual_seed(2), None, retime)
    return unet, load_file(out / DIFFUSION_STATE_FILE), (out / "metrics_diffusion.jsonl").read_text()


def test_a_total_fixed_within_the_warm_up_trains_as_if_it_had_been_given_up_front(tmp_path):
    asked = []
    decide = lambda step, step_s: asked.append((step, step_s)) or 9  # noqa: E731
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    fixed, fixed_state, fixed_log = tiny_denoiser(tmp_path / "a", 12, Retime(2, 5, decide))
    given, given_state, given_log = tiny_denoiser(tmp_path / "b", 9)
    assert len(asked) == 1 and asked[0][0] == 5 and asked[0][1] > 0  # timed steps 3 to 5, then asked once
    assert same_state(fixed.state_dict(), given.state_dict()) and fixed_log == given_log  # lr and losses alike
    assert json.loads(fixed_log.splitlines()[-1])["step"] == 9
    assert same_state(fixed_state["model"], given_state["model"])  # and a resumed run continues the same way:
    moments = lambda state: {f"{i}{k}": v for i, p in state["optimizer"]["state"].items() for k, v in p.items()}  # noqa
    assert same_state(moments(fixed_state), moments(given_state))
    for part in ("scheduler", "config", "step"):
        assert fixed_state[part] == given_state[part], part
    assert fixed_state["config"]["steps"] == 9 and fixed_state["scheduler"]["lr_lambdas"][0]["total"] == 9
    with pytest.raises(ValueError, match="only within its 6-step warm-up"):
        tiny_denoiser(tmp_path / "a", 12, Retime(2, 6, decide))
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = warmup_cosine(opt, 2, 10)
    for _ in range(2):
        opt.step(), schedule.step()
    with pytest.raises(ValueError, match="still in its warm-up"):  # the factors it gave would have depended on it
        set_total(schedule, 5)


def replanned_plan(pace: float = 1.1) -> dict:
    """A plan whose denoiser was planned again as its stage started, at `pace`."""
    plan = fresh_plan()
    plan["denoiser_replanned"] = {"pace": pace, "steps": plan["steps"]["diffusion"]}
    return plan


def test_the_denoiser_fixes_its_total_from_its_own_pace_in_its_warm_up():
    plan = replanned_plan()
    left = budget.REPLAN_SAFETY * 15 * 60 - 420.0 - 1.1 * plan["other_seconds"]["figures"]  # the figures still to come
    change = budget.retime_denoiser(plan, 420.0, 40, 0.35)
    assert change["steps"] == 40 + math.floor(left / 0.35) and change["from_steps"] == plan["steps"]["diffusion"]
    assert budget.REPLAN_SAFETY * 900 - 0.35 <= change["command_seconds"] <= budget.REPLAN_SAFETY * 900
    slower = budget.retime_denoiser(plan, 420.0, 40, 0.45)
    assert slower["steps"] < change["steps"] and not slower["past_budget"]
    late = budget.retime_denoiser(plan, 880.0, 40, 0.35)  # no time left: its floor, said to run past the budget
    assert late["steps"] == budget.floors(PRESET)["diffusion"] and late["past_budget"]


def retime_cfg(warmup: int = 58) -> dict:
    return {"diffusion": DiffusionConfig(steps=1010, warmup_steps=warmup, ema_decay=0.9965)}


def test_the_loop_s_retime_sets_the_total_in_the_config_and_the_plan_and_writes_them_once():
    ctx = RunContext(device=torch.device("cpu"), out_dir=Path("."))
    cfg, writes = retime_cfg(), []
    assert budget.denoiser_retime(cfg, ctx, 0.0, lambda: writes.append(1)) is None  # no budget
    ctx.extra["time_plan"] = plan = replanned_plan()
    retime = budget.denoiser_retime(cfg, ctx, time.perf_counter() - 420.0, lambda: writes.append(1))
    assert (retime.start, retime.at) == (budget.RETIME_START, 57)  # timed through the warm-up, fixed within it
    steps = retime.decide(retime.at, 0.35)
    assert writes == [1] and plan["denoiser_retimed"]["steps"] == steps == plan["steps"]["diffusion"]
    assert cfg["diffusion"].steps == steps and cfg["diffusion"].warmup_steps == 58  # the warm-up it started with
    assert plan["total_seconds"] == plan["denoiser_retimed"]["command_seconds"]
    assert budget.denoiser_retime(cfg, ctx, 0.0, lambda: None) is None  # once
    ctx.extra["time_plan"] = replanned_plan()
    short = budget.denoiser_retime(retime_cfg(warmup=5), ctx, 0.0, lambda: None)
    assert (short.start, short.at) == (3, 4)  # a short warm-up: timed within it
    assert budget.denoiser_retime(retime_cfg(warmup=2), ctx, 0.0, lambda: None) is None  # too short to time in
    ctx.extra["time_plan"] = {**replanned_plan(), "denoiser_replanned": None}  # a resumed run's plan
    assert budget.denoiser_retime(retime_cfg(), ctx, 0.0, lambda: None) is None


def test_under_torchrun_a_budget_is_refused_before_any_process_plans_its_own_steps(tmp_path):
    cfg = {"run": type("Run", (), {"time_budget": 15})()}
    ctx = RunContext(device=torch.device("cpu"), out_dir=Path(tmp_path), world_size=2)
    with pytest.raises(UserInputError, match="--time-budget plans on one process: under torchrun give"):
        budget.follow_budget(cfg, ctx, 9000, {}, 5.0)


@pytest.mark.slow
def test_a_small_budget_on_the_smoke_preset_runs_end_to_end_and_records_its_plan(image_folder, tmp_path):
    """A budget too small for this machine is refused in one line naming the smallest that works; that one runs."""
    base = ["--preset", "smoke", "--device", "cpu", "--threads", "1", "--data-dir", str(image_folder), "--no-figures"]
    refused = run_main(*base, "--output-dir", str(tmp_path / "none"), "--time-budget", "0.01", "--vae-steps", "8")
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr[-2000:]
    assert refused.stderr.startswith("error: --time-budget 0.01 is too small on this machine")
    assert not (tmp_path / "none").exists()  # nothing written that a later run would trip over
    smallest = float(refused.stderr.rsplit(" is ", 1)[1].split()[0])
    out, minutes = tmp_path / "run", smallest + 0.2  # the calibration's own jitter between the two commands
    proc = run_main(*base, "--output-dir", str(out), "--time-budget", str(minutes), "--vae-steps", "8")
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = json.loads((out / "config.json").read_text())
    plan = config["run_facts"]["time_plan"]
    assert plan["steps"]["vae"] == 8 and config["vae"]["steps"] == 8  # the flag's steps are kept
    assert {s: config[s]["steps"] for s in ("decoder", "diffusion")} == {
        s: plan["steps"][s] for s in ("decoder", "diffusion")
    }
    retimed = plan["denoiser_retimed"]  # planned again as it started, then its total fixed from its own steps
    assert plan["denoiser_replanned"]["steps"] == retimed["from_steps"]
    assert retimed["steps"] == plan["steps"]["diffusion"] == config["diffusion"]["steps"]
    assert retimed["at_step"] < config["diffusion"]["warmup_steps"] and "its calibrated pace said" in proc.stderr
    assert plan["total_seconds"] <= minutes * 60 and f"time plan for {minutes:g} minutes:" in proc.stderr
    assert "planned / real minutes" in proc.stderr and "total" in config["run_facts"]["time_plan_real_seconds"]
    metrics = (out / "metrics_diffusion.jsonl").read_text().splitlines()
    assert json.loads(metrics[-1])["step"] == plan["steps"]["diffusion"]  # it trained the planned steps
