"""Running a set-up job: epochs, per-step hooks (logging, guards, saves, stop requests), validation.

`wikiart.train.setup` sets the job up; `wikiart.train.engine` does the step; this module decides when
to log, validate, save and stop.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from ..config.options import DataConfig, RunConfig
from ..data.loader import build_train_data
from ..formats.rundir import RunDir
from ..runtime.device import loader_workers
from .engine import NonFiniteLossError, train_one_epoch
from .optim import reset_optimizer_state
from .preemption import EXIT_PREEMPTED, StopRequest
from .setup import Job, run_validation, save_training_state, setup_job


class StepHooks:
    """Called after every optimizer step: logging, the non-finite guard, periodic saves/evals."""

    def __init__(self, job: Job, stop: StopRequest):
        self.job = job
        self.stop = stop
        self.first_bad_step = torch.full((), -1, dtype=torch.long, device=job.accelerator.device)
        self.stopped = False
        self.loss_sum = torch.zeros((), device=job.accelerator.device)
        self.loss_count = 0
        self.skipped_steps: list[int] = []   # by the fp16 loss scaler, since the last log line

    def __call__(self, metrics: dict[str, torch.Tensor]) -> bool:
        job, train = self.job, self.job.cfg.train
        step = job.state.step
        # Track the first non-finite step on the device: no host sync until a log/save point.
        bad = ~torch.isfinite(metrics["loss"])
        self.first_bad_step = torch.where(bad & (self.first_bad_step < 0),
                                          torch.full_like(self.first_bad_step, step), self.first_bad_step)
        if float(metrics.pop("step_skipped", 0.0)):  # fp16 only (a host value: the scaler synced)
            self.skipped_steps.append(step)           # its non-finite loss stays out of the mean
        else:
            self.loss_sum += metrics["loss"]
            self.loss_count += 1
        done = step >= job.ctx.total_steps
        if step % train.log_every == 0 or done:
            self.guard()
            self._log(metrics, step)
        if done:
            return True
        if train.eval_every and step % train.eval_every == 0:
            self.guard()
            run_validation(job)
        if train.save_every and step % train.save_every == 0:  # after validating: the best so far is saved
            self.guard()
            save_training_state(job)
        if job.hub is not None and not epoch_done(job):  # at an epoch end the epoch's checkpoint takes it
            job.hub.after_step(job)  # a better best/ that no checkpoint of this step took
        asked = train.stop_at_step is not None and step >= train.stop_at_step
        if self.stop.agreed(step, force_check=asked) or asked:
            self.guard()
            save_training_state(job)
            self.stop.acknowledge(job.run_dir, step)
            self.stopped = True
        return self.stopped

    def guard(self) -> None:
        """Stop (on every rank) if any rank saw a non-finite loss; fp16 leaves it to the scaler."""
        if not self.job.ctx.stop_on_nonfinite:
            return
        acc = self.job.accelerator
        bad = (self.first_bad_step >= 0).to(torch.float32)
        if acc.num_processes > 1:
            bad = acc.reduce(bad, reduction="sum")
        if float(bad) > 0:
            local = int(self.first_bad_step)
            step = local if local >= 0 else self.job.state.step
            raise NonFiniteLossError(f"training loss became non-finite at optimizer step {step}; "
                                     f"stopping without saving (lower the learning rate or check the data)")

    def epoch_mean_loss(self) -> float:
        """The mean training loss of the epoch over every rank (each rank saw other samples)."""
        mean = self._mean_over_ranks(self.loss_sum / max(self.loss_count, 1))
        self.loss_sum, self.loss_count = torch.zeros_like(self.loss_sum), 0
        return mean

    def _mean_over_ranks(self, value: torch.Tensor) -> float:
        acc = self.job.accelerator  # every rank calls this at the same steps: one small all-reduce
        return float(acc.reduce(value.detach().float(), reduction="mean") if acc.num_processes > 1 else value)

    def _losses_over_ranks(self, metrics: dict[str, torch.Tensor]) -> dict[str, float]:
        """The step's loss as the mean over ranks, and each head's loss as the mean over every
        rank's labelled rows (a head no rank had labels for is left out), in one all-reduce."""
        acc, heads = self.job.accelerator, self.job.ctx.heads
        sums, rows = metrics.pop("task_loss_sums"), metrics.pop("task_rows")
        packed = torch.cat([metrics["loss"].detach().float().reshape(1), sums.float(), rows.float()])
        if acc.num_processes > 1:
            packed = acc.reduce(packed, reduction="sum")
        packed = packed.tolist()
        values = {"loss": packed[0] / acc.num_processes}
        for i, task in enumerate(heads):
            task_sum, task_rows = packed[1 + i], packed[1 + len(heads) + i]
            if task_rows > 0:
                values[f"loss_{task}"] = task_sum / task_rows
        return values

    def _log(self, metrics: dict[str, torch.Tensor], step: int) -> None:
        job = self.job
        losses = self._losses_over_ranks(metrics)
        values = {**{k: float(v) for k, v in metrics.items()}, **losses}
        lr = job.ctx.optimizer.param_groups[0]["lr"]
        images = job.cfg.data.batch_size * job.cfg.train.grad_accum * job.accelerator.num_processes
        rate = job.logger.images_per_second(step, images)
        extra = {}
        if job.accelerator.scaler is not None:
            extra["skipped_steps"] = self.skipped_steps
            self._report_skipped()
        job.logger.record("train", {**values, "lr": lr, "epoch": job.state.epoch, "images_per_s": rate, **extra},
                          step)
        job.logger.progress(step, values["loss"], lr, rate)

    def _report_skipped(self) -> None:
        """One line for the optimizer steps the fp16 loss scaler skipped since the last log."""
        if self.skipped_steps:
            steps = ", ".join(map(str, self.skipped_steps))
            self.job.logger.print(f"fp16 loss scaler skipped optimizer step(s) {steps}: non-finite gradients; "
                                  f"weights, BatchNorm statistics and EMA left as they were")
        self.skipped_steps = []


