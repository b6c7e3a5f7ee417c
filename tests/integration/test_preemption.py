"""Stop requests (signals, stop file) and DDP consistency, with real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import torchvision

from tests.support.forked import ForkedRun
from tests.support.training import ROOT, SUPPORT, TINY, final_weights, launch_command, metrics_rows, run_train
from wikiart.formats import checkpoint as ckpt
from wikiart.data.loader import train_samples_for
from wikiart.formats.manifest import load_manifest

LONG = ["--task", "genre", "--epochs", "3", "--workers", "1", "--log-every", "1", "--stop-check-every", "1",
        "--seed", "5", *TINY]


def _wait_for_train_rows(run_dir: Path, proc: subprocess.Popen | ForkedRun, rows: int, timeout: float = 180) -> None:
    """Poll metrics.jsonl until training has logged `rows` steps (the run is mid-epoch then)."""
    deadline = time.monotonic() + timeout
    path = run_dir / "metrics.jsonl"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"training ended early: {proc.communicate()}")
        if path.exists() and sum('"kind": "train"' in line for line in path.read_text().splitlines()) >= rows:
            return
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("training did not log in time")


def _start(args: list[str]) -> ForkedRun:
    """train.py in a process of its own (forked from the pre-imported server), left running."""
    return ForkedRun("train.py", args, {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}, ROOT)


@pytest.fixture(scope="module")
def reference_run(synthetic_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted 14-step run that every stopped-and-resumed run below must end equal to:
    the same flags and seed each time, so it is trained once for the three ways of stopping."""
    reference = tmp_path_factory.mktemp("preemption") / "reference"
    run_train(["--shards", str(synthetic_shards), *LONG, "--max-steps", "14", "--out", str(reference)])
    return reference


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGUSR1", "SIGTERM", "stop-file"])
def test_stop_request_saves_exits_75_and_resumes_to_the_same_weights(how, synthetic_shards, reference_run, tmp_path):
    common = ["--shards", str(synthetic_shards), *LONG, "--max-steps", "14"]
    reference = reference_run

    out = tmp_path / "stopped"
    proc = _start([*common, "--out", str(out)])
    _wait_for_train_rows(out, proc, rows=3)
    if how == "stop-file":
        (out / "STOP").touch()
    else:
        proc.send_signal(getattr(signal, how))
    stdout, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 75, stderr[-3000:]
    marker = json.loads((out / "STOPPED").read_text())
    state = ckpt.load_checkpoint(ckpt.latest_checkpoint(out))[0]
    assert state.step == marker["step"] and 3 <= state.step < 14 and not state.finished
    assert how.replace("-", " ") in marker["reason"].replace("-", " ") or how in marker["reason"]
    assert not (out / "STOP").exists()

    run_train([*common, "--out", str(out), "--resume", "auto"])
    assert not (out / "STOPPED").exists()
    steps = [r["step"] for r in metrics_rows(out, "train")]
    assert steps == list(range(1, 15)), "every step trained exactly once"
    a, b = final_weights(reference), final_weights(out)
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.mark.slow
def test_two_ranks_agree_on_the_stop_step_and_stay_identical_through_unfreezing(synthetic_shards, tmp_path):
    """2 gloo ranks: the backbone (from a weights file, as pretrained ones load) is frozen in epoch 0
    (--freeze-backbone-epochs 1) and wholly unfrozen at epoch 1, stem included, with the seed's
    AdamW rebuild and cosine restart (--unfreeze-epoch 2). Only the main process watches the stop
    file, so stopping both ranks at one step relies on the all-reduce. After resuming, both ranks
    hold identical weights and the backbone moved only after epoch 0."""
    out = tmp_path / "ddp"
    weights = tmp_path / "resnet18-weights.pth"
    torch.manual_seed(7)
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    args = ["--shards", str(synthetic_shards), "--out", str(out), "--task", "genre", "--epochs", "2",
            "--pretrained-path", str(weights), "--freeze-backbone-epochs", "1", "--unfreeze-epoch", "2", "--workers", "1", "--keep-last", "10",
            "--save-every", "12",
            "--log-every", "1", "--stop-check-every", "1", *TINY]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = launch_command(SUPPORT / "ddp_weights_probe.py", ranks=2)  # an OS-chosen free port
    proc = subprocess.Popen([*launch, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _wait_for_train_rows(out, proc, rows=3)
    (out / "STOP").touch()
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode != 0 and (out / "STOPPED").is_file(), stderr[-3000:]  # torchrun: exit 1
    stopped = ckpt.load_checkpoint(ckpt.latest_checkpoint(out))[0]
    assert stopped.step == json.loads((out / "STOPPED").read_text())["step"] and not stopped.finished

    second = subprocess.run([*launch, *args, "--resume", "auto"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    rank0 = torch.load(out / "rank0_weights.pt", weights_only=True)
    rank1 = torch.load(out / "rank1_weights.pt", weights_only=True)
    for name, value in rank0["final"].items():
        assert torch.equal(value, rank1["final"][name]), f"ranks differ in {name}"
    # The logged loss is the mean over the ranks, which saw different samples.
    logged = {r["step"]: r["loss"] for r in metrics_rows(out, "train")}
    assert rank0["losses"] and rank0["losses"].keys() == rank1["losses"].keys()
    assert any(rank0["losses"][s] != rank1["losses"][s] for s in rank0["losses"])
    for step, loss in rank0["losses"].items():
        assert logged[step] == pytest.approx((loss + rank1["losses"][step]) / 2, rel=1e-5)

    steps_per_epoch = train_samples_for(load_manifest(synthetic_shards), "genre") // 16  # 2 ranks x 8
    assert steps_per_epoch == 23  # checkpoint step-00000023 closes epoch 0
    epoch0 = ckpt.load_checkpoint(ckpt.checkpoint_root(out) / f"step-{steps_per_epoch:08d}")[1]
    init = initial_weights(out)
    for name in rank0["backbone"]:
        assert torch.equal(epoch0[name], init[name]), f"{name} changed while frozen"
        # epoch 1 (the seed's 1-based 2) unfroze the stem too, rebuilding AdamW on both ranks alike
        assert not torch.equal(rank0["final"][name], init[name]), f"{name} did not move after epoch 0"
    assert [(r["epoch"], r["optimizer_reset"], len(r["frozen"])) for r in metrics_rows(out, "epoch")] == \
        [(0, False, len(rank0["backbone"])), (1, True, 0)]
    assert any(not torch.equal(epoch0[n], init[n]) for n in init if n.startswith("heads."))


def initial_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """Rebuild the seed-determined initial weights of the run (same config, same seed)."""
    from wikiart.config.options import RunConfig
    from wikiart.formats.manifest import load_manifest
    from wikiart.train.setup import build_model
    cfg = RunConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
    return build_model(cfg, load_manifest(cfg.data.shards), ("genre",)).state_dict()


@pytest.mark.slow
def test_a_run_resumed_with_other_loader_workers_finishes_the_epoch_as_it_was_split(synthetic_shards, tmp_path):
    """A requeued job may land on a node whose default worker count differs: the saved position
    in the epoch only holds among as many workers, so the epoch ends with the checkpoint's count."""
    common = ["--shards", str(synthetic_shards), *LONG, "--max-steps", "10"]
    reference = tmp_path / "reference"
    run_train([*common, "--out", str(reference), "--workers", "2"])
    out = tmp_path / "moved"
    run_train([*common, "--out", str(out), "--workers", "2", "--stop-at-step", "4"], check=False)
    assert ckpt.load_checkpoint(ckpt.latest_checkpoint(out))[0].epoch_workers == 2
    resumed = run_train([*common, "--out", str(out), "--workers", "0", "--resume", "auto"])
    assert "split among 2 loader worker(s) per rank (the checkpoint's); finishing it with as many, then 1" \
        in " ".join(resumed.stdout.split())  # rich wraps long lines
    a, b = final_weights(reference), final_weights(out)
    assert all(torch.equal(a[name], b[name]) for name in a)


def test_resuming_in_another_batch_layout_is_refused_before_any_write(synthetic_shards, tmp_path):
    out = tmp_path / "run"
    common = ["--shards", str(synthetic_shards), "--out", str(out), "--task", "genre", "--workers", "0", *TINY]
    run_train([*common, "--max-steps", "2"])
    config = (out / "config.json").read_text()
    proc = run_train([*common, "--max-steps", "4", "--resume", "auto", "--batch-size", "4"], check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "world size 1, --batch-size 8 and --grad-accum 1; this run has 1, 4 and 1" in proc.stderr
    assert (out / "config.json").read_text() == config
