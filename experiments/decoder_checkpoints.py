"""Score the decoder of each decoder-stage training state on a run's held-out reconstructions, with the run's judge.

    python experiments/decoder_checkpoints.py RUN STATE.pt [STATE.pt ...] --eval-reference-dir DIR [DIR ...]

For each state (copies of RUN/decoder_train_state.pt taken while the stage trained, or the run's own; or the VAE
stage's RUN/vae_train_state.pt, for its pixel-loss decoder), its (EMA) decoder replaces the run's decoder and the
held-out images are encoded (the run's encoder: the latents are the same for every state) and decoded; prints PSNR
and, per class at one n, feature FD, recall and colour FD against the held-out images, as `evaluate`'s "VAE
reconstructions" row. `RUN` alone (no states) scores the run's public decoder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import commands  # noqa: E402
from cli import parse_args, recorded_config, resolve_configs  # noqa: E402
from checkpoints import load_file  # noqa: E402
from data import CLASS_NAMES  # noqa: E402
from evaluation.evaluate import Features, equal_n, per_class_images, reconstruction_scores, score_set  # noqa: E402


def score(parts: dict) -> dict:
    """PSNR of the held-out reconstructions and their per-class judge scores."""
    recon, recons = reconstruction_scores(parts["autoencoder"], parts["held"])
    real = per_class_images(parts["held"])
    sets = [(recons[parts["held"].y == c], real[c]) for c in range(len(CLASS_NAMES))]
    rows = score_set(sets, Features(parts["judge"]), parts["reference"].classes, n=equal_n(10**9, real))
    return {"psnr": recon["psnr"], **{c: rows[c] for c in CLASS_NAMES}}


def main_() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("states", nargs="*")
    parser.add_argument("--eval-reference-dir", nargs="+", required=True)
    args = parser.parse_args()
    argv = ["evaluate", "--output-dir", args.run, "--eval-reference-dir", *args.eval_reference_dir]
    parsed = parse_args(argv)
    cfg = resolve_configs(parsed, None, recorded_config(parsed))
    parts = commands.judged_run(cfg)
    decoder = parts["autoencoder"].decoder
    for name in args.states or [None]:
        if name is not None:
            state = load_file(name)
            if "ema" in state:  # a decoder-stage state: its EMA decoder
                decoder.load_state_dict(state["ema"]["model"])
            else:  # the VAE stage's state: its pixel-loss decoder
                decoder.load_state_dict({k[8:]: v for k, v in state["model"].items() if k.startswith("decoder.")})
        s = score(parts)
        step = "public file" if name is None else f"step {state['step']}"
        cells = [
            " / ".join(f"{s[c][m]:{f}}" for c in CLASS_NAMES)
            for m, f in (("fd", ".2f"), ("recall", ".2f"), ("colour_fd", ".1f"))
        ]
        print(
            f"{name or args.run} ({step}): PSNR {s['psnr']:.2f} dB, FD {cells[0]}, recall {cells[1]}, "
            f"colour FD {cells[2]} (n = {s[CLASS_NAMES[0]]['n']} per class)"
        )


if __name__ == "__main__":
    with torch.no_grad():
        main_()
