"""Real training and evaluation runs pushing to the Hub, with HfApi replaced by
`tests.support.hub_double.RecordingHfApi`: in-process and through train.py/evaluate.py, one
process and two DDP ranks, a stopped run resumed from the Hub (the pusher itself:
tests/unit/hub/test_hub.py; a stuck Hub: tests/faults/test_hub_training.py)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from tests.support.hub import REPO, TOKEN, double_env, run_config
from tests.support.hub_double import RecordingHfApi
from tests.support.training import TINY, metrics_rows, run_evaluate, run_train
from wikiart.train import hub_sync as hub


def assert_no_token(*roots: Path, text: str = "") -> None:
    assert TOKEN not in text
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file():
                assert TOKEN.encode() not in path.read_bytes(), path


@pytest.mark.slow
def test_training_pushes_best_and_state_in_the_background(tmp_path, double, synthetic_shards, capfd):
    from wikiart.train.loop import train
    out = tmp_path / "run"
    train(run_config(synthetic_shards, "--out", str(out), "--max-steps", "4", "--eval-every", "2",
                     "--save-every", "2", "--hub-every", "best"))
    uploads = double.calls("upload_folder")
    assert uploads and all(u["pid"] == os.getpid() and u["thread"] == "wikiart-hub-push" for u in uploads)
    assert len(double.calls("create_repo")) == 1
    last = uploads[-1]
    assert {"README.md", "config.json", "model.safetensors", "metrics.json", "training_state/COMPLETE",
            "training_state/model.safetensors", "training_state/optimizer.pt",
            "training_state/state.json"} <= set(last["files"])
    assert "best model (step" in last["commit_message"] and "training state step-00000004" in last["commit_message"]
    card = ModelCard(last["readme"])
    assert card.data.pipeline_tag == "image-classification" and "| genre |" in card.text
    remote_state = json.loads((double.remote(REPO) / "training_state" / "state.json").read_text())
    assert remote_state["step"] == 4 and remote_state["finished"]
    (row,) = metrics_rows(out, "hub")
    assert row["status"] == "pushed" and row["commit_url"] and row["repo_id"] == REPO
    assert row["step"] == row["pushed_step"] == 4 and row["pushes"] >= 1 and row["failures"] == 0
    assert not (out / hub.STAGING_DIR).exists()
    assert_no_token(out, double.root, text="".join(capfd.readouterr()))


@pytest.mark.slow
@pytest.mark.parametrize("args, first_push", [
    (["--save-every", "2"], "best model (step 2, val score {score}) + training state step-00000002"),
    (["--save-every", "4"], "best model (step 2, val score {score})"),  # no checkpoint at step 2: pushed at once
    # the last step of an epoch (370 genre paintings / 32 = 11 steps): the epoch's checkpoint takes it
    (["--batch-size", "32", "--epochs", "2", "--eval-every", "11", "--max-steps", "12"],
     "best model (step 11, val score {score}) + training state step-00000011"),
], ids=["checkpoint-at-that-step", "no-checkpoint", "epoch-end"])
def test_a_better_best_is_pushed_with_the_checkpoint_of_its_step(tmp_path, double, synthetic_shards, args,
                                                                  first_push):
    """Validation (and best/) come before the checkpoint of the same step: the push of an improved
    best/ must carry that checkpoint, or a `--resume hub` after losing the machine goes back further."""
    from wikiart.train.loop import train
    out = tmp_path / "run"
    train(run_config(synthetic_shards, "--out", str(out), "--max-steps", "4", "--eval-every", "2",
                     "--hub-every", "best", *args))
    first_val = metrics_rows(out, "val")[0]
    messages = [u["commit_message"] for u in double.calls("upload_folder")]
    assert messages[0] == "wikiart: " + first_push.format(score=f"{first_val['score']:.4f}"), messages
    last = metrics_rows(out, "train")[-1]["step"]
    assert f"training state step-{last:08d}" in messages[-1]


def launch(args: list[str], env: dict[str, str], ranks: int = 1) -> subprocess.CompletedProcess:
    """train.py in one process, or under `accelerate launch` with `ranks` CPU processes."""
    # An OS-chosen free port: a port derived from the pid can meet another suite's job on a shared host.
    return run_train(args, ranks=ranks, env=env, check=False)


@pytest.mark.slow
def test_stopped_run_pushes_its_state_and_resumes_from_the_hub(tmp_path, synthetic_shards):
    store = tmp_path / "hub_double"
    common = ["--task", "genre", "--shards", str(synthetic_shards), "--push-to-hub", REPO, "--max-steps", "6",
              "--eval-every", "2", *TINY, "--workers", "1"]
    first = launch([*common, "--out", str(tmp_path / "a"), "--stop-at-step", "3"], double_env(store, fail=1))
    assert first.returncode == 75, first.stderr[-3000:]
    assert "failed (attempt 1/6)" in first.stdout and f"hub: pushed step 3 to {REPO}" in first.stdout
    api = RecordingHfApi(store, fail_times=0)
    assert "training state step-00000003" in api.calls("upload_folder")[-1]["commit_message"]
    assert metrics_rows(tmp_path / "a", "hub")[0]["status"] == "pushed"
    second = launch([*common, "--out", str(tmp_path / "b"), "--resume", "hub"], double_env(store))
    assert second.returncode == 0, second.stderr[-3000:]
    assert "fetched the training state of step 3" in second.stdout and "resuming from" in second.stdout
    assert [r["step"] for r in metrics_rows(tmp_path / "b", "train")][0] > 3
    assert (tmp_path / "b" / "best" / "model.safetensors").is_file()
    state = json.loads((api.remote(REPO) / "training_state" / "state.json").read_text())
    assert state["step"] == 6 and state["finished"]
    assert_no_token(tmp_path / "a", tmp_path / "b", store, text=first.stdout + first.stderr + second.stdout)


@pytest.mark.slow
def test_only_the_main_rank_pushes_under_ddp(tmp_path, synthetic_shards):
    store = tmp_path / "hub_double"
    proc = launch(["--task", "genre", "--shards", str(synthetic_shards), "--out", str(tmp_path / "ddp"),
                   "--push-to-hub", REPO, "--max-steps", "4", "--eval-every", "2", "--hub-every", "2", *TINY, "--workers", "1"],
                  double_env(store), ranks=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "world size 2" in proc.stdout
    calls = RecordingHfApi(store).calls()
    assert calls and len({c["pid"] for c in calls}) == 1 and {c["thread"] for c in calls} == {"wikiart-hub-push"}
    (row,) = metrics_rows(tmp_path / "ddp", "hub")
    assert row["status"] == "pushed" and row["step"] == 4


@pytest.mark.slow
def test_evaluate_push_to_hub_updates_the_card_with_the_evaluation(tmp_path, trained_run, synthetic_shards):
    store = tmp_path / "store"
    out = tmp_path / "eval"
    proc = run_evaluate(["--checkpoint", str(trained_run / "best"), "--shards", str(synthetic_shards),
                         "--out", str(out), "--workers", "0", "--push-to-hub", REPO], env=double_env(store), check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    card = ModelCard((store / "remote" / REPO / "README.md").read_text())
    top1 = metrics["tasks"]["genre"]["top1"]
    assert f"{top1:.4f}" in card.text and "joint_exact_match" in card.text
    assert "`val` split" in card.text and card.data.library_name == "wikiart"
    assert_no_token(out, store, text=proc.stdout + proc.stderr)


def test_evaluate_rejects_a_bad_repo_id_before_any_work(tmp_path, synthetic_shards, token):
    proc = run_evaluate(["--checkpoint", str(tmp_path / "none"), "--shards", str(synthetic_shards),
                         "--out", str(tmp_path / "eval"), "--push-to-hub", "bad//id"], check=False)
    assert proc.returncode == 1 and "bad//id" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "eval").exists()
