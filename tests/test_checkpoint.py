"""Checkpoint files: atomic, complete-only resume, pruning, no code execution on load."""

import os

import pytest
import torch

from wikiart.formats import checkpoint as ckpt


def _save(run, step, keep=2, value=1.0):
    model = {"w": torch.full((3,), value), "b": torch.zeros(2)}
    opt = {"state": {0: {"step": torch.tensor(float(step))}}, "param_groups": [{"lr": 0.1, "params": [0]}]}
    return ckpt.save_checkpoint(run, ckpt.TrainState(step=step, epoch=1, batch_in_epoch=4), model, opt,
                                {"class_names": {"genre": ["a", "b"]}}, keep_last=keep)


def test_save_load_round_trip(tmp_path):
    path = _save(tmp_path, 12, value=3.0)
    assert path.name == "step-00000012" and (path / ckpt.COMPLETE_MARKER).is_file()
    state, model, opt, extra = ckpt.load_checkpoint(path)
    assert (state.step, state.epoch, state.batch_in_epoch) == (12, 1, 4)
    assert torch.equal(model["w"], torch.full((3,), 3.0))
    assert float(opt["state"][0]["step"]) == 12.0
    assert extra["class_names"] == {"genre": ["a", "b"]}


@pytest.mark.faults
def test_incomplete_checkpoints_are_never_resumed(tmp_path):
    _save(tmp_path, 5)
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
    _save(tmp_path, 6)
    assert not (root / "step-00000009.tmp-123").exists()  # stale temporaries are cleaned


def test_keep_last_prunes_oldest(tmp_path):
    for step in (1, 2, 3, 4):
        _save(tmp_path, step, keep=2)
    assert [p.name for p in ckpt.list_complete(tmp_path)] == ["step-00000003", "step-00000004"]


@pytest.mark.faults
def test_failed_write_keeps_previous_and_leaves_no_partial(tmp_path, monkeypatch):
    _save(tmp_path, 1)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(ckpt.torch, "save", disk_full)
    with pytest.raises(ckpt.CheckpointError, match="No space left.*previous checkpoints are intact"):
        _save(tmp_path, 2)
    names = os.listdir(ckpt.checkpoint_root(tmp_path))
    assert names == ["step-00000001"]
    assert ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path))[0].step == 1


def test_resume_argument_forms(tmp_path):
    assert ckpt.resolve_resume(None, tmp_path) is None
    assert ckpt.resolve_resume("auto", tmp_path) is None  # nothing yet: a fresh start
    path = _save(tmp_path, 3)
    assert ckpt.resolve_resume(str(path), tmp_path / "elsewhere") == path
    assert ckpt.resolve_resume(str(tmp_path), tmp_path / "elsewhere") == path
    with pytest.raises(ckpt.CheckpointError, match="--resume"):
        ckpt.resolve_resume(str(tmp_path / "nope"), tmp_path)


@pytest.mark.faults
def test_optimizer_file_loads_with_weights_only(tmp_path):
    """A pickle that would run code is refused: training state never executes code on load."""
    path = _save(tmp_path, 1)

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
    _save(tmp_path, 7, keep=1, value=1.0)
    real_replace = ckpt.os.replace
    calls = []

    def crash_on_second_rename(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:
            raise OSError(5, "Input/output error (simulated crash)")
        return real_replace(src, dst)
    monkeypatch.setattr(ckpt.os, "replace", crash_on_second_rename)
    with pytest.raises(ckpt.CheckpointError):
        _save(tmp_path, 7, keep=1, value=2.0)
    monkeypatch.setattr(ckpt.os, "replace", real_replace)
    latest = ckpt.latest_checkpoint(tmp_path)
    assert latest is not None and latest.name == "step-00000007"
    assert float(ckpt.load_checkpoint(latest)[1]["w"][0]) == 1.0  # the old copy, intact
    _save(tmp_path, 7, keep=1, value=2.0)
    assert [p.name for p in ckpt.checkpoint_root(tmp_path).iterdir()] == ["step-00000007"]
    assert float(ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path))[1]["w"][0]) == 2.0
