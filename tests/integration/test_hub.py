"""train.py fails fast, in one line and before writing, on a bad repo id or a missing token (the
checks themselves: tests/unit/hub/test_hub.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.hub import REPO, TOKEN
from tests.support.training import TINY, run_train


def no_token_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    return {**env, "HF_HOME": str(tmp_path / "hf_home"), "HF_TOKEN_PATH": str(tmp_path / "no_token")}


@pytest.mark.slow  # a train.py process: ~5-15 s of imports each
@pytest.mark.parametrize("repo, with_token, needle", [
    ("bad//id", True, "not a valid repo id"),
    (REPO, False, "no Hugging Face token"),
])
def test_train_cli_fails_fast_on_hub_flags(repo, with_token, needle, tmp_path, synthetic_shards):
    env = {**os.environ, "HF_TOKEN": TOKEN} if with_token else no_token_env(tmp_path)
    out = tmp_path / "run"
    proc = run_train(["--shards", str(synthetic_shards), "--out", str(out), "--push-to-hub", repo, *TINY,
                      "--workers", "1"], env=env, check=False, timeout=120)
    assert proc.returncode != 0
    assert needle in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert "Traceback" not in proc.stderr and TOKEN not in proc.stderr + proc.stdout
    assert not out.exists()
