"""accelerate_configs/: every file is a valid Accelerate launcher config with the settings its
name promises, and the CPU ones really start that many ranks in one process group."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "accelerate_configs"
CONFIGS = sorted(CONFIG_DIR.glob("*.yaml"))
# name -> (distributed_type, num_processes, num_machines, mixed_precision)
EXPECTED = {
    "cpu.yaml": ("NO", 1, 1, "no"),
    "cpu_ddp.yaml": ("MULTI_GPU", 2, 1, "no"),   # torchrun; the ranks fall back to CPU + gloo
    "single_gpu.yaml": ("NO", 1, 1, "bf16"),
    "multi_gpu.yaml": ("MULTI_GPU", 8, 1, "bf16"),
    "multi_node.yaml": ("MULTI_GPU", 16, 2, "bf16"),
}

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
"""


def test_every_expected_config_is_there() -> None:
    assert set(EXPECTED) <= {p.name for p in CONFIGS}


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_config_parses_as_an_accelerate_config(path: Path) -> None:
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file

    cfg = load_config_from_file(str(path))
    assert isinstance(cfg, ClusterConfig) and cfg.compute_environment.value == "LOCAL_MACHINE"
    if path.name in EXPECTED:
        dist, processes, machines, precision = EXPECTED[path.name]
        assert (cfg.distributed_type.value, cfg.num_processes, cfg.num_machines, str(cfg.mixed_precision)) == \
            (dist, processes, machines, precision)
    if cfg.num_machines > 1:
        # slurm/train.sbatch overrides these per job; they must be there to override.
        assert cfg.main_process_ip and cfg.main_process_port and cfg.rdzv_backend == "static"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
                           str(CONFIG_DIR / name), "--main_process_port", str(_free_port()),
                           str(probe), str(tmp_path / "out")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # Two ranks may print into the same line: pick out each flat JSON object.
    reports = [json.loads(found) for found in re.findall(r"PROBE (\{[^{}]*\})", proc.stdout)]
    assert sorted(r["rank"] for r in reports) == list(range(ranks)), proc.stdout
    for report in reports:
        assert report["num_processes"] == ranks and report["sum"] == ranks
        assert report["type"] == dist_type and report["device"].startswith("cpu")
