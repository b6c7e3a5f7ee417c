"""A Hub that hangs never holds up training: a real in-process run with the recording double
blocked on every call (the pusher itself: tests/unit/hub/test_hub.py)."""

from __future__ import annotations

import threading
import time

import pytest

from tests.support.hub import run_config
from tests.support.training import metrics_rows
from wikiart.train import hub_sync as hub


@pytest.mark.faults
@pytest.mark.slow
def test_a_stuck_hub_never_holds_up_training(tmp_path, double, synthetic_shards, monkeypatch):
    from wikiart.train.loop import train
    release = threading.Event()
    double.block = release
    monkeypatch.setenv(hub.TIMEOUT_ENV, "0.5")
    out = tmp_path / "run"
    train(run_config(synthetic_shards, "--out", str(out), "--max-steps", "4", "--eval-every", "2",
                     "--hub-every", "1"))
    assert double.started.is_set() and not release.is_set()  # trained to the end while the first upload hung
    assert metrics_rows(out, "train")[-1]["step"] == 4
    (row,) = metrics_rows(out, "hub")
    assert row["status"] == "timeout" and "0.5s" in row["error"]
    release.set()
    deadline = time.monotonic() + 30
    while len(double.calls("upload_folder")) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    uploads = double.calls("upload_folder")
    assert len(uploads) == 2 and "training state step-00000004" in uploads[1]["commit_message"]
