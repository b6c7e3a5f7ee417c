"""The Hub as the tests see it: a fake token and repo id, a fast retry policy, and the
environment that makes a train.py process push to `hub_double.RecordingHfApi` (the fixtures
`token` and `double` for in-process use are in tests/conftest.py)."""

from __future__ import annotations

import os
from pathlib import Path

from wikiart.config.options import parse_train_config

from .training import ROOT, TINY

TOKEN = "hf_wikiartSecretTestToken0123456789abcd"
REPO = "painter/wikiart-tiny"
DOUBLE_SPEC = "tests.support.hub_double:RecordingHfApi"  # for WIKIART_HUB_API (wikiart.hub.repo.API_ENV)


def run_config(shards: Path, *extra: str) -> dict:
    """The config of a tiny genre run on `shards` that pushes to REPO."""
    return parse_train_config(["--task", "genre", "--shards", str(shards), "--push-to-hub", REPO, *TINY,
                               "--workers", "1", *extra])


def double_env(store: Path, fail: int = 0) -> dict[str, str]:
    """Environment that makes train.py use RecordingHfApi with its remote under `store` (failing
    its first `fail` calls)."""
    return {**os.environ, "HF_TOKEN": TOKEN, "OMP_NUM_THREADS": "1", "WIKIART_HUB_API": DOUBLE_SPEC,
            "WIKIART_HUB_DOUBLE_DIR": str(store), "WIKIART_HUB_DOUBLE_FAIL": str(fail),
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