def stop_request_for(job: Job) -> StopRequest:
    train = job.cfg.train
    stop_file = Path(train.stop_file) if train.stop_file else RunDir(job.run_dir).stop_file
    return StopRequest(job.accelerator, stop_file, train.stop_check_every)


def data_for_epoch(job: Job) -> DataConfig:
    """The loader settings for the current epoch. Its data is split among the loader workers of
    every rank, so a position saved mid-epoch only holds with as many workers: a run resumed on a
    machine with another default (or another --workers) finishes the epoch with the saved count."""
    state, data = job.state, job.cfg.data
    readers = max(1, loader_workers(data.workers))  # workers 0 reads like one worker
    if state.batch_in_epoch == 0 or state.epoch_workers is None:
        state.epoch_workers = readers
    elif state.epoch_workers != readers:
        job.logger.print(f"epoch {state.epoch} is split among {state.epoch_workers} loader worker(s) per rank "
                         f"(the checkpoint's); finishing it with as many, then {readers}")
        return dataclasses.replace(data, workers=state.epoch_workers)
    return data


def epoch_done(job: Job) -> bool:
    """The current epoch's last step has been trained (its end-of-epoch validation and save follow)."""
    return job.state.batch_in_epoch >= job.steps_per_epoch * job.cfg.train.grad_accum


