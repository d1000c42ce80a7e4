"""Train the class-conditional latent diffusion model of CIFAR-10 cats and dogs, or sample from a trained one: the
stages in order, and the commands. `python main.py --help` names the commands (cli.py)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sys
import time

import torch

from errors import UserInputError
from models import (
    ConditionalDenoiseDiffusion,
    ConditionalUNet,
    SimpleAutoencoder,
)
from checkpoints import (
    AUTOENCODER_FILE,
    DECODER_STATE_FILE,
    DIFFUSION_FILE,
    DIFFUSION_STATE_FILE,
    VAE_STATE_FILE,
    load_file,
    load_weights,
)
from evaluation.evaluate import scored_outputs
from training.budget import (
    STAGES,
    denoiser_retime,
    follow_budget,
    follow_budget_at_denoiser,
    report_plan,
    stages_to_train,
)
from cli import check_flags, check_option_use, explicit_flags, parse_args, recorded_config, resolve_configs
from commands import diagnose, evaluate, load_splits, sample, sample_seed
from training.board import write_image
from training.decoder import latent_space_fingerprint, train_decoder
from training.diffusion import train_diffusion
from training.loop import interrupts_remembered
from models.compiled import compile_mode
from training.run import (
    check_output_dir,
    check_recorded_data,
    check_split,
    folder_lock,
    log_to_file,
    make_context,
    precision_note,
    prepare_output_dir,
    resolve_paths,
    setup_logging,
    split_record,
    write_config,
    write_split,
)
from training.reuse import adopt_autoencoder, source_autoencoder
from training.vae import train_vae
from visualization import write_diffusion_figures, write_loss_curves, write_vae_figures
from visualization.report import figure_files

log = logging.getLogger("main")
STARTED = time.perf_counter()  # the command's start: --time-budget counts from here


def train(cfg: dict, fixed_steps: dict[str, int] | None = None) -> None:
    """Run the stages in order: data, VAE (unless done), decoder stage and diffusion (unless done), figures; with
    --time-budget, first plan the stages' steps (`fixed_steps`: those given as flags)."""
    cfg["run"] = resolve_paths(cfg["run"])
    run = cfg["run"]
    ctx = make_context(run)
    setup_logging(None, ctx.is_main)
    check_output_dir(ctx.out_dir)
    check_recorded_data(run, ctx.out_dir)
    train_set, held = load_splits(run)  # bad data fails here, before the output folder exists
    split = split_record(run, train_set, held)
    if not run.retrain_vae:  # finished or interrupted stages of this folder were trained on the recorded split
        check_split(
            ctx.out_dir, split, "pass --retrain-vae to train the run anew on this data, or another --output-dir"
        )
    if run.autoencoder_from is not None:  # a folder without one, or of another layout: refused before any work
        source_autoencoder(run.autoencoder_from, ctx.out_dir)
    ctx.records = bool(stages_to_train(cfg, ctx.out_dir)) or not (ctx.out_dir / "config.json").is_file()
    if not ctx.records:
        log.info("every stage of %s is trained: nothing to train, its config.json stays as it is", ctx.out_dir)
    plan = follow_budget(cfg, ctx, len(train_set), fixed_steps or {}, time.perf_counter() - STARTED)
    if ctx.is_main:
        prepare_output_dir(ctx.out_dir)
    with folder_lock(ctx.out_dir, "train", ctx.is_main):
        setup_logging(ctx.out_dir, ctx.is_main)
        source = f" ({train_set.source})" if train_set.source else ""
        log.info("data: %d training and %d held-out images%s", len(train_set), len(held), source)
        log.info(precision_note(run.amp, ctx))
        if plan is not None:
            ctx.extra["time_plan"] = plan
            log.info("the time plan above (written to config.json): %s", plan["steps"])
        run_stages(cfg, ctx, train_set, held, split)
        if plan is not None:
            report_plan(plan, ctx, time.perf_counter() - STARTED)
            write_config(cfg, ctx)
    if ctx.is_main:
        grid = " and samples/samples_grid_final.png" if run.figures else ""
        print(f"done: {ctx.out_dir} holds {AUTOENCODER_FILE}, {DIFFUSION_FILE}{grid}; log.txt says what ran")


