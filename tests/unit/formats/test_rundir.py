"""The run directory's names (formats/rundir.py), what --overwrite removes, and the atomic writer
(formats/files.py): a failed write leaves the old file and no temporary."""

import json
import math
import signal

import pytest
from accelerate import Accelerator

from wikiart.config.options import parse_train_config
from wikiart.evaluate.report import write_json as write_report_json
from wikiart.formats import checkpoint as ckpt
from wikiart.formats import files
from wikiart.formats.rundir import OVERWRITTEN, RunDir, read_weights_kind, record_weights_kind
from wikiart.train.preemption import StopRequest
from wikiart.train.setup import check_run_dir, prepare_run_dir


def test_run_dir_names(tmp_path):
    run = RunDir(tmp_path / "r")
    names = {k: getattr(run, k).relative_to(run.path).as_posix() for k in
             ("config", "best", "best_tmp", "checkpoints", "metrics", "stop_file", "stopped", "hub_staging")}
    assert names == {"config": "config.json", "best": "best", "best_tmp": "best.tmp", "checkpoints": "checkpoints",
                     "metrics": "metrics.jsonl", "stop_file": "STOP", "stopped": "STOPPED",
                     "hub_staging": ".hub_staging"}
    assert ckpt.checkpoint_root(run.path) == run.checkpoints  # the checkpoint writer uses the same name
    assert not run.path.exists()  # naming paths writes nothing


def _filled_run(out):
    """A finished run plus a file of the user's and a stop marker, as --out would hold them."""
    run = RunDir(out)
    (run.checkpoints / "step-00000004").mkdir(parents=True)
    (run.checkpoints / "step-00000004" / ckpt.COMPLETE_MARKER).write_text("ok\n")
    run.best.mkdir()
    (run.best / "model.safetensors").write_bytes(b"weights")
    run.metrics.write_text('{"kind": "val", "step": 4}\n')
    run.config.write_text('{"old": true}\n')
    (out / "notes.txt").write_text("mine")
    run.stopped.write_text('{"step": 4, "reason": "SIGUSR1"}\n')
    return run


def test_overwrite_removes_exactly_the_previous_runs_files(tmp_path):
    out = tmp_path / "run"
    run = _filled_run(out)
    assert run.holds_run()
    acc = Accelerator(cpu=True)
    cfg = parse_train_config(["--task", "genre", "--shards", "unused", "--out", str(out), "--overwrite"])
    assert check_run_dir(cfg, acc) == out
    assert prepare_run_dir(cfg, acc) == out
    # The old checkpoints, best/ and log are gone; the user's file stays; config.json is the new run's.
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "notes.txt"]
    assert (out / "notes.txt").read_text() == "mine"
    saved = json.loads(run.config.read_text())
    assert saved["train"]["out"] == str(out) and saved["data"]["task"] == "genre"


def test_without_overwrite_a_previous_run_is_refused_and_kept(tmp_path):
    out = tmp_path / "run"
    _filled_run(out)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    cfg = parse_train_config(["--task", "genre", "--shards", "unused", "--out", str(out)])
    with pytest.raises(RuntimeError, match="already holds a run"):
        check_run_dir(cfg, Accelerator(cpu=True))
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before


def test_remove_previous_run_removes_the_listed_names_only(tmp_path):
    run = _filled_run(tmp_path)
    run.hub_staging.mkdir()
    run.stop_file.touch()
    assert [p.name for p in run.overwritten()] == list(OVERWRITTEN)
    run.remove_previous_run()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hub_staging", "STOP", "STOPPED", "notes.txt"]
    run.remove_previous_run()  # nothing left to remove: no error
    assert not run.holds_run()


def test_stop_request_writes_the_stopped_marker_and_clears_the_stop_file(tmp_path):
    run = RunDir(tmp_path)
    run.stop_file.touch()
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGUSR1, signal.SIGTERM)}
    try:  # StopRequest installs its handlers: this test process gets its own back
        request = StopRequest(Accelerator(cpu=True), run.stop_file, check_every=1)
        assert request.agreed(step=3)
        request.acknowledge(run.path, 3)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    assert json.loads(run.stopped.read_text()) == {"step": 3, "reason": f"stop file {run.stop_file}"}
    assert not run.stop_file.exists()


def test_weights_kind_record(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"tasks": ["genre"]}))
    assert read_weights_kind(tmp_path / "config.json") is None  # a model saved before the key
    record_weights_kind(tmp_path, "ema")
    assert json.loads((tmp_path / "config.json").read_text()) == {"tasks": ["genre"], "weights": "ema"}
    assert read_weights_kind(tmp_path / "config.json") == "ema"
    with pytest.raises(ValueError, match="weights kind"):
        record_weights_kind(tmp_path, "average")
    assert read_weights_kind(tmp_path / "config.json") == "ema"
    assert read_weights_kind(tmp_path / "missing.json") is None


def test_atomic_write_replaces_the_file(tmp_path):
    path = tmp_path / "m.json"
    path.write_text("old")
    assert files.write_json(path, {"b": 1, "a": "é"}, sort_keys=True) == path
    assert path.read_text(encoding="utf-8") == '{\n "a": "é",\n "b": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


@pytest.mark.parametrize("bad", [{"x": object()}, {"x": float("nan")}])
def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, bad):
    path = tmp_path / "m.json"
    files.write_json(path, {"x": 1})
    with pytest.raises((TypeError, ValueError)):
        files.write_json(path, bad, allow_nan=False)  # object(): not serialisable; NaN: not strict JSON
    assert json.loads(path.read_text()) == {"x": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_a_write_that_fails_after_opening_leaves_the_old_file(tmp_path):
    path = tmp_path / "m.txt"
    files.write_text(path, "old\n")
    with pytest.raises(UnicodeEncodeError):  # fails inside the write, once the temporary exists
        files.write_text(path, "new \ud800")
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["m.txt"]


def test_report_json_writes_nan_as_null(tmp_path):
    path = tmp_path / "metrics.json"
    write_report_json(path, {"top1": float("nan"), "loss": math.inf, "n": 3, "per": [0.5, float("nan")]})
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"top1": None, "loss": None, "n": 3, "per": [0.5, None]}


def test_replace_directory_swaps_and_leaves_no_old_copy(tmp_path):
    final, new = tmp_path / "best", tmp_path / "best.tmp"
    final.mkdir()
    (final / "a").write_text("old")
    new.mkdir()
    (new / "a").write_text("new")
    files.replace_directory(new, final)
    assert (final / "a").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]
    assert ckpt.replace_directory is files.replace_directory  # the name callers already use
