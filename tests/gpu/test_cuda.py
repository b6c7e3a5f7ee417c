"""What only a CUDA device can show: the fp16 loss scaler skipping a step with a NaN batch, the
GPU defaults (bf16, channels_last, pinned batches) in a real run, and the device stage giving
the same images on the GPU as on the CPU. Skipped where torch sees no CUDA device (CI); run on
a GPU machine with `pytest tests/gpu` (`make gpu-check`)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.support.training import (TINY, all_finite, check_the_scaler_skipped_the_nan_step, metrics_rows,
                                    run_train, train_fp16_with_a_nan_batch)
from wikiart.formats import checkpoint as ckpt
from wikiart.data.device import DeviceAugment

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.faults
def test_fp16_scaler_skips_the_step_of_a_nan_batch_and_training_goes_on(synthetic_shards, tmp_path):
    out = tmp_path / "fp16"
    proc = train_fp16_with_a_nan_batch(synthetic_shards, out, steps=6, nan_step=3)
    check_the_scaler_skipped_the_nan_step(proc, out, steps=6, nan_step=3)


def test_cuda_run_defaults_to_bf16_channels_last_and_trains(synthetic_shards, tmp_path):
    out = tmp_path / "cuda"
    run_train(["--shards", str(synthetic_shards), "--out", str(out), "--task", "genre", "--max-steps", "4",
               "--log-every", "1", "--workers", "2", *TINY])
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["mixed_precision"] == "bf16" and config["model"]["channels_last"] is True
    losses = [r["loss"] for r in metrics_rows(out, "train")]
    assert len(losses) == 4 and all(isinstance(v, float) and 0 < v < 10 for v in losses)
    assert all_finite(load_file(str(ckpt.latest_checkpoint(out) / "model.safetensors")))


def test_device_stage_gives_the_same_images_on_the_gpu_as_on_the_cpu():
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 40, 48, 3), generator=gen, dtype=torch.uint8).permute(0, 3, 1, 2)
    aug = torch.stack([torch.tensor([0.7 + 0.1 * i, 1.3 - 0.1 * i, 0.8 + 0.05 * i, 0.02 * i - 0.05, 0, 0, 0, 0])
                       for i in range(6)])
    stage = DeviceAugment.for_recipe((0.4, 0.4, 0.4, 0.1), 0.0, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    batch = {"image": images, "aug": aug}
    on_cpu = stage(batch, torch.device("cpu"), seed=1)
    on_gpu = stage({"image": images.pin_memory(), "aug": aug}, torch.device("cuda"), seed=1).cpu()
    assert on_gpu.shape == on_cpu.shape == (6, 3, 40, 48)
    assert (on_gpu - on_cpu).abs().max() < 1e-4
    assert (on_cpu[1:] - on_cpu[:1]).abs().max() > 0.1  # the jitter did differ per image