def run_stages(cfg: dict, ctx, train_set, held, split: dict) -> None:
    """The VAE (unless done), the decoder stage (unless done), the diffusion model (unless done), then the figures and
    the run's config.json."""
    run = cfg["run"]
    torch.manual_seed(run.seed)  # model initialisation only; identical on every rank
    autoencoder = SimpleAutoencoder().to(ctx.device)
    unet = ConditionalUNet(prediction=cfg["diffusion"].prediction).to(ctx.device)
    if run.autoencoder_from is not None and ctx.is_main:
        ctx.extra["autoencoder_from"] = adopt_autoencoder(cfg, ctx.out_dir, split)
        write_split(ctx.out_dir, split)
    if ctx.world_size > 1:
        torch.distributed.barrier()  # the copied autoencoder is in the folder before any process reads it
    vae_trained = vae_stage(autoencoder, train_set, held, cfg, ctx, split)
    write_config(cfg, ctx)
    decoder_trained = decoder_stage(autoencoder, train_set, held, cfg, ctx, vae_trained)
    if ctx.is_main and run.figures and (vae_trained or decoder_trained):
        write_vae_figures(autoencoder, held, ctx.out_dir, "final")
    write_config(cfg, ctx)
    diffusion_stage(unet, autoencoder, train_set, held, cfg, ctx, vae_trained)
    if ctx.is_main and run.figures:
        diffusion = ConditionalDenoiseDiffusion(unet.eval(), device=ctx.device)
        diffusion.compile(compile_mode(cfg["diffusion"].compile, ctx.device))
        with timed(ctx, "figures_seconds"):
            write_diffusion_figures(
                autoencoder.eval(),
                diffusion,
                held,
                ctx.out_dir,
                "final",
                cfg["sample"].options(),
                sample_seed(cfg),
                cfg["sample"].num_samples,
            )
            write_loss_curves(ctx.out_dir)
            write_image(ctx.out_dir, "samples_grid_final", ctx.out_dir / "samples" / "samples_grid_final.png")
    write_config(cfg, ctx)


def stage_generator(cfg: dict, ctx, offset: int) -> torch.Generator:
    """The generator of one stage: its own seed, different on every rank (each draws its own batches)."""
    return torch.Generator(ctx.device).manual_seed(cfg["run"].seed + offset + 7919 * ctx.rank)


def record_skipped_stage(cfg: dict, ctx, section: str, state_file: str) -> None:
    """A stage skipped because its checkpoint exists: config.json records the options it was trained with (from its
    training state), not this command's, or says that they are unknown."""
    path = ctx.out_dir / state_file
    trained_with = load_file(path).get("config") if path.is_file() else None
    if isinstance(trained_with, dict):
        cls = type(cfg[section])
        known = {f.name for f in dataclasses.fields(cls)}
        cfg[section] = cls(**{k: v for k, v in trained_with.items() if k in known})
        ctx.extra[f"{section}_stage"] = "skipped: its checkpoint exists; options as recorded in its training state"
    else:
        ctx.extra[f"{section}_stage"] = "skipped: its checkpoint exists; the options it was trained with are unknown"


def remove_stale_outputs(ctx, networks: tuple[str, ...]) -> None:
    """Before a stage trains `networks` anew: remove the figures drawn from them and every score of the run, so that
    the folder never shows the previous models' images or numbers beside the new ones (--no-figures writes no new
    figures; evaluate and diagnose write new scores)."""
    if not ctx.is_main:
        return
    stale = figure_files(ctx.out_dir, networks) + scored_outputs(ctx.out_dir)
    for path in stale:
        path.unlink(missing_ok=True)
    if stale:
        log.info("removed %d figures and scores of the previous %s", len(stale), " and ".join(networks))


def vae_stage(autoencoder, train_set, held, cfg: dict, ctx, split: dict) -> bool:
    """Train the VAE (recording the `split` it trains on), or load it when its checkpoint exists; return whether it
    was trained now."""
    if cfg["run"].autoencoder_from is not None:
        load_weights(autoencoder, ctx.out_dir / AUTOENCODER_FILE, ctx.device)
        ctx.extra["vae_stage"] = "copied (--autoencoder-from; run_facts.autoencoder_from)"
        return False
    if (ctx.out_dir / AUTOENCODER_FILE).is_file() and not cfg["run"].retrain_vae:
        log.info("VAE checkpoint found, skipping VAE training (--retrain-vae to train it again)")
        load_weights(autoencoder, ctx.out_dir / AUTOENCODER_FILE, ctx.device)
        record_skipped_stage(cfg, ctx, "vae", VAE_STATE_FILE)
        return False
    write_config(cfg, ctx)
    if ctx.is_main:
        write_split(ctx.out_dir, split)
    figures = lambda step, ae: write_vae_figures(ae, held, ctx.out_dir, f"step_{step}")  # noqa: E731
    remove_stale_outputs(ctx, ("autoencoder", "denoiser"))
    with timed(ctx, "vae_seconds"):
        train_vae(autoencoder, train_set, held, cfg["vae"], ctx, stage_generator(cfg, ctx, 1), figures)
    ctx.resume = False  # a new VAE makes any earlier decoder or diffusion state stale
    return True


