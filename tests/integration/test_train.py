"""End-to-end training through the real command line: 1 process, 2 DDP ranks, bad input, EMA,
precision, the logged rate (resuming a run: test_resume.py; non-finite losses:
tests/faults/test_train.py)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.support.training import SUPPORT, TINY, metrics_rows, run_train
from wikiart.formats import checkpoint as ckpt
from wikiart.data.loader import train_samples_for
from wikiart.formats.manifest import load_manifest


@pytest.mark.slow
def test_single_process_run_writes_checkpoint_best_and_metrics(synthetic_shards, tmp_path):
    out = tmp_path / "run"
    run_train(["--shards", str(synthetic_shards), "--out", str(out), "--task", "combined",
               "--epochs", "1", "--max-steps", "6", "--workers", "1", "--log-every", "2", *TINY],
              interpreter=True)  # `python train.py` as a user runs it: the other runs here are forked
    state, _, _, extra = ckpt.load_checkpoint(ckpt.latest_checkpoint(out))
    assert state.step == 6 and state.finished
    assert set(extra["class_names"]) == {"artist", "genre", "style"}
    config = json.loads((out / "best" / "config.json").read_text())
    assert config["class_names"]["genre"] == json.loads((synthetic_shards / "manifest.json").read_text())["classes"]["genre"]
    val = metrics_rows(out, "val")[-1]
    assert 0.0 <= val["joint_exact_match"] <= 1.0 and "style/top1" in val
    assert [r["step"] for r in metrics_rows(out, "train")] == [2, 4, 6]
    resolved = json.loads((out / "config.json").read_text())
    assert resolved["data"]["task"] == "combined" and resolved["train"]["max_steps"] == 6


@pytest.mark.slow
def test_two_rank_ddp_run_trains_and_checkpoints(synthetic_shards, tmp_path):
    out = tmp_path / "ddp"
    proc = run_train(["--shards", str(synthetic_shards), "--out", str(out), "--task", "genre",
                      "--epochs", "1", "--workers", "1", *TINY], ranks=2)
    assert "world size 2" in proc.stdout
    state = ckpt.load_checkpoint(ckpt.latest_checkpoint(out))[0]
    n_train = train_samples_for(load_manifest(synthetic_shards), "genre")  # the genre-labelled ones
    assert state.step == n_train // (2 * 8)  # each rank took its share of every step
    assert (out / "best" / "model.safetensors").is_file()


@pytest.mark.slow
def test_two_rank_logged_losses_pool_the_labelled_rows_of_every_rank(synthetic_shards, tmp_path):
    """`combined` on partly labelled paintings (--combined-data union): each rank's batch has its own
    number of rows with an artist (genre, style) label. The logged loss of a head is the mean over all
    ranks' labelled rows, not rank 0's, nor a mean of the ranks' means; the step's loss is the ranks' mean."""
    out = tmp_path / "combined"
    run_train(["--shards", str(synthetic_shards), "--out", str(out), "--task", "combined", "--combined-data", "union",
               "--epochs", "1",
               "--max-steps", "6", "--log-every", "1", "--workers", "1", *TINY], ranks=2,
              script=SUPPORT / "ddp_weights_probe.py")
    ranks = [torch.load(out / f"rank{r}_weights.pt", weights_only=True) for r in (0, 1)]
    heads = ranks[0]["heads"]
    assert heads == ["artist", "genre", "style"]
    logged = {r["step"]: r for r in metrics_rows(out, "train")}
    assert sorted(logged) == sorted(ranks[0]["task_losses"]) == list(range(1, 7))
    uneven = 0
    for step, row in logged.items():
        (sums0, rows0), (sums1, rows1) = ranks[0]["task_losses"][step], ranks[1]["task_losses"][step]
        assert row["loss"] == pytest.approx((ranks[0]["losses"][step] + ranks[1]["losses"][step]) / 2, rel=1e-5)
        for i, head in enumerate(heads):
            assert row[f"loss_{head}"] == pytest.approx((sums0[i] + sums1[i]) / (rows0[i] + rows1[i]), rel=1e-5)
            uneven += rows0[i] != rows1[i]
    assert uneven > 0, "no step had ranks with different labelled rows: the pooling was not exercised"


@pytest.mark.parametrize("args, needle", [
    (["--task", "genre"], "shards directory not found"),
    (["--task", "genre", "--shards", "EMPTY"], "no manifest.json"),
    (["--task", "genre", "--batch-size", "0"], "--batch-size"),
    (["--task", "sculptor"], "--task"),
])
def test_bad_input_fails_with_a_clear_message(args, needle, tmp_path):
    (tmp_path / "EMPTY").mkdir()
    args = [str(tmp_path / a) if a == "EMPTY" else a for a in args]
    if "--shards" not in args:
        args += ["--shards", str(tmp_path / "missing")]
    proc = run_train([*args, "--out", str(tmp_path / "out")], check=False)
    assert proc.returncode != 0
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "checkpoints").exists()


@pytest.mark.slow
def test_model_learns_synthetic_genre_well_above_majority_baseline(synthetic_shards, tmp_path):
    out = tmp_path / "learn"
    run_train(["--shards", str(synthetic_shards), "--out", str(out), "--task", "genre", "--epochs", "3",
               "--workers", "1", "--backbone", "resnet18", "--image-size", "48", "--batch-size", "16",
               "--proj-dim", "32", "--rnn-hidden", "32", "--rnn-layers", "1", "--no-progress", "--no-pretrained"])
    manifest = json.loads((synthetic_shards / "manifest.json").read_text())
    counts = manifest["splits"]["val"]["class_counts"]["genre"]
    majority = max(counts) / sum(counts)
    best = json.loads((out / "best" / "metrics.json").read_text())
    assert best["genre/top1"] >= 2 * majority, (best["genre/top1"], majority)


