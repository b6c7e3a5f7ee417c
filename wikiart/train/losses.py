"""Masked multi-task cross-entropy with soft targets and label smoothing (pure functions).

A target per task is `(soft, mask)`: soft (B, C) float rows that sum to 1 (one-hot, or mixed by
MixUp/CutMix) and mask (B,) bool, False where the label is missing (-1). A painting with only
some labels still trains the heads it has.
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F

Target = tuple[torch.Tensor, torch.Tensor]  # (soft (B, C) float, mask (B,) bool)


def hard_targets(labels: Mapping[str, torch.Tensor], num_classes: Mapping[str, int]) -> dict[str, Target]:
    """Integer labels (-1 = missing) -> {task: (one-hot soft targets, mask)}; missing rows are all zero."""
    out = {}
    for task, y in labels.items():
        n = num_classes[task]
        # On a GPU this check would cost a host sync every step; there the loader has already
        # validated every label against the manifest (data.stream.parse_sample).
        if y.device.type == "cpu" and y.numel() and int(y.max()) >= n:
            raise ValueError(f"task {task!r}: label {int(y.max())} out of range 0..{n - 1}")
        mask = y >= 0
        soft = F.one_hot(y.clamp(min=0).long(), n).float() * mask.unsqueeze(1)
        out[task] = (soft, mask)
    return out


def soft_cross_entropy(logits: torch.Tensor, soft: torch.Tensor, mask: torch.Tensor,
                       smoothing: float = 0.0) -> torch.Tensor:
    """Mean over valid rows of -sum(target * log_softmax(logits)), target = (1-eps)*soft + eps/C.

    With no valid row returns a zero that is still attached to `logits` (no NaN, and under
    DDP the head still takes part in the backward pass).
    """
    num_classes = logits.shape[-1]
    target = soft.float() * (1.0 - smoothing) + smoothing / num_classes
    # where(), not a multiply: whatever sits in a missing row must not reach the value or the grad
    target = torch.where(mask.unsqueeze(1), target, torch.zeros_like(target))
    per_row = -(target * F.log_softmax(logits.float(), dim=-1)).sum(dim=-1)
    per_row = torch.where(mask, per_row, torch.zeros_like(per_row))
    return per_row.sum() / mask.sum().clamp(min=1)


def multitask_loss(logits: Mapping[str, torch.Tensor], targets: Mapping[str, Target], smoothing: float = 0.0,
                   weights: Mapping[str, float] | None = None
                   ) -> tuple[torch.Tensor, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """total = sum over tasks of w_t * loss_t; returns (total, {task: (detached loss, labelled rows)}).

    Tasks with no valid row in the batch add an exact, graph-attached zero and report 0 rows (their
    loss is undefined, not 0: a mean over batches must weight by the rows). The row counts stay
    tensors on the logits' device, so asking which heads had labels costs no host sync. Every head
    in `logits` needs a target.
    """
    missing = [t for t in logits if t not in targets]
    if missing:
        raise ValueError(f"no targets for heads {missing} (targets have {list(targets)})")
    total = None
    parts: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for task, task_logits in logits.items():
        soft, mask = targets[task]
        loss = soft_cross_entropy(task_logits, soft, mask, smoothing)
        weight = 1.0 if weights is None else float(weights.get(task, 1.0))
        total = weight * loss if total is None else total + weight * loss
        parts[task] = (loss.detach(), mask.sum())
    if total is None:
        raise ValueError("multitask_loss needs at least one head")
    return total, parts
