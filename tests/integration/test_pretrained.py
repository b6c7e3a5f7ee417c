"""train.py without the ImageNet weights and offline fails in one line before writing
anything, on one rank and on two (the download itself: tests/unit/model/test_pretrained.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.support.training import ROOT, free_port
from wikiart.runtime.netprobe import unreachable

REAL_URL = "https://download.pytorch.org/models/resnet18-f37072fd.pth"


@pytest.mark.slow  # a train.py process: ~10 s of imports; two ranks ~30 s
@pytest.mark.parametrize("ranks", [1, pytest.param(2, id="ddp")])
def test_train_without_the_weights_offline_fails_in_one_line_before_writing(ranks, synthetic_shards, tmp_path):
    """Offline for real (download.pytorch.org): with two ranks the main one probes and fails, and
    the other gets its error instead of waiting at the next collective."""
    if unreachable(REAL_URL) is None:
        pytest.skip("download.pytorch.org is reachable: the run would download the weights")
    home, out = tmp_path / "torch", tmp_path / "run"
    home.mkdir()
    args = ["--shards", str(synthetic_shards), "--out", str(out), "--task", "genre", "--backbone", "resnet18",
            "--image-size", "32", "--batch-size", "8", "--proj-dim", "16", "--rnn-hidden", "16",
            "--rnn-layers", "1", "--workers", "0", "--no-progress"]
    if ranks == 1:
        cmd = [sys.executable, str(ROOT / "train.py"), *args]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(ROOT / "accelerate_configs" / "cpu_ddp.yaml"), "--num_processes", "2",
               "--main_process_port", str(free_port()), str(ROOT / "train.py"), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TORCH_HOME": str(home)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0, proc.stderr[-3000:]
    lines = [l for l in proc.stderr.splitlines() if l.startswith("train.py: error:")]
    assert len(lines) == ranks and len(set(lines)) == 1, proc.stderr[-3000:]  # every rank, the same line
    line = lines[0]
    assert line.startswith("train.py: error: ImageNet weights for 'resnet18' are not in the torch hub cache")
    for part in (REAL_URL, str(home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"),
                 "--pretrained-path FILE", "--no-pretrained"):
        assert part in line
    if ranks == 1:  # (the accelerate launcher adds its own traceback when a rank fails)
        assert "Traceback" not in proc.stderr
    assert not out.exists() and list(home.rglob("*.pth*")) == []