def test_checkpoint_with_other_classes_is_refused(synthetic_shards, tmp_path):
    """Resuming a run whose checkpoint was trained on another class list is a clear error."""
    out = tmp_path / "run"
    model = {"w": torch.zeros(1)}
    ckpt.save_checkpoint(out, ckpt.TrainState(step=1), model, {"state": {}, "param_groups": []},
                         {"class_names": {"genre": ["portrait", "landscape"]}})
    (out / "config.json").write_text("{}")
    proc = run_train(["--shards", str(synthetic_shards), "--out", str(out), "--task", "genre",
                      "--resume", "auto", *TINY], check=False)
    assert proc.returncode == 1
    assert "do not match" in proc.stderr and "genre" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_out_dir_holding_another_run_is_refused_without_resume_or_overwrite(synthetic_shards, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text("{}")
    proc = run_train(["--shards", str(synthetic_shards), "--out", str(out), "--task", "genre", *TINY],
                     check=False)
    assert proc.returncode == 1 and "already holds a run" in proc.stderr
    assert (out / "config.json").read_text() == "{}"  # nothing overwritten


@pytest.mark.slow
def test_gradient_accumulation_and_ema_are_checkpointed_and_ema_weights_are_best(synthetic_shards, tmp_path):
    out = tmp_path / "accum"
    run_train(["--shards", str(synthetic_shards), "--out", str(out), "--task", "genre", "--max-steps", "3",
               "--grad-accum", "2", "--ema-decay", "0.5", "--workers", "0", *TINY])
    state, model, _, extra = ckpt.load_checkpoint(ckpt.latest_checkpoint(out))
    assert state.step == 3 and state.batch_in_epoch == 6  # 2 micro-batches per optimizer step
    assert extra["ema"]["num_updates"] == 3
    best = load_file(str(out / "best" / "model.safetensors"))
    shadow = extra["ema"]["shadow"]
    assert all(torch.equal(best[k], shadow[k]) for k in best)      # best/ holds the EMA weights
    assert any(not torch.equal(model[k], shadow[k]) for k in best)  # which differ from the raw ones
    # and says so: evaluation reports them as EMA weights and --no-ema cannot take them for raw ones
    from wikiart.model.load import load_model
    assert load_model(str(out)).weights == load_model(str(out / "best")).weights == "ema"
    assert load_model(str(ckpt.latest_checkpoint(out)), use_ema=False).weights == "model"
    with pytest.raises(ckpt.CheckpointError, match="--no-ema: .*best holds the EMA weights"):
        load_model(str(out), use_ema=False)
    config = json.loads((out / "best" / "config.json").read_text())
    del config["weights"]  # a best/ saved before the key: the run's config.json tells
    (out / "best" / "config.json").write_text(json.dumps(config))
    assert load_model(str(out)).weights == "ema"


def test_report_to_tensorboard_writes_the_logged_scalars(synthetic_shards, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    out = tmp_path / "tb"
    run_train(["--shards", str(synthetic_shards), "--out", str(out), "--task", "genre", "--max-steps", "2",
               "--log-every", "1", "--workers", "0", "--report-to", "tensorboard", *TINY])
    events = EventAccumulator(str(out / "wikiart")).Reload()
    losses = [e.value for e in events.Scalars("train/loss")]
    logged = [r["loss"] for r in metrics_rows(out, "train")]
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2]
    assert losses == pytest.approx(logged, rel=1e-6)
    assert "val/genre/top1" in events.Tags()["scalars"]


def test_bf16_mixed_precision_trains_through_accelerate(synthetic_shards, tmp_path):
    out = tmp_path / "bf16"
    run_train(["--shards", str(synthetic_shards), "--out", str(out), "--task", "genre", "--max-steps", "2",
               "--log-every", "1", "--workers", "0", "--mixed-precision", "bf16", *TINY])
    losses = [r["loss"] for r in metrics_rows(out, "train")]
    assert len(losses) == 2 and all(0 < v < 10 for v in losses)
    assert json.loads((out / "config.json").read_text())["train"]["mixed_precision"] == "bf16"
    assert ckpt.load_checkpoint(ckpt.latest_checkpoint(out))[0].step == 2


def test_images_per_second_leaves_out_the_epoch_end_validation_and_save(synthetic_shards, tmp_path,
                                                                        monkeypatch):
    """The logged training rate measures training: a slow validation and checkpoint save at the
    epoch end (2 s each here) must not show in the first rate logged after them."""
    import time

    from wikiart.train import loop
    from wikiart.config.options import parse_train_config
    from wikiart.train.setup import setup_job

    pause = 2.0
    for name in ("run_validation", "save_training_state"):
        real = getattr(loop, name)
        monkeypatch.setattr(loop, name, lambda job, _real=real: (time.sleep(pause), _real(job))[1])
    out = tmp_path / "rate"
    args = ["--shards", str(synthetic_shards), "--out", str(out), "--task", "genre", "--epochs", "2",
            "--max-steps", "14", "--log-every", "1", "--workers", "0", *TINY]
    args[args.index("--batch-size") + 1] = "32"  # 370 genre-labelled samples: 11 steps per epoch
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    job = setup_job(parse_train_config(args))
    assert job.steps_per_epoch == 11
    loop.fit(job)
    seconds = {r["step"]: 32 / r["images_per_s"] for r in metrics_rows(out, "train")}
    assert sorted(seconds) == list(range(1, 15))
    # Step 12 is the first after the epoch end: its time is one step and the next epoch's start,
    # well under the 4 s of the pauses (a step here takes ~0.1 s).
    assert seconds[12] < pause, seconds
