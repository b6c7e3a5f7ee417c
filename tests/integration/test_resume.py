"""Resuming a run: exact continuation, what a resume may change (lengths, learning rates, EMA)
and what it keeps (the log rows, the epoch layout of older checkpoints)."""

from __future__ import annotations

import json
import shutil
import signal

import pytest
import torch

from tests.support.training import TINY, final_weights, metrics_rows, run_train
from wikiart.formats import checkpoint as ckpt


@pytest.mark.slow
def test_resumed_run_equals_uninterrupted_run(synthetic_shards, tmp_path):
    common = ["--shards", str(synthetic_shards), "--task", "genre", "--epochs", "2", "--workers", "2",
              "--seed", "3", *TINY, "--batch-size", "16"]  # 370 genre-labelled samples: 23 steps per epoch
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_train([*common, "--out", str(straight)])
    proc = run_train([*common, "--out", str(resumed), "--stop-at-step", "30"], check=False)
    assert proc.returncode == 75, proc.stderr[-3000:]  # stopped, resumable
    stopped = ckpt.load_checkpoint(ckpt.latest_checkpoint(resumed))[0]
    assert (stopped.step, stopped.epoch, stopped.batch_in_epoch) == (30, 1, 7) and not stopped.finished
    assert "resume with --resume auto" in proc.stdout
    proc = run_train([*common, "--out", str(resumed), "--resume", "auto"])
    assert "resuming from" in proc.stdout and "step 30" in proc.stdout
    a, b = final_weights(straight), final_weights(resumed)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    steps = [r["step"] for r in metrics_rows(resumed, "train")]
    assert len(steps) == len(set(steps)), "a step was trained twice"




def test_ema_switched_on_at_resume_averages_from_the_resumed_weights(synthetic_shards, tmp_path):
    out = tmp_path / "ema-later"
    common = ["--shards", str(synthetic_shards), "--out", str(out), "--task", "genre", "--workers", "0", *TINY]
    run_train([*common, "--max-steps", "3", "--stop-at-step", "2"], check=False)
    resumed = ckpt.load_checkpoint(ckpt.latest_checkpoint(out))[1]
    run_train([*common, "--max-steps", "3", "--resume", "auto", "--ema-decay", "0.5"])
    _, step3, _, extra = ckpt.load_checkpoint(ckpt.latest_checkpoint(out))
    shadow = extra["ema"]["shadow"]
    assert extra["ema"]["num_updates"] == 1
    for name, value in resumed.items():  # one update: halfway between step 2 and step 3
        if value.is_floating_point() and not torch.equal(value, step3[name]):
            torch.testing.assert_close(shadow[name], (value + step3[name]) / 2)


def test_learning_rates_weight_decay_and_ema_decay_given_at_resume_are_the_ones_used(synthetic_shards, tmp_path):
    """The optimizer state a resume loads carries the old run's peak lrs and weight decay, and the
    EMA state its decay: the new command line's values (what config.json records) win."""
    from wikiart.train.optim import lr_at
    out = tmp_path / "retuned"
    common = ["--shards", str(synthetic_shards), "--out", str(out), "--task", "genre", "--workers", "0",
              "--max-steps", "4", "--warmup-steps", "0", "--log-every", "1", "--schedule", "step", "--cosine-t-max", "none", *TINY]
    run_train([*common, "--stop-at-step", "2", "--ema-decay", "0.9"], check=False)
    proc = run_train([*common, "--resume", "auto", "--lr", "0.01", "--backbone-lr", "0.002",
                      "--weight-decay", "0.3", "--ema-decay", "0.5"])
    said = " ".join(proc.stdout.split())
    assert "this command line's are used from here on" in said and "EMA decay 0.9 -> 0.5" in said
    _, _, optimizer, extra = ckpt.load_checkpoint(ckpt.latest_checkpoint(out))
    groups = {g["name"]: g for g in optimizer["param_groups"]}
    assert {n: g["base_lr"] for n, g in groups.items()} == {
        n: 0.002 if n.startswith("backbone") else 0.01 for n in groups}
    assert {n: g["weight_decay"] for n, g in groups.items()} == {
        n: 0.0 if n.endswith("_no_decay") else 0.3 for n in groups}
    assert extra["ema"]["decay"] == 0.5
    assert optimizer["param_groups"][0]["name"] == "new"  # the logged lr is this group's
    logged_lr = {r["step"]: r["lr"] for r in metrics_rows(out, "train")}
    assert logged_lr[3] == pytest.approx(lr_at(2, 0.01, 4, 0, 1e-6), rel=1e-6)  # step 3 trains at schedule step 2
    assert json.loads((out / "config.json").read_text())["optim"]["lr"] == 0.01


def test_a_finished_run_resumed_with_a_higher_end_trains_on_and_with_the_same_end_does_nothing(
        synthetic_shards, tmp_path):
    out = tmp_path / "extended"
    common = ["--shards", str(synthetic_shards), "--out", str(out), "--task", "genre", "--workers", "0",
              "--log-every", "1", *TINY]
    run_train([*common, "--max-steps", "3"])
    again = run_train([*common, "--max-steps", "3", "--resume", "auto"])
    assert "already finished at step 3" in " ".join(again.stdout.split())
    assert [r["step"] for r in metrics_rows(out, "train")] == [1, 2, 3]
    longer = run_train([*common, "--max-steps", "5", "--resume", "auto"])
    assert "finished at step 3; training on to step 5" in " ".join(longer.stdout.split())
    assert [r["step"] for r in metrics_rows(out, "train")] == [1, 2, 3, 4, 5]
    state = ckpt.load_checkpoint(ckpt.latest_checkpoint(out))[0]
    assert state.step == 5 and state.finished


