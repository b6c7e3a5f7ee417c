"""The CPU configs of accelerate_configs/ really start that many ranks in one process group
under `accelerate launch` (the files themselves: tests/unit/runtime/test_accelerate_configs.py)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.training import ACCELERATE_CONFIGS, ROOT, free_port


# Started by `accelerate launch`: set up the Accelerator exactly as training does, then all-reduce
# a one from every rank. Only ranks that really form one group add up to the world size.
PROBE = """
import json, sys
import torch
from wikiart.config.options import parse_train_config
from wikiart.train.setup import build_accelerator

cfg = parse_train_config(["--task", "genre", "--shards", "unused", "--out", sys.argv[1]])
acc = build_accelerator(cfg)
total = acc.reduce(torch.ones(()), reduction="sum") if acc.num_processes > 1 else torch.ones(())
print("PROBE " + json.dumps({"rank": acc.process_index, "num_processes": acc.num_processes,
                             "sum": float(total), "type": acc.distributed_type.value,
                             "device": str(acc.device)}), flush=True)
acc.end_training()  # as train.py ends: a rank leaving with gloo's threads alive may abort at exit
"""


@pytest.mark.slow
@pytest.mark.parametrize("name, ranks, dist_type", [
    ("cpu.yaml", 1, "NO"),
    ("cpu_ddp.yaml", 2, "MULTI_CPU"),
])
def test_cpu_config_starts_the_expected_ranks(name: str, ranks: int, dist_type: str, tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                           str(ACCELERATE_CONFIGS / name), "--main_process_port", str(free_port()),
                           str(probe), str(tmp_path / "out")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # Two ranks may print into the same line: pick out each flat JSON object.
    reports = [json.loads(found) for found in re.findall(r"PROBE (\{[^{}]*\})", proc.stdout)]
    assert sorted(r["rank"] for r in reports) == list(range(ranks)), proc.stdout
    for report in reports:
        assert report["num_processes"] == ranks and report["sum"] == ranks
        assert report["type"] == dist_type and report["device"].startswith("cpu")
