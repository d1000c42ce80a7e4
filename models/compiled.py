"""torch.compile for training steps and sampling: which mode to use where, a fallback to eager, and a report of
whether CUDA graphs are really in use."""

from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger(__name__)


COMPILE_MODES = ("auto", "off", "default", "reduce-overhead")


def compile_mode(requested: str, device: torch.device, distributed: bool = False) -> str:
    """The torch.compile mode a stage uses: "auto" is "reduce-overhead" (CUDA graphs: a step dispatched by Python in
    ~30 ms on an H100 replays as one graph) on CUDA, and "off" elsewhere (on a CPU the compiled VAE was slower and the
    compiled denoiser 6% faster after a 50 s compile, docs/benchmark.md). Under DistributedDataParallel, whose
    gradient hooks a captured graph cannot hold, CUDA graphs give way to plain compilation."""
    mode = ("reduce-overhead" if device.type == "cuda" else "off") if requested == "auto" else requested
    if distributed and mode == "reduce-overhead":
        log.info("DistributedDataParallel: compiling without CUDA graphs")
        return "default"
    return mode


def maybe_compile(model: nn.Module, mode: str) -> nn.Module:
    """torch.compile the model in `mode` ("off": return it unchanged); where compilation is unavailable, warn once and
    return it unchanged. Errors that surface later, at the first compiled call, also fall back to eager (dynamo's
    suppress_errors); `report_graphs` then says whether CUDA graphs are in use."""
    if mode == "off":
        return model
    try:
        import torch._dynamo

        if not torch._dynamo.is_dynamo_supported():
            raise RuntimeError("dynamo is not supported on this platform")
        torch._dynamo.config.suppress_errors = True
        return torch.compile(model, mode=None if mode == "default" else mode)
    except Exception as err:  # noqa: BLE001 - any backend failure falls back to eager
        log.warning("torch.compile unavailable (%s); training without it", err)
        return model


def report_graphs(name: str, mode: str) -> bool:
    """After the first compiled steps: log whether CUDA graphs are in use (inductor skips them silently, e.g. for
    mutated inputs) and return it."""
    if mode != "reduce-overhead":
        return False
    from torch._dynamo.utils import counters

    skips = dict(counters["inductor"].get("cudagraph_skips", {}) or {})
    if skips or not counters["inductor"]:
        log.warning("%s: CUDA graphs are NOT in use (%s); the step runs compiled or eager", name, skips or "no graphs")
        return False
    log.info("%s: training step replayed as CUDA graphs", name)
    return True
