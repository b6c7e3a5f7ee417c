"""Run train.py with fp16 autocast and torch's real GradScaler on the CPU.

Accelerate makes neither on the CPU (train.py refuses --mixed-precision fp16 there), so the fp16
path of the engine - the loss scaler skipping an optimizer step whose gradients are not finite -
would otherwise only run on a GPU. This probe hands the Accelerator `torch.amp.GradScaler("cpu")`
and turns its autocast on (fp16 on the CPU), then runs train.py's real `__main__`: Accelerate's
own backward, unscale-before-clipping and optimizer step then drive the scaler as on a GPU.
`WIKIART_PROBE_FUSED=1` also gives AdamW the fused kernel training uses on CUDA: the scaler then
always calls the optimizer, whose kernel skips a non-finite step itself.

    python tests/support/fp16_cpu_probe.py TRAIN_ARGS... --mixed-precision fp16
"""

import os
import runpy
import sys
from pathlib import Path

import torch

from wikiart.train import setup as training

_make_accelerator = training.make_accelerator
_build_optimizer = training.build_optimizer


def with_cpu_loss_scaler(*args, **kwargs):
    accelerator = _make_accelerator(*args, **kwargs)
    if not (accelerator.mixed_precision == "fp16" and accelerator.device.type == "cpu"):
        raise SystemExit("fp16_cpu_probe: needs --mixed-precision fp16 on a machine without CUDA")
    accelerator.scaler = torch.amp.GradScaler("cpu")
    accelerator.native_amp = True   # Accelerate's autocast (fp16 on the CPU) and unscale_ before clipping
    return accelerator


def fused_as_on_cuda(model, cfg, fused=None):
    return _build_optimizer(model, cfg, fused=True)


if __name__ == "__main__":
    training.make_accelerator = with_cpu_loss_scaler
    if os.environ.get("WIKIART_PROBE_FUSED") == "1":
        training.build_optimizer = fused_as_on_cuda
    sys.argv = [str(Path(__file__).resolve().parents[2] / "train.py"), *sys.argv[1:]]
    runpy.run_path(sys.argv[0], run_name="__main__")