def start_epoch(job: Job) -> None:
    """Before an epoch's first step: the seed's restart where the freeze plan has one (the stem
    unfreezes, AdamW starts afresh - no moments, step counts from 0 - and the schedule starts a
    new cosine), and an "epoch" row in metrics.jsonl with what the epoch trains with: each
    group's learning rate, the frozen parameters, the modules in eval mode while training."""
    ctx, state = job.ctx, job.state
    restart = ctx.freeze.restart_epoch == state.epoch
    if restart:
        reset_optimizer_state(ctx.optimizer)
    if state.epoch > 0 and ctx.freeze.phase(state.epoch) != ctx.freeze.phase(state.epoch - 1):
        what = "the stem too; AdamW rebuilt, cosine restarted" if restart else "the backbone"
        job.logger.print(f"epoch {state.epoch + 1}: unfreezing {what}")
    net = job.accelerator.unwrap_model(ctx.model)
    net.train()  # as train_one_epoch sets it: read which modules the freeze plan leaves in eval mode
    ctx.freeze.apply_bn_mode(net, state.epoch)
    lrs = {f"lr_{g.get('name', i)}": ctx.schedule.lr(g["base_lr"], state.step, state.epoch)
           for i, g in enumerate(ctx.optimizer.param_groups)}
    # Logged as the epoch's first step: a resume from the checkpoint before it logs it again.
    job.logger.record("epoch", {"epoch": state.epoch, **lrs, "frozen": ctx.freeze.frozen_names(state.epoch),
                                "eval_modules": [n for n, m in net.named_modules() if not m.training],
                                "optimizer_reset": restart}, state.step + 1)


def fit(job: Job) -> dict[str, Any]:
    """Train until the configured length or a stop request; returns the last validation metrics
    (or {"stopped_at_step": N, "exit_code": 75} when stopped early)."""
    state, acc = job.state, job.accelerator
    hooks = StepHooks(job, stop_request_for(job))
    metrics: dict[str, Any] = {}
    if state.finished and state.step >= job.ctx.total_steps:
        job.logger.print(f"run in {job.run_dir} already finished at step {state.step}")
        return metrics
    if state.finished:  # --max-steps or --epochs raised: train on, under the longer schedule
        job.logger.print(f"run in {job.run_dir} finished at step {state.step}; training on to step "
                         f"{job.ctx.total_steps}, on the learning-rate schedule of the longer run")
        state.finished = False
    with job.logger:
        job.logger.restart_clock(state.step)
        while state.step < job.ctx.total_steps:
            if state.batch_in_epoch == 0:
                start_epoch(job)
            info = build_train_data(job.manifest, data_for_epoch(job), rank=acc.process_index,
                                    world_size=acc.num_processes,
                                    epoch=state.epoch, seed=job.cfg.train.seed,
                                    skip_batches=state.batch_in_epoch, labelled_only=state.labelled_epochs)
            train_one_epoch(job.ctx, info.loader, state, job.steps_per_epoch, hooks)
            if hooks.stopped:
                job.logger.print(f"stopped at step {state.step} ({hooks.stop.reason or '--stop-at-step'}); "
                                 f"checkpoint saved, resume with --resume auto")
                if job.hub is not None:
                    job.hub.finish(job)  # push the saved state, wait (bounded) for the upload
                acc.end_training()
                return {"stopped_at_step": state.step, "exit_code": EXIT_PREEMPTED}
            if epoch_done(job):
                state.epoch, state.batch_in_epoch = state.epoch + 1, 0
            hooks.guard()
            metrics = run_validation(job)
            job.logger.epoch_table(state.epoch, {"loss": hooks.epoch_mean_loss()}, metrics)
            state.finished = state.step >= job.ctx.total_steps
            save_training_state(job)
            job.logger.restart_clock(state.step)  # images/s counts training, not validation or saving
        if not state.finished:  # resumed at or past a now lower end (--max-steps, --epochs): close the run
            hooks.guard()
            metrics = run_validation(job)
            state.finished = True
            save_training_state(job)
    if job.hub is not None:
        job.hub.finish(job)  # idempotent: the final checkpoint save may already have awaited it
    acc.end_training()
    return metrics


def train(cfg: RunConfig) -> dict[str, Any]:
    """Entry point used by train.py: set up, fit, return the final validation metrics."""
    return fit(setup_job(cfg))
