"""accelerate_configs/: every file is a valid Accelerate launcher config with the settings its
name promises (the CPU ones started for real: tests/integration/test_accelerate_configs.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.training import ACCELERATE_CONFIGS

CONFIGS = sorted(ACCELERATE_CONFIGS.glob("*.yaml"))
# name -> (distributed_type, num_processes, num_machines, mixed_precision)
EXPECTED = {
    "cpu.yaml": ("NO", 1, 1, "no"),
    "cpu_ddp.yaml": ("MULTI_GPU", 2, 1, "no"),   # torchrun; the ranks fall back to CPU + gloo
    "single_gpu.yaml": ("NO", 1, 1, "bf16"),
    "multi_gpu.yaml": ("MULTI_GPU", 8, 1, "bf16"),
    "multi_node.yaml": ("MULTI_GPU", 16, 2, "bf16"),
}


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
