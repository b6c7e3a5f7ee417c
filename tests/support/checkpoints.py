"""A small checkpoint on disk (a 5-number model, a one-step optimizer state) for the checkpoint
tests of tests/unit/formats and tests/faults."""

from __future__ import annotations

import torch

from wikiart.formats import checkpoint as ckpt


def save_small_checkpoint(run, step, keep=2, value=1.0):
    model = {"w": torch.full((3,), value), "b": torch.zeros(2)}
    opt = {"state": {0: {"step": torch.tensor(float(step))}}, "param_groups": [{"lr": 0.1, "params": [0]}]}
    return ckpt.save_checkpoint(run, ckpt.TrainState(step=step, epoch=1, batch_in_epoch=4), model, opt,
                                {"class_names": {"genre": ["a", "b"]}}, keep_last=keep)
