"""The Accelerator every command builds: an explicit collective timeout, gloo DDP on CPU-only
machines, gradients as views into DDP's buckets."""

from __future__ import annotations

import datetime
import os

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs

COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=30)


def make_accelerator(mixed_precision: str, log_with: str | None = None, project_dir: str | None = None,
                     collective_timeout: float | None = None) -> Accelerator:
    """An Accelerator with an explicit collective timeout (a dead or hung rank makes the others
    fail after `collective_timeout` seconds, default COLLECTIVE_TIMEOUT, not hang forever).
    Launched by torchrun on a machine without CUDA, Accelerate only forms a gloo group when told
    to use the CPU; otherwise every rank silently runs alone."""
    cpu_ddp = not torch.cuda.is_available() and "LOCAL_RANK" in os.environ
    timeout = COLLECTIVE_TIMEOUT if collective_timeout is None else datetime.timedelta(seconds=collective_timeout)
    # Gradients as views into DDP's all-reduce buckets: no copy in and out of the buckets each
    # step (on the CPU that memcpy competes with the model for the same cores).
    ddp = DistributedDataParallelKwargs(gradient_as_bucket_view=True)
    return Accelerator(mixed_precision=mixed_precision, log_with=log_with, project_dir=project_dir,
                       kwargs_handlers=[InitProcessGroupKwargs(timeout=timeout), ddp], cpu=cpu_ddp)
