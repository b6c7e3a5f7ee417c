"""Checkpoint writes that fail or are cut short: an incomplete checkpoint is never resumed, a
failed write keeps the previous checkpoints and leaves no partial directory, re-saving a step
never loses the only copy, and the optimizer file loads with weights_only."""

import os

import pytest
import torch

from tests.support.checkpoints import save_small_checkpoint
from wikiart.formats import checkpoint as ckpt


@pytest.mark.faults
def test_incomplete_checkpoints_are_never_resumed(tmp_path):
    save_small_checkpoint(tmp_path, 5)
    root = ckpt.checkpoint_root(tmp_path)
    # a crash mid-write leaves a temp dir, and a dir without the marker (e.g. copied by hand)
    (root / "step-00000009.tmp-123").mkdir()
    half = root / "step-00000010"
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"partial")
    assert ckpt.latest_checkpoint(tmp_path).name == "step-00000005"
    assert ckpt.resolve_resume("auto", tmp_path).name == "step-00000005"
    with pytest.raises(ckpt.CheckpointError, match="not a complete checkpoint"):
        ckpt.load_checkpoint(half)
    save_small_checkpoint(tmp_path, 6)
    assert not (root / "step-00000009.tmp-123").exists()  # stale temporaries are cleaned


@pytest.mark.faults
def test_failed_write_keeps_previous_and_leaves_no_partial(tmp_path, monkeypatch):
    save_small_checkpoint(tmp_path, 1)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(ckpt.torch, "save", disk_full)
    with pytest.raises(ckpt.CheckpointError, match="No space left.*previous checkpoints are intact"):
        save_small_checkpoint(tmp_path, 2)
    names = os.listdir(ckpt.checkpoint_root(tmp_path))
    assert names == ["step-00000001"]
    assert ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path))[0].step == 1


@pytest.mark.faults
def test_optimizer_file_loads_with_weights_only(tmp_path):
    """A pickle that would run code is refused: training state never executes code on load."""
    path = save_small_checkpoint(tmp_path, 1)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))
    torch.save({"x": Evil()}, path / "optimizer.pt", _use_new_zipfile_serialization=True)
    with pytest.raises(ckpt.CheckpointError):
        ckpt.load_checkpoint(path)


@pytest.mark.faults
def test_resaving_a_step_never_loses_the_only_copy(tmp_path, monkeypatch):
    """keep_last=1 and the same step saved twice (epoch-end save after a periodic save): a crash
    between the two renames of the swap must still leave step 7 resumable."""
    save_small_checkpoint(tmp_path, 7, keep=1, value=1.0)
    real_replace = ckpt.os.replace
    calls = []

    def crash_on_second_rename(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:
            raise OSError(5, "Input/output error (simulated crash)")
        return real_replace(src, dst)
    monkeypatch.setattr(ckpt.os, "replace", crash_on_second_rename)
    with pytest.raises(ckpt.CheckpointError):
        save_small_checkpoint(tmp_path, 7, keep=1, value=2.0)
    monkeypatch.setattr(ckpt.os, "replace", real_replace)
    latest = ckpt.latest_checkpoint(tmp_path)
    assert latest is not None and latest.name == "step-00000007"
    assert float(ckpt.load_checkpoint(latest)[1]["w"][0]) == 1.0  # the old copy, intact
    save_small_checkpoint(tmp_path, 7, keep=1, value=2.0)
    assert [p.name for p in ckpt.checkpoint_root(tmp_path).iterdir()] == ["step-00000007"]
    assert float(ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path))[1]["w"][0]) == 2.0
