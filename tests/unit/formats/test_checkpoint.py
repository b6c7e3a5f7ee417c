"""Checkpoints (formats/checkpoint.py): save/load round trip, pruning to the last K, the --resume
argument forms (failed and cut-short writes: tests/faults/test_checkpoint.py)."""

import pytest
import torch

from tests.support.checkpoints import save_small_checkpoint
from wikiart.formats import checkpoint as ckpt


def test_save_load_round_trip(tmp_path):
    path = save_small_checkpoint(tmp_path, 12, value=3.0)
    assert path.name == "step-00000012" and (path / ckpt.COMPLETE_MARKER).is_file()
    state, model, opt, extra = ckpt.load_checkpoint(path)
    assert (state.step, state.epoch, state.batch_in_epoch) == (12, 1, 4)
    assert torch.equal(model["w"], torch.full((3,), 3.0))
    assert float(opt["state"][0]["step"]) == 12.0
    assert extra["class_names"] == {"genre": ["a", "b"]}


def test_keep_last_prunes_oldest(tmp_path):
    for step in (1, 2, 3, 4):
        save_small_checkpoint(tmp_path, step, keep=2)
    assert [p.name for p in ckpt.list_complete(tmp_path)] == ["step-00000003", "step-00000004"]


def test_resume_argument_forms(tmp_path):
    assert ckpt.resolve_resume(None, tmp_path) is None
    assert ckpt.resolve_resume("auto", tmp_path) is None  # nothing yet: a fresh start
    path = save_small_checkpoint(tmp_path, 3)
    assert ckpt.resolve_resume(str(path), tmp_path / "elsewhere") == path
    assert ckpt.resolve_resume(str(tmp_path), tmp_path / "elsewhere") == path
    with pytest.raises(ckpt.CheckpointError, match="--resume"):
        ckpt.resolve_resume(str(tmp_path / "nope"), tmp_path)
