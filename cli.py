"""The command line of main.py: which options each command takes, its --help, and the checks that refuse an option
before any work is done; and the options a trained run recorded, which sample, evaluate and diagnose start from."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

from data import CLASS_NAMES
from errors import UserInputError
from models import SamplingOptions
from models.pipeline import run_dir
from training.config import (
    PRESETS,
    RUN_DATA_OPTIONS,
    SECTIONS,
    Parser,
    RunConfig,
    add_config_args,
    check_unknown_flags,
    explicit_flags,
    flag_of,
)

log = logging.getLogger("main")
USAGE = """Train the class-conditional latent diffusion model of CIFAR-10 cats and dogs, or sample from a trained one.

python main.py                      # train (VAE, decoder stage, diffusion; finished stages are skipped), draw samples
python main.py --preset cpu         # a run sized for a 2-core CPU (--time-budget MINUTES: sized by time)
python main.py sample --class dog --num-samples 64 --sample-seed 0
python main.py evaluate             # PSNR/SSIM, class fidelity, feature distance, FID/KID where weights exist
python main.py diagnose             # which part of the run limits its samples: the denoiser or the decoder
"""
SAMPLER = {f.name for f in dataclasses.fields(SamplingOptions)} | {"sample_seed"}
DATA = set(RUN_DATA_OPTIONS) - {"seed"}  # seed is in COMMON: sample takes it too
COMMON = {"output_dir", "device", "seed", "threads"}
JUDGE = {  # the judge's options: evaluate and diagnose share its cache
    "reference_dirs",
    "classifier_epochs",
    "judge_width",
    "classifier_batch_size",
    "classifier_lr",
    "retrain_classifier",
    "weights",
}
ALLOWED = {  # flags each command takes, by config section (None: all of the section)
    "train": {"run": None, "vae": None, "decoder": None, "diffusion": None, "sample": SAMPLER | {"num_samples"}},
    "sample": {"run": COMMON, "diffusion": {"compile"}, "sample": None},
    "evaluate": {
        "run": COMMON | DATA,
        "diffusion": {"compile"},
        "sample": SAMPLER,
        "eval": JUDGE | {"samples_per_class", "fid_weights", "name"},
    },
    "diagnose": {
        "run": COMMON | DATA,
        "diffusion": {"compile"},
        "sample": SAMPLER,
        "eval": JUDGE | {"diagnose_samples"},
    },
}


COMMANDS = {
    "train": "run the pipeline (the default command): VAE, decoder stage, diffusion model, figures",
    "sample": "draw images of a class from trained checkpoints",
    "evaluate": "score trained checkpoints on held-out images with an independent judge",
    "diagnose": "find which part of a trained run (the denoiser or the decoder) limits its samples",
}


def print_help(argv: list[str]) -> None:
    """--help: without a command, the commands and how to get each one's options; with one, only its options."""
    command = next((token for token in argv if token in ALLOWED), None)
    if command is None:
        lines = [USAGE.strip(), "", "commands:"]
        lines += [f"  {name:9s} {text}" for name, text in COMMANDS.items()]
        lines += ["", "python main.py COMMAND --help lists that command's options (train's are the training flags)."]
        print("\n".join(lines))
        return
    parser = argparse.ArgumentParser(
        prog=f"python main.py {command}", usage="%(prog)s [options]", description=COMMANDS[command]
    )
    add_command_args(parser, ALLOWED[command])
    parser.print_help()


def add_command_args(parser: argparse.ArgumentParser, only: dict | None = None) -> None:
    """--preset and the config flags (all of them, or `only` those of one command)."""
    parser.add_argument(
        "--preset",
        default=None,
        choices=tuple(PRESETS),
        help="default (the default): full run for a GPU; cpu: sized for a 2-core CPU (fixed steps: 10 to 40 minutes, "
        "by the CPU; --time-budget sizes a run by minutes instead); smoke: the whole pipeline in about a minute. "
        "sample, evaluate and diagnose take their options from the run's config.json unless --preset is given",
    )
    add_config_args(parser, only)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    argv = sys.argv[1:] if argv is None else argv
    if "-h" in argv or "--help" in argv:
        print_help(argv)
        raise SystemExit(0)
    parser = Parser(description=USAGE, add_help=False, allow_abbrev=False)
    parser.add_argument(
        "command",
        nargs="?",
        default="train",
        choices=tuple(ALLOWED),
        help="; ".join(f"{name}: {text}" for name, text in COMMANDS.items()),
    )
    add_command_args(parser)
    check_unknown_flags(parser, argv)
    return parser.parse_args(argv)


def check_flags(args: argparse.Namespace) -> None:
    """Refuse flags that do not apply to the chosen command."""
    allowed = ALLOWED[args.command]
    wrong = {
        flag_of(section, name)
        for section in SECTIONS
        for name in explicit_flags(args, section)
        if section not in allowed or (allowed[section] is not None and name not in allowed[section])
    }
    if wrong:
        flags = ", ".join(sorted(wrong))
        raise UserInputError(f"{flags} cannot be used with the {args.command} command")


def check_option_use(args: argparse.Namespace, cfg: dict) -> None:
    """Refuse an option that the resolved run would silently ignore or find missing only after minutes of work."""
    target = cfg["sample"].target_class.strip().lower()
    if args.command == "sample" and target not in ("both", *CLASS_NAMES, *map(str, range(len(CLASS_NAMES)))):
        raise UserInputError(f"unknown class {cfg['sample'].target_class!r} for --class: use cat, dog, 0, 1 or both")
    sampler = cfg["sample"].sampler
    if "eta" in explicit_flags(args, "sample") and sampler != "ddim":
        raise UserInputError(
            f"--eta applies to the ddim sampler only (the sampler is {sampler}): drop it, or add --sampler ddim"
        )
    weights = cfg["eval"].fid_weights
    if args.command == "evaluate" and weights is not None and not Path(weights).is_file():
        raise UserInputError(
            f"--fid-weights {weights} is not a file (the Inception weights, pt_inception-2015-12-05-6726825d.pth)"
        )


def recorded_config(args: argparse.Namespace) -> dict:
    """The options recorded in the run's config.json that the command takes, except where the run was and where it
    runs now (output folder, device, threads); for train, only the data options (the data folder and what drew the
    split), so that training an existing run again reads the data it was trained on; {} when there is no readable
    record."""
    out_dir = getattr(args, "run.output_dir") or RunConfig.output_dir
    if args.command == "sample" and getattr(args, "sample.pretrained"):  # the shipped model's record
        out_dir = run_dir("pretrained")
    path = Path(out_dir) / "config.json"
    try:
        record = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError) as err:
        log.warning("ignoring %s (%s): using the preset's options", path, err)
        return {}
    if args.command == "train":
        recorded = record.get("run", {}) if isinstance(record, dict) else {}
        return {"run": {k: recorded[k] for k in RUN_DATA_OPTIONS if k in recorded}} if recorded else {}
    local = {"output_dir", "device", "threads"}
    return {
        section: {k: v for k, v in record.get(section, {}).items() if (names is None or k in names) and k not in local}
        for section, names in ALLOWED[args.command].items()
    }
