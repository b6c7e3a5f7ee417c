"""The training step and epoch: `train_step`, `train_one_epoch` (scoring: `wikiart.evaluate.score`).

This is the only module that talks to the `Accelerator` inside the loop. Everything random
in a step is seeded: the MixUp/CutMix draws from (seed, step), so every rank mixes alike;
dropout and the device augmentation from (seed, step, rank). A run resumed from a checkpoint
at step k does exactly what the uninterrupted run did from step k on.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Callable, Iterable, Iterator

import torch
from accelerate import Accelerator

from ..config.options import RunConfig
from ..data.buffers import release_batch
from ..formats.checkpoint import TrainState
from ..data.device import DeviceAugment
from ..runtime.faults import fault_point
from .losses import multitask_loss
from .mixing import Mixer
from .optim import FreezePlan, LRSchedule, ModelEMA, apply_lr


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


def step_seed(seed: int, step: int, rank: int = 0) -> int:
    """A seed per (run seed, optimizer step, rank); large odd multipliers keep streams apart."""
    return (seed * 1_000_003 + step * 7_919 + rank * 104_729) % (2**63 - 1)


@dataclasses.dataclass
class LoopContext:
    """What a training step needs besides the batch; built once by `wikiart.train.setup`."""
    accelerator: Accelerator
    model: torch.nn.Module                 # prepared (DDP-wrapped when distributed)
    optimizer: torch.optim.Optimizer       # prepared
    mixer: Mixer
    freeze: FreezePlan
    cfg: RunConfig                         # the run's resolved configuration: read here, never copied
    heads: tuple[str, ...]                 # derived: the task's heads
    task_weights: dict[str, float]         # derived: --task-weights of those heads
    total_steps: int                       # derived: the run's optimizer steps
    schedule: LRSchedule                   # the learning rate of every group at (step, epoch)
    stop_on_nonfinite: bool                # derived: no loss scaler to skip a non-finite step
    augment: DeviceAugment                 # the batch's jitter / erasing / normalisation
    ema: ModelEMA | None = None
    loss_scale: float | None = None        # fp16: the scaler's scale after the last step (host value)


def _labels_to_device(batch: dict[str, Any], heads: Iterable[str], device: torch.device):
    return {t: batch["labels"][t].to(device, non_blocking=True) for t in heads}


def train_step(ctx: LoopContext, micro_batches: list[dict[str, Any]], state: TrainState) -> dict[str, torch.Tensor]:
    """One optimizer step over `grad_accum` micro-batches. Returns detached loss tensors."""
    acc, model = ctx.accelerator, ctx.model
    saved_buffers = BufferSnapshot(model) if acc.scaler is not None else None
    generator = torch.Generator().manual_seed(step_seed(ctx.cfg.train.seed, state.step))
    torch.manual_seed(step_seed(ctx.cfg.train.seed, state.step, acc.process_index))  # dropout
    ctx.optimizer.zero_grad(set_to_none=True)
    total = torch.zeros((), device=acc.device)
    task_loss_sums = torch.zeros(len(ctx.heads), device=acc.device)  # per head: sum over labelled rows
    task_rows = torch.zeros(len(ctx.heads), device=acc.device)
    for i, batch in enumerate(micro_batches):
        images = ctx.augment(batch, acc.device, step_seed(ctx.cfg.train.seed, state.step, acc.process_index) + i)
        release_batch(batch)  # the device stage copied the pixels: the loader may reuse the buffer
        if fault_point("train.batch"):  # WIKIART_FAULT=train.batch@N:nan, the non-finite tests
            images[:1].fill_(float("nan"))
        labels = _labels_to_device(batch, ctx.heads, acc.device)
        images, targets, _ = ctx.mixer(images, labels, generator)
        last = i == len(micro_batches) - 1
        sync = contextlib.nullcontext() if last else acc.no_sync(model)
        with sync, acc.autocast():
            loss, parts = multitask_loss(model(images), targets, ctx.cfg.optim.label_smoothing, ctx.task_weights)
            acc.backward(loss / len(micro_batches))
        total += loss.detach() / len(micro_batches)
        for i_head, task in enumerate(ctx.heads):
            task_loss, rows = parts[task]
            task_loss_sums[i_head] += task_loss * rows
            task_rows[i_head] += rows
    fault_point("train.step")
    ctx.freeze.zero_frozen_grads(model.parameters(), state.epoch)
    grad_norm = None
    if ctx.cfg.optim.clip_grad is not None:
        grad_norm = acc.clip_grad_norm_(model.parameters(), ctx.cfg.optim.clip_grad)
    apply_lr(ctx.optimizer, ctx.schedule, state.step, state.epoch)
    skipped = _optimizer_step(ctx)
    if skipped:
        saved_buffers.restore()
    elif ctx.ema is not None:
        ctx.ema.update(acc.unwrap_model(model))
    # Per-head sums and row counts, not means: the logger divides them once summed over ranks.
    out = {"loss": total, "task_loss_sums": task_loss_sums, "task_rows": task_rows}
    if saved_buffers is not None:
        out["step_skipped"] = torch.tensor(float(skipped))
    if grad_norm is not None:
        out["grad_norm"] = torch.as_tensor(grad_norm).detach()
    return out


def _optimizer_step(ctx: LoopContext) -> bool:
    """Step the optimizer; True when the fp16 loss scaler skipped the step (inf/NaN gradients).

    The scaler backs its scale off exactly when it skips. Not `optimizer.step_was_skipped`: a
    fused AdamW (CUDA) is always called and skips inside its kernel, so Accelerate never sees
    it. Reading the scale is one host sync per fp16 step (the host decides whether to put the
    buffers back and to update the EMA); bf16 and fp32 have no scaler and no sync here."""
    scaler = ctx.accelerator.scaler
    if scaler is None:
        ctx.optimizer.step()
        return False
    before = ctx.loss_scale if ctx.loss_scale is not None else scaler.get_scale()
    ctx.optimizer.step()
    ctx.loss_scale = scaler.get_scale()
    return ctx.loss_scale < before


class BufferSnapshot:
    """A model's buffers (BatchNorm running statistics) before a step, to put back when the fp16
    loss scaler skips that step: the forward pass of a batch holding a NaN, or overflowing in
    fp16, has already folded it into the running statistics, and skipping only the optimizer
    step would leave them NaN (and every later evaluation with them)."""

    def __init__(self, model: torch.nn.Module):
        self.live = list(model.buffers())
        self.saved = [b.detach().clone() for b in self.live]

    @torch.no_grad()
    def restore(self) -> None:
        for live, saved in zip(self.live, self.saved):
            live.copy_(saved)


def _micro_batch_groups(batches: Iterator[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    group: list[dict[str, Any]] = []
    for batch in batches:
        group.append(batch)
        if len(group) == size:
            yield group
            group = []


def train_one_epoch(ctx: LoopContext, loader: Iterable[dict[str, Any]], state: TrainState,
                    steps_this_epoch: int, on_step: Callable[[dict[str, torch.Tensor]], bool]) -> None:
    """Run optimizer steps until the epoch's step count; `on_step` returns True to stop early.

    `state` is advanced in place (step, batch_in_epoch) so a checkpoint taken from `on_step`
    records exactly where the data stream is.
    """
    ctx.model.train()
    ctx.freeze.apply_bn_mode(ctx.accelerator.unwrap_model(ctx.model), state.epoch)
    done_in_epoch = state.batch_in_epoch // ctx.cfg.train.grad_accum
    for group in _micro_batch_groups(iter(loader), ctx.cfg.train.grad_accum):
        if done_in_epoch >= steps_this_epoch:
            break
        metrics = train_step(ctx, group, state)
        state.step += 1
        state.batch_in_epoch += len(group)
        done_in_epoch += 1
        if on_step(metrics):
            return
