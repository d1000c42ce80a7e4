"""The command line of main.py: which options each command takes, its --help, and the checks that refuse an option
before any work is done; and the options a trained run recorded, which sample, evaluate and diagnose start from."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
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
    RunConfig,
    field_flag,
    flag_of,
    validate,
    validate_sampling,
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


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (a UserInputError, exit 2) that point to --help instead of printing the usage."""

    def error(self, message: str):
        raise UserInputError(f"{message}; python main.py COMMAND --help lists its options")


def check_unknown_flags(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """Refuse a flag the parser does not know, before argparse takes its value for the command, naming the nearest
    known flag."""
    known = [flag for flag in parser._option_string_actions if flag.startswith("--")]
    for token in argv:
        flag = token.split("=", 1)[0]
        if token.startswith("-") and not token.startswith("--") and "-" + flag in known:  # -preset for --preset
            close = ["-" + flag]
        elif token.startswith("--") and flag not in known:
            starting = [k for k in known if k.startswith(flag)]  # --out: --output-dir, whatever difflib thinks
            close = difflib.get_close_matches(flag, starting or known, n=1, cutoff=0.0 if starting else 0.6)
        else:
            continue
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise UserInputError(f"unrecognized argument {flag}{hint}; python main.py COMMAND --help lists its options")


def add_config_args(parser: argparse.ArgumentParser, only: dict | None = None) -> None:
    """Add one flag per config field (defaults None, so the preset's values show through); with `only`
    ({section: field names, or None for all}), just those (one command's options, for its --help)."""
    for section, (cls, prefix) in SECTIONS.items():
        if only is not None and section not in only:
            continue
        group = parser.add_argument_group(f"{section} options", " ".join(cls.__doc__.split()))
        for f in dataclasses.fields(cls):
            if only is not None and only[section] is not None and f.name not in only[section]:
                continue
            kw = {"dest": f"{section}.{f.name}", "default": None, "help": _help(section, f)}
            for key in ("choices", "nargs", "metavar"):
                if f.metadata.get(key):
                    kw[key] = f.metadata[key]
            if f.type in ("bool", bool):
                group.add_argument(field_flag(f, prefix), action=argparse.BooleanOptionalAction, **kw)
            else:
                if "choices" not in kw:  # with choices, argparse's own metavar lists them: {ddim,ddpm,heun}
                    kw.setdefault("metavar", f.name.upper())
                group.add_argument(field_flag(f, prefix), type=_parse_type(f), **kw)


def _help(section: str, f: dataclasses.Field) -> str:
    """A field's help, its default (unless the help already says it) and the presets that change it."""
    text = f.metadata["help"]
    changed = [
        f"{name} preset: {values[section][f.name]}"
        for name, values in PRESETS.items()
        if f.name in values.get(section, {})
    ]
    if "default:" not in text and f.default is not None:  # a None default is described by the help itself
        return text + f" (default: {'; '.join([str(f.default), *changed])})"
    return text + (f" ({'; '.join(changed)})" if changed else "")


def _parse_type(f: dataclasses.Field):
    text = str(f.type)
    return int if text.startswith("int") else float if text.startswith(("float", "tuple[float")) else str


def resolve_configs(args: argparse.Namespace, preset: str | None, recorded: dict | None = None) -> dict:
    """Build each section's dataclass: its defaults, then the preset (or, with no --preset, the values `recorded`
    by the run being sampled or evaluated, {section: {field: value}}; with both, the run's data options stay the
    recorded ones), then the flags given on the command line."""
    if preset is not None and preset not in PRESETS:
        raise UserInputError(f"unknown preset {preset!r}: use one of {', '.join(PRESETS)}")
    base = PRESETS[preset or "default"] if preset is not None or not recorded else recorded
    if preset is not None and recorded:  # a preset sizes the command's work; the data and its split stay the run's
        kept = {k: v for k, v in recorded.get("run", {}).items() if k in RUN_DATA_OPTIONS}
        base = {**base, "run": {**base.get("run", {}), **kept}}
    out = {}
    for section, (cls, _) in SECTIONS.items():
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in base.get(section, {}).items() if k in fields}  # keys of other versions: ignored
        values.update({name: getattr(args, f"{section}.{name}") for name in explicit_flags(args, section)})
        out[section] = cls(**values)
        validate(section, out[section])
    validate_sampling(out)
    return out


def explicit_flags(args: argparse.Namespace, section: str) -> set[str]:
    """Names of the fields of `section` that were given on the command line."""
    cls = SECTIONS[section][0]
    return {f.name for f in dataclasses.fields(cls) if getattr(args, f"{section}.{f.name}") is not None}
