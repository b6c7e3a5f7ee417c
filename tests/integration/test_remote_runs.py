"""Training and evaluation with --shards a URL (a real HTTP server on 127.0.0.1, and the same
server standing in for the Hugging Face Hub through HF_ENDPOINT) end exactly as from the local
directory: 2-rank DDP bit for bit, a SIGKILLed run resumed from the URL, evaluation's numbers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.support.shard_server import serve
from tests.support.training import ROOT, TINY, final_weights, metrics_rows, run_evaluate, run_train

pytestmark = pytest.mark.slow
FAST_RETRIES = {"WIKIART_REMOTE_RETRIES": "4", "WIKIART_REMOTE_BACKOFF": "0.05"}


def train_args(shards: str, out: Path, *extra: str) -> list[str]:
    return ["--shards", shards, "--out", str(out), "--task", "genre", "--epochs", "1", "--max-steps", "6",
            "--workers", "1", "--save-every", "2", *TINY, *extra]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = final_weights(a), final_weights(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def val_rows(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "time"} for row in metrics_rows(run_dir, "val")]


@pytest.fixture(scope="module")
def local_two_ranks(synthetic_shards, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("local") / "run"
    run_train(train_args(str(synthetic_shards), out), ranks=2)
    return out


def test_two_ranks_from_a_url_train_exactly_as_from_the_directory(synthetic_shards, local_two_ranks, tmp_path):
    with serve(synthetic_shards) as (url, faults):
        faults.unavailable["manifest.json"] = 1  # the first manifest read gets a 503, then retries
        faults.unavailable[sorted(p.name for p in synthetic_shards.glob("train-*.tar"))[0]] = 1
        run_train(train_args(url, tmp_path / "run"), ranks=2, env=FAST_RETRIES)
    assert_same_weights(tmp_path / "run", local_two_ranks)
    assert val_rows(tmp_path / "run") == val_rows(local_two_ranks)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["data"]["shards"] == url


HUB_PREFIX = "/datasets/someone/wikiart-shards/resolve/main/shards"  # hf://datasets/someone/wikiart-shards/shards


def hub_env(url: str) -> dict[str, str]:
    """The server as the Hub: hf://datasets/USER/REPO/PATH -> ENDPOINT/datasets/USER/REPO/resolve/main/PATH."""
    return {**FAST_RETRIES, "HF_ENDPOINT": url.split("/datasets/")[0], "HF_HUB_OFFLINE": "0"}


def test_killed_and_resumed_from_a_hub_dataset_repo_with_a_shard_cache_ends_identical(synthetic_shards,
                                                                                       local_two_ranks, tmp_path):
    out, cache = tmp_path / "run", tmp_path / "cache"
    with serve(synthetic_shards, prefix=HUB_PREFIX) as (url, faults):
        args = train_args("hf://datasets/someone/wikiart-shards/shards", out, "--shard-cache", str(cache))
        env = hub_env(url)
        killed = run_train(args, ranks=2, check=False, env={**env, "WIKIART_FAULT": "train.step@5"})
        assert killed.returncode != 0 and f"signal {int(signal.SIGKILL)} at train.step #5" in killed.stdout
        resumed = run_train([*args, "--resume", "auto"], ranks=2, env=env)
        assert "resuming from" in resumed.stdout and "step-00000004" in resumed.stdout
        # One download per shard for both runs, two ranks and their workers: the cache served the rest.
        assert all(count == 1 for name, count in faults.requests.items() if name.endswith(".tar"))
    assert_same_weights(out, local_two_ranks)
    assert {p.name for p in cache.glob("*.tar")} <= {f"{s['sha256']}.tar" for split in json.loads(
        (synthetic_shards / "manifest.json").read_text())["splits"].values() for s in split["shards"]}


def evaluate(checkpoint: Path, shards: str, out: Path, env: dict[str, str] | None = None) -> dict:
    run_evaluate(["--checkpoint", str(checkpoint), "--shards", shards, "--out", str(out), "--batch-size", "16",
                  "--workers", "2", "--outliers", "--outlier-top", "4"], env={**FAST_RETRIES, **(env or {})})
    metrics = json.loads((out / "metrics.json").read_text())
    metrics.pop("shards")
    return metrics


def test_evaluation_from_a_url_and_from_a_hub_dataset_repo_equals_evaluation_from_disk(trained_run, synthetic_shards,
                                                                                        tmp_path):
    on_disk = evaluate(trained_run, str(synthetic_shards), tmp_path / "disk")
    with serve(synthetic_shards) as (url, faults):
        faults.cut_after[sorted(p.name for p in synthetic_shards.glob("val-*.tar"))[0]] = 5000
        assert evaluate(trained_run, url, tmp_path / "http") == on_disk
    with serve(synthetic_shards, prefix=HUB_PREFIX) as (url, faults):
        hub = "hf://datasets/someone/wikiart-shards/shards"
        assert evaluate(trained_run, hub, tmp_path / "hub", hub_env(url)) == on_disk
        verify = subprocess.run([sys.executable, "-m", "wikiart.cli.build_shards", "--verify", hub], cwd=ROOT,
                                capture_output=True, text=True, timeout=300, env={**os.environ, **hub_env(url)})
        assert verify.returncode == 0 and verify.stdout.strip().endswith(f"verify {hub}: OK"), verify.stderr
    for name in ("outliers_genre.csv", "outliers_joint.csv"):
        assert (tmp_path / "hub" / name).read_text() == (tmp_path / "disk" / name).read_text()


def test_a_shard_missing_on_the_server_stops_training_with_one_line(synthetic_shards, tmp_path):
    with serve(synthetic_shards) as (url, faults):
        faults.missing.update(p.name for p in synthetic_shards.glob("train-*.tar"))
        proc = run_train(train_args(url, tmp_path / "run"), check=False, env=FAST_RETRIES)
    err = [line for line in proc.stderr.splitlines() if line.startswith("train.py: error:")]
    assert proc.returncode == 1 and len(err) == 1, proc.stderr[-3000:]
    assert err[0].startswith(f"train.py: error: {url}train-") and err[0].endswith("HTTP 404 Not Found")