def decoder_stage(autoencoder, train_set, held, cfg: dict, ctx, vae_trained: bool) -> bool:
    """Fine-tune the VAE's decoder on its frozen latent space (training/decoder.py), unless it is off or already done
    for this latent space and the VAE was not trained now; return whether it ran now. The latents do not change, so
    the diffusion stage never needs retraining for it. A VAE trained now wrote its pixel-loss decoder into the public
    file, so the stage runs again even where the new encoder equals the old one (same seed, same fingerprint)."""
    path = ctx.out_dir / DECODER_STATE_FILE
    if cfg["run"].autoencoder_from is not None:
        ctx.extra["decoder_stage"] = "copied with the autoencoder (--autoencoder-from)"
        return False
    if cfg["decoder"].steps == 0:
        ctx.extra["decoder_stage"] = "off (--decoder-steps 0): the VAE's pixel-loss decoder"
        return False
    state = load_file(path, ctx.device) if path.is_file() else {}
    fingerprint = state.get("latent_space", {}).get("fingerprint")
    done = state.get("done") and fingerprint == latent_space_fingerprint(autoencoder) and not vae_trained
    if done and not cfg["run"].retrain_decoder:
        log.info("decoder stage done for this VAE, skipping it (--retrain-decoder to run it again)")
        record_skipped_stage(cfg, ctx, "decoder", DECODER_STATE_FILE)
        return False
    if not (ctx.resume and state and not state.get("done")):  # a fresh start: from the VAE's pixel-loss decoder
        restore_pixel_decoder(autoencoder, ctx)
    remove_stale_outputs(ctx, ("autoencoder", "denoiser"))
    with timed(ctx, "decoder_seconds"):
        train_decoder(autoencoder, train_set, held, cfg["decoder"], ctx, stage_generator(cfg, ctx, 3))
    return True


def restore_pixel_decoder(autoencoder, ctx) -> None:
    """Put the VAE stage's own decoder (from its finished training state) back into `autoencoder`, so that a decoder
    stage run again starts where the first one did; without that state, from the decoder the public file holds."""
    path = ctx.out_dir / VAE_STATE_FILE
    state = load_file(path, ctx.device) if path.is_file() else {}
    if not state.get("done"):
        log.warning("no finished %s: the decoder stage starts from the decoder in %s", path, AUTOENCODER_FILE)
        return
    prefix = "decoder."
    decoder = {k[len(prefix) :]: v for k, v in state["model"].items() if k.startswith(prefix)}
    autoencoder.decoder.load_state_dict(decoder)


def diffusion_stage(unet, autoencoder, train_set, held, cfg: dict, ctx, vae_trained: bool) -> None:
    """Train the diffusion model, or load it when its checkpoint exists and the VAE did not change."""
    if not vae_trained and (ctx.out_dir / DIFFUSION_FILE).is_file() and not cfg["run"].retrain_diffusion:
        log.info("diffusion checkpoint found, skipping diffusion training (--retrain-diffusion to train it again)")
        load_weights(unet, ctx.out_dir / DIFFUSION_FILE, ctx.device)
        record_skipped_stage(cfg, ctx, "diffusion", DIFFUSION_STATE_FILE)
        return
    smp = cfg["sample"]

    def figures(step, diffusion):
        write_diffusion_figures(
            autoencoder,
            diffusion,
            held,
            ctx.out_dir,
            f"step_{step}",
            smp.options(),
            sample_seed(cfg),
            smp.num_samples,
            animations=False,
        )

    remove_stale_outputs(ctx, ("denoiser",))
    if follow_budget_at_denoiser(cfg, ctx, time.perf_counter() - STARTED):
        write_config(cfg, ctx)  # an interrupted run resumes with these steps
    retime = denoiser_retime(cfg, ctx, STARTED, lambda: write_config(cfg, ctx))  # and with the total it fixes
    with timed(ctx, "diffusion_seconds"):
        generator = stage_generator(cfg, ctx, 2)
        train_diffusion(unet, autoencoder, train_set, cfg["diffusion"], ctx, generator, figures, retime)


@contextlib.contextmanager
def timed(ctx, key: str):
    """Record the wall time of a block in the run facts (written to config.json)."""
    start = time.perf_counter()
    yield
    ctx.extra[key] = round(time.perf_counter() - start, 1)
    log.info("%s: %.1f s", key, ctx.extra[key])


INTERRUPTED = {
    "train": "interrupted: training state saved; run the same command again to resume",
    "sample": "interrupted: the images drawn so far are written (each batch as it is drawn); the grid is not",
    "evaluate": "interrupted: nothing was written",
    "diagnose": "interrupted: nothing was written",
}


def fail(message: str, code: int) -> int:
    """Print the one line a failed command ends with, write it to the run's log.txt too, and return its exit code."""
    print(message, file=sys.stderr)
    log_to_file(message.strip())
    return code


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except UserInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        with interrupts_remembered():
            check_flags(args)
            preset = args.preset or "default" if args.command == "train" else args.preset  # train: never a record's
            cfg = resolve_configs(args, preset, recorded_config(args))
            check_option_use(args, cfg)
            if args.command == "train":
                train(cfg, {s: cfg[s].steps for s in STAGES if "steps" in explicit_flags(args, s)})
            elif args.command == "sample":
                sample(cfg)
            elif args.command == "evaluate":
                evaluate(cfg)
            else:
                diagnose(cfg)
    except UserInputError as err:
        return fail(f"error: {err}", 2)
    except FloatingPointError as err:
        return fail(f"error: {err}", 3)
    except KeyboardInterrupt:
        return fail(f"\n{INTERRUPTED[args.command]}", 130)
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
