"""The benchmark scripts run (tiny settings): the GPU script cannot be run here for real, so its
CPU smoke mode keeps it from rotting; numbers are not asserted (speed is measured, not tested)."""

from __future__ import annotations

import pytest
import torch

from benchmarks import gpu, loader_profile
from benchmarks.loader import bench_shard_images
from wikiart.config.options import DataConfig


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
    assert all(v > 0 for v in stages["read + check from a shard (not in the totals)"])  # both read all 6


def test_loop_overhead_loops_take_turns_in_rotating_order_and_drop_the_warm_up_turn():
    from benchmarks.loop_overhead import interleaved_seconds

    calls = []

    class Recorder:
        def __init__(self, name):
            self.name = name

        def run(self, batches):
            calls.append((self.name, tuple(batches)))

    loops = {name: Recorder(name) for name in "abc"}
    seconds = interleaved_seconds(loops, list(range(10)), chunk=2, rounds=3)
    assert [name for name, _ in calls] == list("abc" "bca" "cab" "abc")   # warm-up turn, then 3 rounds
    assert {name: len(v) for name, v in seconds.items()} == {"a": 3, "b": 3, "c": 3}
    assert calls[3] == ("b", (2, 3)) and calls[9] == ("a", (6, 7))       # every loop gets the same batches
    assert all(t >= 0 for v in seconds.values() for t in v)


def test_backbone_speed_table_takes_each_backbone_at_a_size_it_fits(capsys):
    """benchmarks/backbones.py (the README's speed column; `--device cuda` on a GPU machine): a
    ViT is timed at the next multiple of its patch size, and its row says so."""
    from benchmarks import backbones

    torch.set_num_threads(1)
    assert backbones.build_fitting("timm/test_vit", 40).image_size == 48
    assert backbones.build_fitting("resnet18", 40).image_size == 40
    backbones.speed(("resnet18", "timm/test_vit"), 40, batch=2, rounds=1)
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in capsys.readouterr().out.splitlines()
            if line.startswith("| resnet18") or line.startswith("| timm/")}
    assert rows["resnet18"][2:4] == ["40", "2x2"] and rows["timm/test_vit"][2:4] == ["48", "3x3"]
    assert all(float(r[-1].strip(" |")) > 0 for r in rows.values())
