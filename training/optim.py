"""What the training stages share to update weights: AdamW, warm-up + cosine schedule, EMA, optional compile."""

from __future__ import annotations

import copy
import logging
import math

import torch
from torch import nn

log = logging.getLogger(__name__)


class EMA:
    """Exponential moving average of a model's weights, with the usual warm-up of the decay."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay, self.updates = decay, 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """ema <- d * ema + (1 - d) * model, with d = min(decay, (1 + n) / (10 + n))."""
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        ema_params = list(self.model.parameters()) + list(self.model.buffers())
        params = list(model.parameters()) + list(model.buffers())
        torch._foreach_lerp_(
            [e for e in ema_params if e.is_floating_point()],
            [p.detach() for p in params if p.is_floating_point()],
            1 - d,
        )

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.updates = state["updates"]


class WarmupCosine:
    """The learning-rate factor of `warmup_cosine` at a step: an object, not a closure, so that the scheduler's
    state_dict records its `total` and a stage that fixes its total during the warm-up (`set_total`) resumes with it."""

    def __init__(self, warmup: int, total: int):
        self.warmup, self.total = warmup, total

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))))


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up to the peak LR, then cosine annealing to zero (Loshchilov & Hutter 2017)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(warmup, total))


def set_total(scheduler: torch.optim.lr_scheduler.LambdaLR, total: int) -> None:
    """Give a `warmup_cosine` schedule another total. Before the warm-up ends the factors it has given do not depend
    on the total, so a stage whose total is set at step k < warm-up trains as if it had been given up front."""
    factors = {id(f): f for f in scheduler.lr_lambdas}.values()
    if not all(isinstance(f, WarmupCosine) and scheduler.last_epoch < f.warmup for f in factors):
        raise ValueError("only a warm-up + cosine schedule still in its warm-up can take another total")
    for f in factors:
        f.total = total


def warmup_constant(optimizer: torch.optim.Optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up to the peak LR, then the peak held to the end (the decoder stage's adversarial fine-tuning: an LR
    annealed to zero lets the pixel loss take back the detail the adversarial term drew; docs/decoder_stage.md)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))


def make_optimizer(model: nn.Module, lr: float, weight_decay: float, device: torch.device) -> torch.optim.AdamW:
    """AdamW, fused (one kernel over all parameters) on CUDA and on the CPU: on the 2-core CPU the fused step of the
    denoiser's 14M parameters took 14 ms against 51 ms for the default implementation. Torch builds without a fused
    CPU kernel fall back to the default."""
    params = list(model.parameters())
    kw = dict(lr=lr, weight_decay=weight_decay, betas=(0.9, 0.99))
    try:
        return torch.optim.AdamW(params, fused=device.type in ("cuda", "cpu"), **kw)
    except (RuntimeError, ValueError):  # no fused kernel for this device in this torch
        return torch.optim.AdamW(params, **kw)