def test_rows_logged_after_the_last_checkpoint_are_not_kept_twice(synthetic_shards, tmp_path):
    out = tmp_path / "killed"
    common = ["--shards", str(synthetic_shards), "--out", str(out), "--task", "genre", "--workers", "0",
              "--max-steps", "6", "--save-every", "2", "--eval-every", "2", "--log-every", "1", *TINY]
    run_train(common)
    shutil.rmtree(ckpt.checkpoint_root(out) / "step-00000006")  # as if killed after logging steps 5, 6
    with (out / "metrics.jsonl").open("a") as fh:
        fh.write('{"kind": "train", "st')  # and in the middle of a line
    run_train([*common, "--resume", "auto"])
    assert [r["step"] for r in metrics_rows(out, "train")] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in metrics_rows(out, "val")] == [2, 4, 6]


def test_killed_after_the_epoch_end_validation_of_a_saved_step_logs_that_validation_once(synthetic_shards, tmp_path):
    """--save-every on an epoch's last step saves before the epoch's validation. Killed in the
    epoch-end save that follows (its validation row written), the run resumes from the earlier
    save and validates again: the log holds that validation once, not twice."""
    out = tmp_path / "epoch-end"
    common = ["--shards", str(synthetic_shards), "--out", str(out), "--task", "genre", "--workers", "0",
              "--max-steps", "12", "--save-every", "11", "--log-every", "1", *TINY]
    common[common.index("--batch-size") + 1] = "32"  # 370 genre-labelled samples: 11 steps per epoch
    killed = run_train(common, check=False, env={"WIKIART_FAULT": "checkpoint.write@2"})  # the 2nd save of 11
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert [r["step"] for r in metrics_rows(out, "val")] == [11]
    state = ckpt.load_checkpoint(ckpt.latest_checkpoint(out))[0]
    assert (state.step, state.epoch, state.batch_in_epoch, state.logged_rows_at_step) == (11, 0, 11, 1)
    run_train([*common, "--resume", "auto"])
    assert [r["step"] for r in metrics_rows(out, "val")] == [11, 12]
    assert [r["step"] for r in metrics_rows(out, "train")] == list(range(1, 13))
    assert [r["epoch"] for r in metrics_rows(out, "epoch")] == [0, 1]


def test_a_run_resumed_past_a_lowered_end_validates_saves_and_finishes(synthetic_shards, tmp_path):
    out = tmp_path / "lowered"
    common = ["--shards", str(synthetic_shards), "--out", str(out), "--task", "genre", "--workers", "0", *TINY]
    run_train([*common, "--max-steps", "6", "--stop-at-step", "4"], check=False)
    proc = run_train([*common, "--max-steps", "3", "--resume", "auto"])
    state = ckpt.load_checkpoint(ckpt.latest_checkpoint(out))[0]
    assert state.step == 4 and state.finished and (out / "best" / "model.safetensors").is_file()
    assert [r["step"] for r in metrics_rows(out, "val")] == [4], proc.stdout[-2000:]


def test_a_checkpoint_from_before_labelled_only_epochs_keeps_its_epoch(synthetic_shards, tmp_path):
    out = tmp_path / "older"
    common = ["--shards", str(synthetic_shards), "--out", str(out), "--task", "genre", "--workers", "0",
              "--log-every", "1", *TINY]
    first = run_train([*common, "--max-steps", "4", "--stop-at-step", "2"], check=False)
    assert "46 steps/epoch" in first.stdout  # 370 genre-labelled samples / 8
    state_file = ckpt.latest_checkpoint(out) / "state.json"
    fields = json.loads(state_file.read_text())
    for name in ("world_size", "batch_size", "grad_accum", "epoch_workers", "labelled_epochs"):
        del fields[name]  # as written before these fields existed
    state_file.write_text(json.dumps(fields))
    resumed = run_train([*common, "--max-steps", "4", "--resume", "auto"])
    text = " ".join(resumed.stdout.split())
    assert "49 steps/epoch" in text and "epochs read every sample" in text  # 399 / 8, as it started
    assert [r["step"] for r in metrics_rows(out, "train")] == [1, 2, 3, 4]


@pytest.mark.slow
def test_a_resume_needs_no_imagenet_weights_file(synthetic_shards, tmp_path):
    """A resumed run's weights come from its checkpoint: on a node whose torch hub cache lacks the
    ImageNet file (and no network), the run resumes all the same instead of failing to download."""
    import torchvision
    weights = tmp_path / "resnet18-weights.pth"
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    out = tmp_path / "run"
    common = ["--shards", str(synthetic_shards), "--out", str(out), "--task", "genre", "--max-steps", "4",
              "--workers", "0", *[a for a in TINY if a != "--no-pretrained"]]
    offline = {"TORCH_HOME": str(tmp_path / "empty_cache")}
    run_train([*common, "--pretrained-path", str(weights), "--stop-at-step", "2"], check=False, env=offline)
    assert ckpt.load_checkpoint(ckpt.latest_checkpoint(out))[0].step == 2
    run_train([*common, "--resume", "auto"], env=offline)  # the default --pretrained, nothing cached
    state = ckpt.load_checkpoint(ckpt.latest_checkpoint(out))[0]
    assert state.step == 4 and state.finished
    assert not (tmp_path / "empty_cache" / "hub" / "checkpoints").exists()
