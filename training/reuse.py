"""`--autoencoder-from DIR`: a run that starts from another run's trained autoencoder (its VAE and the decoder stage's
decoder, both in DIR's public autoencoder file) and trains only the denoiser, as latent diffusion trains its first
stage once and reuses it."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
from pathlib import Path

import torch

from checkpoints import AUTOENCODER_FILE, SPLIT_FILE, load_file
from errors import UserInputError
from models.pipeline import build, run_dir
from models.vae import SimpleAutoencoder

log = logging.getLogger(__name__)


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes: the fingerprint a run records of the autoencoder it copied."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def source_autoencoder(directory: str, out_dir: Path) -> Path:
    """DIR's autoencoder file; one line (a UserInputError) for a folder without one, a damaged file, a latent layout
    other than the run's (its networks are built with the public defaults), or an `out_dir` that holds another
    autoencoder."""
    path = run_dir(directory) / AUTOENCODER_FILE
    if not path.is_file():
        raise UserInputError(f"--autoencoder-from {directory}: no {AUTOENCODER_FILE} there (a trained run folder)")
    theirs = build(SimpleAutoencoder, load_file(path), path).layout
    with torch.device("meta"):  # the run's own layout, without drawing its weights (or touching the RNG)
        ours = SimpleAutoencoder().layout
    if theirs != ours:
        raise UserInputError(
            f"--autoencoder-from {directory}: its latent layout is {theirs}, this run's is {ours}; use an autoencoder "
            f"of the {ours} layout (a run folder of this version of the code)"
        )
    target = out_dir / AUTOENCODER_FILE
    if target.is_file() and file_sha256(target) != file_sha256(path):
        raise UserInputError(
            f"--autoencoder-from {directory}: {out_dir} already holds another autoencoder; pick a new --output-dir"
        )
    return path


def recorded_stages(directory: str) -> dict:
    """The VAE's and decoder stage's options that DIR's config.json records ({} for a section it lacks)."""
    path = run_dir(directory) / "config.json"
    try:
        record = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        record = {}
    return {section: record.get(section, {}) for section in ("vae", "decoder")}


def adopt_autoencoder(cfg: dict, out_dir: Path, split: dict) -> dict:
    """Copy DIR's autoencoder file (`source_autoencoder`) into `out_dir` unless the very same file is there, set cfg's
    vae and decoder sections to the options DIR recorded, and return what config.json records of it: where it came
    from, its SHA-256, and whether DIR's autoencoder trained on the split this run trains on (`split`, as split.json
    records it)."""
    directory = cfg["run"].autoencoder_from
    source = source_autoencoder(directory, out_dir)
    sha, target = file_sha256(source), out_dir / AUTOENCODER_FILE
    if not target.is_file():
        shutil.copyfile(source, target.with_name(f".{target.name}.tmp"))
        target.with_name(f".{target.name}.tmp").replace(target)
        log.info("autoencoder copied from %s (sha256 %s): only the denoiser trains", source, sha[:16])
    for section, values in recorded_stages(directory).items():
        known = {f.name for f in dataclasses.fields(cfg[section])}
        cfg[section] = dataclasses.replace(cfg[section], **{k: v for k, v in values.items() if k in known})
    theirs = run_dir(directory) / SPLIT_FILE
    their_split = json.loads(theirs.read_text()).get("fingerprint") if theirs.is_file() else None
    if their_split != split["fingerprint"]:
        log.warning(
            "the autoencoder of %s was trained on another split than this run's: some of this run's held-out images "
            "may be among its training images, so held-out scores of the reconstructions can flatter it",
            directory,
        )
    return {"from": str(run_dir(directory).resolve()), "sha256": sha, "same_split": their_split == split["fingerprint"]}
