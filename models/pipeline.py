"""The trained pipeline rebuilt from a run folder's two public files, which describe it whole: each state dict carries
its network's constructor arguments, and the denoiser's also the diffusion process it was trained in."""

from __future__ import annotations

from pathlib import Path

import torch

from checkpoints import (
    AUTOENCODER_FILE,
    DIFFUSION_FILE,
    DIFFUSION_STATE_FILE,
    VAE_STATE_FILE,
    check_network,
    check_state_dict,
    load_file,
    require_state_dict,
)
from errors import UserInputError
from models.diffusion import ConditionalDenoiseDiffusion
from models.unet import ConditionalUNet
from models.vae import SimpleAutoencoder

PRETRAINED_DIR = Path(__file__).resolve().parents[1] / "pretrained"  # the shipped model: a run folder


def _legacy_config(out_dir: Path, state_file: str) -> dict:
    """Files from before "_extra_state": the architecture was recorded in the stage's training state, if anywhere."""
    path = out_dir / state_file
    return load_file(path).get("model_config", {}) if path.is_file() else {}


def build(cls, state: dict, path: Path, legacy_config: dict | None = None):
    """The network a state dict describes, with its weights; `legacy_config` for files that do not describe it (VAE
    files from before "_extra_state"). A recorded network this code cannot build is one line naming the fix."""
    require_state_dict(state, path)
    check_network(cls.__name__, state, path)
    config = state.get("_extra_state", {}).get("config", legacy_config or {})
    try:
        model = cls(**config)
    except (TypeError, ValueError) as err:
        raise UserInputError(
            f"{path} describes a {cls.__name__} that this version of the code cannot build ({err}): retrain that stage "
            "with --retrain-vae or --retrain-diffusion, or load it with the version of this code that wrote it"
        ) from None
    check_state_dict(model, state, path)
    model.load_state_dict(state)
    return model


def run_dir(name: str | Path | None) -> Path:
    """The run folder `name` names: None, or "pretrained" where no such folder is here, is the shipped model's."""
    if name is None or (str(name) == "pretrained" and not Path(name).is_dir()):
        return PRETRAINED_DIR
    return Path(name)


def load_pipeline(
    out_dir: str | Path | None = None, device: torch.device | str = "cpu", raw_weights: bool = False
) -> tuple[SimpleAutoencoder, ConditionalDenoiseDiffusion]:
    """The trained VAE and diffusion model of a run folder (default: the shipped model in pretrained/), in eval mode on
    `device`; `raw_weights` takes the denoiser's non-EMA weights from its training state instead of the public (EMA)
    file."""
    out_dir, device = run_dir(out_dir), torch.device(device)
    path = out_dir / AUTOENCODER_FILE
    autoencoder = build(SimpleAutoencoder, load_file(path, device), path, _legacy_config(out_dir, VAE_STATE_FILE))
    path = out_dir / (DIFFUSION_STATE_FILE if raw_weights else DIFFUSION_FILE)
    state = load_file(path, device)
    unet = build(ConditionalUNet, state["model"] if raw_weights else state, path)
    return autoencoder.to(device).eval(), ConditionalDenoiseDiffusion(unet.to(device).eval(), device=device)
