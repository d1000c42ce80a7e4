"""The judge of `evaluate`: a classifier over CIFAR-10's ten classes, trained once on real images that exclude the
run's held-out split, and cached in the run folder. Its value is its features (ten classes make them richer than
cat-vs-dog), not its verdicts. It only ever measures: nothing in training or sampling reads it."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from data import CIFAR10_CLASSES, CLASS_NAMES, Split, load_cifar10, load_labelled_folders, split_holdout
from evaluation.classifier import JudgeClassifier, classify, train_classifier
from checkpoints import atomic_save, check_state_dict, load_file

log = logging.getLogger(__name__)
JUDGE_FILE = "judge_classifier.pt"
JUDGE_FILES = {"photo": JUDGE_FILE, "shape": "judge_shape.pt"}  # by view (evaluation/classifier.py VIEWS)
JUDGE_HOLDOUT = 0.1  # share of each class other than cat and dog kept out of the judge's training, to score it


@dataclass
class Reference:
    """Labelled real images for the judge: what it learns from, what it is scored on, and their class names."""

    train: Split
    held: Split  # the run's held-out cats and dogs, plus a held-out share of every other class
    classes: tuple[str, ...]
    source: str


def image_keys(x: torch.Tensor) -> list[bytes]:
    """A digest of each uint8 image (N, 3, 32, 32): equal pixels, equal key."""
    return [hashlib.blake2b(img.numpy().tobytes(), digest_size=16).digest() for img in x]


def _relabel_catdog(held: Split, classes: tuple[str, ...]) -> Split:
    """The run's held-out split (labels 0/1 = CLASS_NAMES) with labels in `classes`."""
    mapping = torch.tensor([classes.index(name) for name in CLASS_NAMES])
    return Split(held.x, mapping[held.y])


def load_reference(
    reference_dirs: list[str] | None,
    data_dir: str | None,
    download_root: str,
    train: Split,
    held: Split,
    generator: torch.Generator,
) -> Reference:
    """The judge's images: `reference_dirs` (one folder per class) if given; CIFAR-10's training set when the run
    itself used CIFAR-10; otherwise, with a warning, the run's own training cats and dogs (a two-way judge).
    Images equal to a held-out image are dropped, so the judge never trains on what it scores against."""
    if reference_dirs:
        data, classes = load_labelled_folders(reference_dirs)
        source = "reference dirs " + ", ".join(reference_dirs)
    elif data_dir is None:
        data, classes, source = load_cifar10(download_root, train=True), CIFAR10_CLASSES, "CIFAR-10 training set"
    else:
        log.warning(
            "no --eval-reference-dir: the judge is a two-way cat/dog classifier on the run's training images, whose "
            "features see less than a ten-way judge's; pass --eval-reference-dir DIR [DIR ...] (one folder per "
            "CIFAR-10 class) for the ten-way judge"
        )
        return Reference(train, held, CLASS_NAMES, "the run's training images (cat/dog only)")
    held_keys = set(image_keys(held.x))
    data = data.subset(torch.tensor([key not in held_keys for key in image_keys(data.x)], dtype=torch.bool))
    catdog = torch.isin(data.y, torch.tensor([classes.index(name) for name in CLASS_NAMES]))
    if not (~catdog).any():
        judge_train, held_all = data, _relabel_catdog(held, classes)
    else:
        others_train, others_held = split_holdout(data.subset(~catdog), JUDGE_HOLDOUT, generator, classes)
        judge_train = Split(torch.cat([data.x[catdog], others_train.x]), torch.cat([data.y[catdog], others_train.y]))
        run_held = _relabel_catdog(held, classes)
        held_all = Split(torch.cat([run_held.x, others_held.x]), torch.cat([run_held.y, others_held.y]))
    return Reference(judge_train, held_all, classes, source)


def fingerprint(ref: Reference, cfg, seed: int, view: str = "photo") -> str:
    """What the judge depends on: its training images and labels, its classes, its training options and its view."""
    h = hashlib.blake2b(digest_size=16)
    h.update(ref.train.x.numpy().tobytes())
    h.update(ref.train.y.numpy().tobytes())
    options = (ref.classes, cfg.classifier_epochs, cfg.classifier_batch_size, cfg.classifier_lr, cfg.judge_width, seed)
    options += (view,) if view != "photo" else ()  # the photo judges cached before views existed stay valid
    h.update(repr(options).encode())
    return h.hexdigest()


def get_judge(
    out_dir: Path, ref: Reference, cfg, device: torch.device, seed: int, view: str = "photo"
) -> JudgeClassifier:
    """The run's cached judge of this view if it was trained on the same images with the same options; else train
    and cache it. The shape judge (view "shape") sees luminance and learns with texture randomised
    (evaluation/shape.py)."""
    path, key = out_dir / JUDGE_FILES[view], fingerprint(ref, cfg, seed, view)
    if path.is_file() and not cfg.retrain_classifier:
        saved = load_file(path, device)
        if isinstance(saved, dict) and saved.get("fingerprint") == key:
            model = JudgeClassifier(len(ref.classes), cfg.judge_width, view).to(device)
            check_state_dict(model, saved["state_dict"], path)
            model.load_state_dict(saved["state_dict"])
            return model.eval()
        log.info("the judge in %s was trained on other images or options: training a new one", path)
    log.info("training the %s judge: %d classes, %d images (%s)", view, len(ref.classes), len(ref.train), ref.source)
    model = train_classifier(
        ref.train,
        device,
        num_classes=len(ref.classes),
        epochs=cfg.classifier_epochs,
        batch_size=cfg.classifier_batch_size,
        lr=cfg.classifier_lr,
        width=cfg.judge_width,
        view=view,
        generator=torch.Generator(device).manual_seed(seed),
    )
    state = {k: v.cpu() for k, v in model.state_dict().items()}
    atomic_save({"state_dict": state, "classes": list(ref.classes), "fingerprint": key}, path)
    return model


def judge_accuracy(judge: JudgeClassifier, ref: Reference, images: torch.Tensor) -> dict:
    """The judge's accuracy on the reference's held-out images (`images`: those in [0, 1]), overall and per class."""
    pred, _ = classify(judge, images)
    per_class = {
        name: (pred[ref.held.y == label] == label).float().mean().item()
        for label, name in enumerate(ref.classes)
        if (ref.held.y == label).any()
    }
    return {"overall": (pred == ref.held.y).float().mean().item(), "per_class": per_class}
