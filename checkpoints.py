"""Reading and writing weight files: what a run folder holds, atomic saves, weights-only loads with one-line errors,
and state-dict checks that name the file and the difference."""

from __future__ import annotations

import os
import pickletools
import tempfile
import warnings
import zipfile
from pathlib import Path

import torch
from torch import nn

from errors import UserInputError

AUTOENCODER_FILE = "cifar_cat_dog_autoencoder.pt"
DIFFUSION_FILE = "conditional_diffusion_final.pt"
VAE_STATE_FILE = "vae_train_state.pt"
DECODER_STATE_FILE = "decoder_train_state.pt"  # the decoder stage's training state
DIFFUSION_STATE_FILE = "diffusion_train_state.pt"
SPLIT_FILE = "split.json"  # the data and split the VAE stage trained on (written by that stage only)


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
    """Write a public checkpoint: a plain state dict of CPU tensors (and the model's extra state, a dict of plain
    values describing it), loadable by torch.load(weights_only=True) on any machine."""
    state = model.state_dict()
    atomic_save({k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in state.items()}, path)


def load_file(path: str | Path, map_location: str | torch.device = "cpu"):
    """torch.load with weights_only=True (a checkpoint never runs code), with one-line errors: "refused" for a pickle
    that would import and call something, "cannot read" for any other file that is not a readable torch file."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(
            f"checkpoint not found: {path} (train the run first with python main.py --output-dir {path.parent}, or "
            "pass the folder of a trained run as --output-dir)"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about the pickle protocol of foreign files before refusing
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises EOFError, KeyError, RuntimeError, ... for damaged files
        if torch.device(map_location).type != "cpu" and _loads_on_cpu(path):  # the file is fine; the device is not
            raise UserInputError(
                f"{path} is a readable checkpoint, but loading it onto {map_location} failed ({_first_line(err)}); "
                "use another --device (cpu works)"
            ) from None
        imports = _foreign_imports(path)
        if imports:
            raise UserInputError(
                f"refused to load {path}: unpickling it would call {', '.join(sorted(imports)[:3])} "
                "(checkpoints are read as plain weights and never run code)"
            ) from None
        raise UserInputError(
            f"cannot read checkpoint {path} ({_what_is_wrong(path, err)}); restore it from a copy, or delete it and "
            "run the training command again to retrain that stage"
        ) from None


def _loads_on_cpu(path: Path) -> bool:
    """Whether the file loads (weights only) onto the CPU: a file that does is not damaged."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - any failure: not readable here
        return False
    return True


def _first_line(err: Exception) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0][:200]}" if lines else type(err).__name__


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
    require_state_dict(state, path)
    check_state_dict(model, state, path)
    model.load_state_dict(state)


def require_state_dict(state, path: str | Path) -> None:
    """Refuse anything but a state dict: tensors, plus modules' extra state (dicts) under keys ending in
    "_extra_state"."""
    ok = isinstance(state, dict) and all(
        isinstance(v, torch.Tensor) or (str(k).endswith("_extra_state") and isinstance(v, dict))
        for k, v in state.items()
    )
    if not ok:
        raise UserInputError(f"{path} is not a state dict of tensors (is it a training-state file?)")


# The public networks by the prefix of keys only their state dicts hold, and the file each one belongs in.
PUBLIC_NETWORKS = {
    "SimpleAutoencoder": ("encoder.", AUTOENCODER_FILE),
    "ConditionalUNet": ("backbone.", DIFFUSION_FILE),
}


def check_network(expected: str, state: dict, path: str | Path) -> None:
    """Refuse, naming what it is and where it belongs, a state dict of the other public network than `expected`
    (the run's two files swapped or renamed)."""
    for name, (prefix, file) in PUBLIC_NETWORKS.items():
        if name != expected and any(str(k).startswith(prefix) for k in state):
            raise UserInputError(
                f"{path} holds the weights of a {name}, not of a {expected}: that file belongs in a run folder as "
                f"{file}, and this one needs the {PUBLIC_NETWORKS[expected][1]} its run wrote"
            )


def check_state_dict(model: nn.Module, state: dict, path: str | Path) -> None:
    """Raise UserInputError naming `path` and what differs if `state` does not fit `model`."""
    check_network(type(model).__name__, state, path)
    own = model.state_dict()
    optional = tuple(getattr(model, "optional_state_prefixes", ()))
    own = {k: v for k, v in own.items() if not k.startswith(optional or ("\0",))}  # optional parts are checked on load
    state_keys = {k for k in state if not k.startswith(optional or ("\0",))}
    missing = sorted(set(own) - state_keys - set(getattr(model, "optional_state_keys", ())))
    unexpected = sorted(state_keys - set(own) - set(getattr(model, "legacy_state_keys", ())))
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and isinstance(own[k], torch.Tensor) and state[k].shape != own[k].shape
    ]
    extra = state.get("_extra_state")
    other = config_difference(model, extra) if isinstance(extra, dict) else ""
    if missing or unexpected or shapes or other:
        parts = [
            other,
            f"{len(missing)} missing key(s), e.g. {missing[:3]}" if missing else "",
            f"{len(unexpected)} unexpected key(s), e.g. {unexpected[:3]}" if unexpected else "",
            f"{len(shapes)} shape mismatch(es), e.g. {shapes[:2]}" if shapes else "",
        ]
        raise UserInputError(
            f"{path} does not match {type(model).__name__}: "
            + "; ".join(p for p in parts if p)
            + " (another architecture, latent size or file: retrain that stage with --retrain-vae or "
            "--retrain-diffusion, or load it with the version of this code that wrote it)"
        )


def config_difference(model: nn.Module, extra_state: dict) -> str:
    """How the constructor arguments recorded in a file's extra state differ from `model.config` ("" if they do not),
    ignoring those a file is meant to set (`model.config_set_by_file`, e.g. a denoiser's prediction)."""
    ignore = set(getattr(model, "config_set_by_file", ()))
    theirs = {k: v for k, v in extra_state.get("config", {}).items() if k not in ignore}
    ours = {k: v for k, v in getattr(model, "config", {}).items() if k not in ignore}
    keys = sorted(k for k in theirs.keys() | ours.keys() if theirs.get(k) != ours.get(k))
    return ", ".join(f"{k}: file {theirs.get(k)} vs model {ours.get(k)}" for k in keys)
