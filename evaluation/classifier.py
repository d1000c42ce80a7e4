"""An independent image classifier, trained on real images, whose features and verdicts judge generated samples."""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from data import Split, augment, to_model_range
from evaluation.shape import randomise_texture, shape_view
from models.batched import eval_mode

log = logging.getLogger(__name__)


def _conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


VIEWS = ("photo", "shape")  # what a judge sees of an image: all of it, or its luminance (evaluation/shape.py)


def apply_view(images: torch.Tensor, view: str) -> torch.Tensor:
    """Images in [0, 1] as a judge with this view sees them."""
    return shape_view(images) if view == "shape" else images


class JudgeClassifier(nn.Module):
    """A small VGG-style CNN on 32x32 images in [-1, 1]: `features` (N, 4*width) and `forward` logits. `view` says
    what it sees of an image (VIEWS); `classify` applies it."""

    def __init__(self, num_classes: int = 10, width: int = 32, view: str = "photo"):
        super().__init__()
        self.view = view
        w = width
        self.body = nn.Sequential(
            _conv(3, w),
            _conv(w, w),
            nn.MaxPool2d(2),
            _conv(w, 2 * w),
            _conv(2 * w, 2 * w),
            nn.MaxPool2d(2),
            _conv(2 * w, 4 * w),
            _conv(4 * w, 4 * w),
            nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(4 * w, num_classes))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (N, 4*width): the space of the feature Frechet distance, precision and recall."""
        return self.body(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def train_classifier(
    data: Split,
    device: torch.device,
    *,
    num_classes: int,
    epochs: int,
    batch_size: int,
    lr: float,
    generator: torch.Generator,
    width: int = 32,
    view: str = "photo",
) -> JudgeClassifier:
    """Train the classifier with flips and shifts, AdamW and a one-cycle schedule; returns it in eval mode. A shape
    judge (`view` "shape") learns from luminance with every image's texture randomised (evaluation/shape.py).

    The result depends on `generator` only: initialisation and dropout, which draw from the global RNG, run under a
    seed taken from it, and the global RNG state is restored afterwards."""
    seed = int(torch.randint(2**62, (1,), generator=generator, device=generator.device))
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.default_generator.manual_seed(seed)
        if device.type == "cuda":
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        model = JudgeClassifier(num_classes, width, view).to(device)
        steps = max(1, epochs * len(data) // batch_size)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
        x_all, y_all = data.x.to(device), data.y.to(device)
        model.train()
        for _ in tqdm(range(steps), desc="Judge classifier", dynamic_ncols=True):
            idx = torch.randint(0, len(data), (batch_size,), device=device, generator=generator)
            x = augment(apply_view(to_model_range(x_all[idx]) / 2 + 0.5, view) * 2 - 1, generator)
            if view == "shape":
                x = randomise_texture(x, generator)
            loss = F.cross_entropy(model(x), y_all[idx], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


@torch.no_grad()
def classify(model: JudgeClassifier, images: torch.Tensor, batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """(predicted labels (N,), features (N, F)) of images (N, 3, 32, 32) in [0, 1]."""
    device = next(model.parameters()).device
    preds, feats = [], []
    with eval_mode(model):
        for start in range(0, len(images), batch_size):
            x = apply_view(images[start : start + batch_size].to(device), model.view) * 2 - 1
            f = model.features(x)
            preds.append(model.head(f).argmax(1).cpu())
            feats.append(f.cpu())
    return torch.cat(preds), torch.cat(feats)
