"""Defaults that depend on the machine: the GPU fast paths and the loader worker count.

Flags left unset (None) are resolved here once the accelerator knows its device, and the
resolved values are what `config.json` records. On CUDA: bf16 autocast (when the GPU has it and
no accelerate config chose otherwise), channels_last, cuDNN autotuning, and loader workers from
the cores per GPU. On the CPU everything stays plain (fp32, contiguous, 2 workers): a CPU run is
for laptops and tests, where the loader shares the cores with the model.
"""

from __future__ import annotations

import dataclasses
import os
import torch

from ..config.options import RunConfig

MAX_WORKERS_PER_GPU = 12   # beyond this the shard readers stop scaling (I/O, shuffle buffers)
CPU_WORKERS = 2


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # respects SLURM's --cpus-per-task cgroup/affinity
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def default_workers(on_cuda: bool, local_ranks: int) -> int:
    """Loader workers per rank: the cores of this rank's share of the node, minus one for the
    training process itself, capped; 2 on the CPU."""
    if not on_cuda:
        return CPU_WORKERS
    per_rank = usable_cores() // max(local_ranks, 1)
    return max(1, min(MAX_WORKERS_PER_GPU, per_rank - 1))


def local_ranks() -> int:
    """Ranks on this node (torchrun / accelerate launch set LOCAL_WORLD_SIZE)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", 1))


def loader_workers(requested: int | None) -> int:
    """`requested`, or the default for this machine when None."""
    return requested if requested is not None else default_workers(torch.cuda.is_available(), local_ranks())


def default_mixed_precision(on_cuda: bool) -> str | None:
    """bf16 on a GPU that supports it, unless `accelerate launch` passed a choice (its env var)."""
    if "ACCELERATE_MIXED_PRECISION" in os.environ or not on_cuda:
        return None
    return "bf16" if torch.cuda.is_bf16_supported() else None


def resolve_mixed_precision(requested: str | None) -> str | None:
    """Before the Accelerator exists: only CUDA availability is known, which is all it needs."""
    return requested if requested is not None else default_mixed_precision(torch.cuda.is_available())


def apply_device_defaults(cfg: RunConfig, device: torch.device) -> RunConfig:
    """A copy of `cfg` with every machine-dependent None resolved for `device`."""
    on_cuda = device.type == "cuda"
    data, model = cfg.data, cfg.model
    if data.workers is None:
        data = dataclasses.replace(data, workers=default_workers(on_cuda, local_ranks()))
    if model.channels_last is None:
        model = dataclasses.replace(model, channels_last=on_cuda)
    if on_cuda:
        torch.backends.cudnn.benchmark = True           # fixed input size: autotune once
        torch.backends.cuda.matmul.allow_tf32 = True    # fp32 leftovers (heads, GRU) on tensor cores
        torch.backends.cudnn.allow_tf32 = True
    return cfg.replace(data=data, model=model)
