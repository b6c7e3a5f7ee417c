"""The forked runs most tests use (tests/support/forked.py) behave as `python train.py` does."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.support.forked import ForkedRun, check_env, import_time_env
from tests.support.training import ROOT


@pytest.mark.parametrize("script, args", [
    ("train.py", ["--task", "genre", "--batch-size", "0"]),    # argparse: exit 2 and its usage text
    ("train.py", ["--task", "genre", "--shards", "MISSING"]),  # run_cli: one line, exit 1
    ("evaluate.py", ["--checkpoint", "MISSING", "--shards", "MISSING"]),
])
def test_a_forked_command_exits_and_writes_as_a_new_interpreter_does(script, args, tmp_path):
    args = [str(tmp_path / a) if a == "MISSING" else a for a in [*args, "--out", str(tmp_path / "out")]]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    new = subprocess.run([sys.executable, str(ROOT / script), *args], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    run = ForkedRun(script, args, env, ROOT)
    assert run.pid != os.getpid()
    forked = run.completed(timeout=300)
    assert new.returncode in (1, 2)
    assert (forked.returncode, forked.stdout, forked.stderr) == (new.returncode, new.stdout, new.stderr)
    assert not (tmp_path / "out").exists()


def test_variables_read_at_import_time_are_refused_and_the_others_taken():
    assert import_time_env({**os.environ, "TORCH_HOME": "/elsewhere", "WIKIART_HUB_TIMEOUT": "1"}) == set()
    faulty = {**os.environ, "WIKIART_FAULT": "train.step@1"}  # wikiart.runtime.faults parses it on import
    assert import_time_env(faulty) == {"WIKIART_FAULT"}
    with pytest.raises(ValueError, match="WIKIART_FAULT"):
        check_env(faulty)
    assert import_time_env({k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}) == {"HF_HUB_OFFLINE"}
