"""Non-finite training in real train.py runs: a diverging loss stops naming the step and saves
nothing; a NaN batch stops at its step with best/ the last finite model; under fp16 (torch's
GradScaler on the CPU through tests/support/fp16_cpu_probe.py) the scaler skips that step and
training goes on."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from tests.support.training import (SUPPORT, TINY, check_the_scaler_skipped_the_nan_step, final_weights,
                                    metrics_rows, run_train, train_fp16_with_a_nan_batch)
from wikiart.formats import checkpoint as ckpt


@pytest.mark.faults
def test_non_finite_loss_stops_with_the_step_named_and_saves_nothing(synthetic_shards, tmp_path):
    out = tmp_path / "nan"
    proc = run_train(["--shards", str(synthetic_shards), "--out", str(out), "--task", "genre",
                      "--max-steps", "8", "--log-every", "4", "--workers", "0", "--lr", "1e30",
                      "--backbone-lr", "1e30", "--clip-grad", "none", *TINY], check=False)
    assert proc.returncode == 1
    assert "non-finite at optimizer step" in proc.stderr and "Traceback" not in proc.stderr
    assert not (out / "checkpoints").exists() and not (out / "best").exists()


@pytest.mark.faults
def test_nan_injected_into_a_batch_stops_at_that_step_and_best_keeps_the_last_finite_weights(
        synthetic_shards, tmp_path):
    out = tmp_path / "nan-batch"
    proc = run_train(["--shards", str(synthetic_shards), "--out", str(out), "--task", "genre",
                      "--max-steps", "8", "--log-every", "4", "--save-every", "2", "--eval-every", "2",
                      "--workers", "0", *TINY], check=False, env={"WIKIART_FAULT": "train.batch@3:nan"})
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "non-finite at optimizer step 3;" in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000002"]
    saved = final_weights(out)
    best = load_file(str(out / "best" / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in best.values() if v.is_floating_point())
    assert all(torch.equal(best[k], saved[k]) for k in saved)  # best/ is the step-2 model
    state = ckpt.load_checkpoint(out / "checkpoints" / "step-00000002")[0]
    (val,) = metrics_rows(out, "val")  # validated before saving: a resume knows the best score
    assert val["step"] == state.best_step == 2 and state.best_metric == val["score"]


@pytest.mark.faults
@pytest.mark.parametrize("fused", ["0", "1"], ids=["adamw", "fused-adamw-as-on-cuda"])
def test_fp16_loss_scaler_skips_the_step_of_a_nan_batch_and_training_goes_on(synthetic_shards, tmp_path, fused):
    """fp16 autocast and torch's GradScaler on the CPU (tests/support/fp16_cpu_probe.py; Accelerate makes
    neither here); tests/gpu/test_cuda.py runs the same check with Accelerate's own on a GPU. The
    fused AdamW of CUDA runs skips the step inside its kernel, unseen by Accelerate."""
    out = tmp_path / "fp16"
    proc = train_fp16_with_a_nan_batch(synthetic_shards, out, steps=6, nan_step=3,
                                       script=SUPPORT / "fp16_cpu_probe.py", env={"WIKIART_PROBE_FUSED": fused})
    check_the_scaler_skipped_the_nan_step(proc, out, steps=6, nan_step=3)
