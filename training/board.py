"""TensorBoard event files beside the JSONL metrics: `tensorboard --logdir OUTPUT_DIR/tensorboard` shows the training
curves live (one run per stage) and the final sample grid. The JSONL files stay the record; these are a view."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)
BOARD_DIR = "tensorboard"  # under the run folder: one sub-folder per stage, and samples/


def board_writer(out_dir: Path, name: str, start_step: int = 0):
    """A SummaryWriter for OUT_DIR/tensorboard/NAME, or None (with one warning) without the tensorboard package. A
    stage that starts afresh (`start_step` 0) drops its earlier events; a resumed one purges those past its step,
    as its JSONL log drops the records a killed run wrote after its last checkpoint."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # imports the tensorboard package
    except ImportError as err:
        log.warning("no TensorBoard event files (%s): pip install tensorboard", err)
        return None
    folder = Path(out_dir) / BOARD_DIR / name
    if start_step == 0:
        shutil.rmtree(folder, ignore_errors=True)
    return SummaryWriter(str(folder), purge_step=start_step + 1 if start_step else None)


def scalars(record: dict, prefix: str = "") -> dict[str, float]:
    """The numbers of one metrics record, nested dicts flattened to "outer/inner" tags, lists indexed; not the step."""
    out = {}
    for key, value in record.items():
        tag = f"{prefix}{key}"
        if key == "step" and not prefix:
            continue
        if isinstance(value, dict):
            out.update(scalars(value, f"{tag}/"))
        elif isinstance(value, (list, tuple)):
            out.update(scalars({str(i): v for i, v in enumerate(value)}, f"{tag}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[tag] = float(value)
    return out


def write_scalars(writer, record: dict) -> None:
    """One metrics record (with its "step") as scalars."""
    for tag, value in scalars(record).items():
        writer.add_scalar(tag, value, record["step"])
    writer.flush()


def write_image(out_dir: Path, tag: str, png: Path, step: int = 0) -> None:
    """A figure (a PNG the run wrote) as an image event under OUT_DIR/tensorboard/samples."""
    from PIL import Image

    writer = board_writer(out_dir, "samples", start_step=1)  # never drops the other images
    if writer is None:
        return
    writer.add_image(tag, np.asarray(Image.open(png).convert("RGB")), step, dataformats="HWC")
    writer.close()
