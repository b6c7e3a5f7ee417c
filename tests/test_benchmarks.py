"""The benchmark scripts run (tiny settings): the GPU script cannot be run here for real, so its
CPU smoke mode keeps it from rotting; numbers are not asserted (speed is measured, not tested)."""

from __future__ import annotations

import pytest
import torch

from benchmarks import gpu, loader_profile
from benchmarks.loader import bench_shard_images
from wikiart.config import DataConfig


@pytest.mark.slow
def test_gpu_benchmark_smoke_runs_both_measurements_on_the_cpu(monkeypatch, tmp_path):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.chdir(tmp_path)
    result = gpu.main(["--device", "cpu", "--smoke"])
    assert result["model_step"] > 0 and result["pipeline"] > 0
    # FlopCounterMode on the real model: resnet18 at 64 px is ~0.15 GFLOP forward (x3 for training),
    # the CNN-RNN head adds a little; a wrong count (0, or per batch) would be far off.
    assert 0.3 < result["gflop_per_image"] < 1.5


def test_loader_profile_times_every_stage_of_both_pipelines():
    torch.set_num_threads(1)
    rows = loader_profile.profile(bench_shard_images(6), DataConfig(image_size=64, batch_size=3, erasing_p=1.0))
    stages = {name: (before, after) for name, before, after in rows}
    for name in ("decode", "crop + resize", "collate", "worker total"):
        assert stages[name][0] > 0 and stages[name][1] > 0
    assert stages["colour jitter"][0] > 0 and stages["device stage on CPU (jitter, erase, normalise)"][1] > 0
