"""Where a stage runs: device, output folder, precision, logging cadence, and the process's place under torchrun."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn


@dataclass
class RunContext:
    """Where a stage runs and writes: device, output folder, precision, logging cadence, process rank."""

    device: torch.device
    out_dir: Path
    amp: bool = False
    log_every: int = 100
    checkpoint_every: int = 1000
    resume: bool = True
    visualize_every: int = 0
    rank: int = 0
    world_size: int = 1
    extra: dict = field(default_factory=dict)  # run facts recorded with the config (e.g. perceptual loss availability)
    records: bool = True  # whether this command writes config.json: one that trains nothing leaves the record be

    @property
    def is_main(self) -> bool:
        """Only rank 0 writes files and shows progress bars."""
        return self.rank == 0

    def wrap(self, model: nn.Module) -> nn.Module:
        """DistributedDataParallel around `model` under torchrun (world_size > 1), else the model itself."""
        if self.world_size == 1:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def shard(self, n: int) -> torch.Tensor:
        """Indices of the n training examples this process draws its batches from (all of them without DDP)."""
        return torch.arange(self.rank, n, self.world_size, device=self.device)

    def autocast(self):
        """bf16 autocast when amp is on (make_context turns it on only where bf16 is native); else a no-op context."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp)


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes in bf16 natively: a CUDA GPU that supports it, or a CPU with AVX512-BF16 or AMX
    (read from /proc/cpuinfo; elsewhere False). Without such hardware bf16 is emulated and slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    try:
        flags = {word for line in open("/proc/cpuinfo") if line.startswith("flags") for word in line.split()}
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})
