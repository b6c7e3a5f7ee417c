"""Setting up a training job: accelerator, run directory, model, optimizer, resume, and the
save/validate actions the loop calls (`wikiart.train.loop` runs the epochs; `wikiart.train.engine` the step).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from ..formats import checkpoint as ckpt
from ..formats.files import write_json
from ..formats.rundir import RunDir, record_weights_kind
from ..model.backbones import fetch_pretrained
from ..config.options import DataConfig, RunConfig
from ..data.loader import (balance_weigher, build_eval_data, eval_filter, eval_samples_for, intersection_only,
                   train_batches_per_rank, train_samples_for)
from ..data.device import DeviceAugment
from ..runtime.accelerator import make_accelerator
from ..runtime.device import apply_device_defaults, resolve_mixed_precision
from ..evaluate.score import evaluate
from .engine import LoopContext
from ..model.load import check_class_names
from .hub_sync import HubSync, check_hub_config, resolve_hub_resume, write_run_card
from ..formats.labels import BASE_TASKS, heads_for_task
from ..formats.manifest import Manifest, load_manifest
from ..evaluate.metrics import headline_metrics
from .mixing import Mixer
from ..model.classifier import CNNRNNClassifier, from_config
from .optim import HYPERPARAMETERS, ModelEMA, build_optimizer, restore_hyperparameters
from .recipe import (check_resume_recipe, freeze_for_run, freeze_plan_for, resolve_batch_scaling, schedule_for,
                     starts_pretrained, with_backbone_preprocessing)
from ..runtime.ranks import raise_on_every_rank
from .runlog import RunLogger

class RunDirError(RuntimeError):
    """The output directory holds another run, or cannot be used."""


def build_accelerator(cfg: RunConfig) -> Accelerator:
    train = cfg.train
    accelerator = make_accelerator(resolve_mixed_precision(train.mixed_precision), train.report_to, train.out,
                                   collective_timeout=train.collective_timeout)
    if accelerator.mixed_precision == "fp16" and accelerator.scaler is None:
        # Accelerate would train in plain fp32 and, with no loss scaler, nothing would skip a
        # step with a non-finite gradient: say so rather than run something else than asked.
        raise ValueError(f"--mixed-precision fp16 needs a GPU: on {accelerator.device.type} there is no fp16 "
                         f"autocast or loss scaler; use --mixed-precision bf16 or no")
    return accelerator


def check_run_dir(cfg: RunConfig, accelerator: Accelerator) -> Path:
    """Refuse an --out that is not a directory or holds another run (unless --resume or
    --overwrite). Writes nothing. The main process looks and every rank raises alike: an
    error on the main process alone would leave the other ranks waiting at a collective."""
    train = cfg.train
    run_dir = Path(train.out)
    error = None
    if accelerator.is_main_process:
        if run_dir.exists() and not run_dir.is_dir():
            error = RunDirError(f"--out {run_dir} is a file, not a directory")
        elif RunDir(run_dir).holds_run() and train.resume is None and not train.overwrite:
            error = RunDirError(f"--out {run_dir} already holds a run; pass --resume auto to continue it or "
                                f"--overwrite to start over")
    raise_on_every_rank(accelerator, error)
    return run_dir


def prepare_run_dir(cfg: RunConfig, accelerator: Accelerator) -> Path:
    """Create the run directory and save the resolved config: the first write of a run, so it
    comes after `check_run_dir` and every other check (bad input leaves --out untouched)."""
    train = cfg.train
    run = RunDir(train.out)
    if accelerator.is_main_process:
        if run.holds_run() and train.resume is None:  # --overwrite (check_run_dir refused the rest)
            run.remove_previous_run()
        run.path.mkdir(parents=True, exist_ok=True)
        run.stopped.unlink(missing_ok=True)  # this start answers the last stop
        write_json(run.config, cfg.to_dict(), indent=2, sort_keys=True, ensure_ascii=True)
    accelerator.wait_for_everyone()
    return run.path


def check_manifest_for_task(manifest: Manifest, task: str) -> tuple[str, ...]:
    heads = heads_for_task(task)
    for head in heads:
        manifest.class_names(head)  # raises ManifestError naming the task
    return heads


def without_imagenet_weights(cfg: RunConfig) -> RunConfig:
    return cfg.replace(model=dataclasses.replace(cfg.model, pretrained=False, pretrained_path=None))


def build_model(cfg: RunConfig, manifest: Manifest, heads: tuple[str, ...]) -> CNNRNNClassifier:
    torch.manual_seed(cfg.train.seed)  # identical init on every rank
    class_names = {t: manifest.class_names(t) for t in heads}
    return from_config(cfg.model, class_names, cfg.data.image_size, cfg.data.eval_resize,
                       cfg.data.interpolation)


@dataclasses.dataclass
class Job:
    cfg: RunConfig
    accelerator: Accelerator
    manifest: Manifest
    heads: tuple[str, ...]
    run_dir: Path
    ctx: LoopContext
    state: ckpt.TrainState
    steps_per_epoch: int
    logger: RunLogger
    hub: HubSync | None = None  # --push-to-hub, main process only (wikiart.train.hub_sync)


def compile_model(model: torch.nn.Module) -> torch.nn.Module:
    """torch.compile with a fallback: a graph that fails to compile runs eagerly instead."""
    import torch._dynamo

    torch._dynamo.config.suppress_errors = True
    try:
        return torch.compile(model)
    except Exception as exc:  # noqa: BLE001 - any compiler failure means: run eagerly
        print(f"torch.compile unavailable ({exc}); running eagerly", flush=True)
        return model


def steps_per_epoch_for(manifest: Manifest, data: DataConfig, world: int, grad_accum: int,
                        labelled_only: bool = True) -> int:
    samples = train_samples_for(manifest, data.task, labelled_only, data.combined_data)
    batches = train_batches_per_rank(samples, world, data.batch_size)
    steps = batches // grad_accum
    if steps < 1:
        raise ValueError(f"--grad-accum {grad_accum} is larger than the {batches} batches per epoch")
    return steps


def checked_mixer(cfg: RunConfig, manifest: Manifest, heads: tuple[str, ...]) -> Mixer:
    """The MixUp/CutMix sampler, once its flags and the class-balancing task (the shards must
    label it) are checked: both are refused before --out is written, like every other flag."""
    optim_cfg, data = cfg.optim, cfg.data
    balance_weigher(manifest, data)  # raises for a balance task the shards do not label
    return Mixer(optim_cfg.mixup_p, optim_cfg.mixup_alpha, optim_cfg.cutmix_p, optim_cfg.cutmix_alpha,
                 num_classes={t: manifest.num_classes(t) for t in heads}, partner=optim_cfg.mix_partner)


def setup_job(cfg: RunConfig) -> Job:
    check_hub_config(cfg)  # a bad repo id or a missing token fails before anything is written
    accelerator = build_accelerator(cfg)
    cfg = apply_device_defaults(cfg, accelerator.device)
    # config.json records the precision that runs (the default bf16 on CUDA, "no" on the CPU).
    cfg = cfg.replace(train=dataclasses.replace(cfg.train, mixed_precision=accelerator.mixed_precision))
    cfg, batch_line = resolve_batch_scaling(cfg, accelerator.num_processes)
    cfg = with_backbone_preprocessing(cfg)
    data, optim_cfg, train = cfg.data, cfg.optim, cfg.train
    # Every check comes before the first write (prepare_run_dir): bad input leaves --out untouched.
    manifest = load_manifest(data.shards, cache=data.shard_cache)
    heads = check_manifest_for_task(manifest, data.task)
    run_dir = check_run_dir(cfg, accelerator)
    model, optimizer, ema, state, extra = _model_and_state(cfg, accelerator, manifest, heads, run_dir)
    # Sized after the resume (an older checkpoint keeps its epochs); raises for a --grad-accum too large.
    steps = steps_per_epoch_for(manifest, data, accelerator.num_processes, train.grad_accum, state.labelled_epochs)
    mixer = checked_mixer(cfg, manifest, heads)
    prepare_run_dir(cfg, accelerator)
    if cfg.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    prepared_model, prepared_opt = accelerator.prepare(model, optimizer)
    if cfg.model.compile:
        prepared_model = compile_model(prepared_model)
    if accelerator.scaler is not None and "scaler" in extra:
        accelerator.scaler.load_state_dict(extra["scaler"])
    total = steps * train.epochs if train.max_steps is None else min(train.max_steps, steps * train.epochs)
    weights = dict(zip(BASE_TASKS, optim_cfg.task_weights))
    freeze = freeze_plan_for(cfg, model)
    ctx = LoopContext(
        accelerator=accelerator, model=prepared_model, optimizer=prepared_opt, mixer=mixer, freeze=freeze,
        cfg=cfg, heads=heads, task_weights={t: weights[t] for t in heads}, total_steps=total,
        schedule=schedule_for(cfg, steps, total, freeze),
        stop_on_nonfinite=accelerator.scaler is None, ema=ema,  # a loss scaler skips such steps itself
        augment=DeviceAugment.for_recipe(data.color_jitter, data.erasing_p, model.mean, model.std,
                                         cfg.model.channels_last, erasing_fill=data.erasing_fill))
    if train.report_to:
        accelerator.init_trackers("wikiart", config={k: str(v) for k, v in cfg.to_dict().items()})
    logger = RunLogger(run_dir, accelerator, total, show_progress=train.progress)
    logger.forget_after(state.step, state.logged_rows_at_step)  # a resumed run logs them again
    for line in [*_start_lines(cfg, heads, accelerator, steps, total, run_dir, state), batch_line]:
        logger.print(line)
    job = Job(cfg, accelerator, manifest, heads, run_dir, ctx, state, steps, logger)
    job.hub = HubSync.for_job(job)
    return job


def _model_and_state(cfg: RunConfig, accelerator: Accelerator, manifest: Manifest, heads: tuple[str, ...],
                     run_dir: Path) -> tuple[CNNRNNClassifier, torch.optim.Optimizer, ModelEMA | None, Any, dict]:
    """The model, optimizer and EMA, with the checkpoint's state loaded when resuming."""
    train, optim_cfg = cfg.train, cfg.optim
    # A resumed run's weights come from its checkpoint: it needs no ImageNet file (an offline node
    # without the cache resumes all the same), and the freeze plan still follows the run's flags.
    resumes = train.resume not in (None, "hub") and ckpt.resolve_resume(train.resume, run_dir) is not None
    if not resumes:
        fetch_pretrained(cfg.model, accelerator)  # each node's main rank downloads missing weights
    model = build_model(without_imagenet_weights(cfg) if resumes else cfg, manifest, heads)
    freeze_for_run(cfg, model)  # --freeze-backbone: no gradients, out of DDP (before prepare)
    optimizer = build_optimizer(model, optim_cfg, fused=accelerator.device.type == "cuda")
    ema = ModelEMA(model, optim_cfg.ema_decay) if optim_cfg.ema_decay else None
    state, extra = _maybe_resume(cfg, run_dir, model, optimizer, ema, manifest, heads, accelerator)
    return model, optimizer, ema, state, extra


def _start_lines(cfg, heads, accelerator, steps: int, total: int, run_dir: Path,
                 state: ckpt.TrainState) -> list[str]:
    lines = [f"training {cfg.data.task} ({', '.join(heads)}) on {accelerator.device}, world size "
             f"{accelerator.num_processes}: {steps} steps/epoch, {total} steps, run dir {run_dir}"]
    if not state.labelled_epochs and cfg.data.task in BASE_TASKS:
        lines.append("the checkpoint comes from a run whose epochs read every sample, labelled for the task "
                     "or not; this run goes on that way, so its steps and schedule stay as they were")
    optim_cfg = cfg.optim
    if optim_cfg.freeze_backbone:
        lines.append(f"--freeze-backbone: the {'pretrained' if starts_pretrained(cfg) else 'RANDOM'} backbone stays "
                     f"frozen (eval mode, no gradients) for the whole run; only the new modules train")
    elif (optim_cfg.unfreeze_epoch or optim_cfg.freeze_backbone_epochs) and not starts_pretrained(cfg):
        lines.append("freezing not applied (--unfreeze-epoch, --freeze-backbone-epochs): the backbone starts "
                     "from random weights and trains from the first step, on one cosine (freezing applies to "
                     "pretrained weights)")
    elif optim_cfg.unfreeze_epoch and not optim_cfg.freeze_stem:
        lines.append(f"--unfreeze-epoch {optim_cfg.unfreeze_epoch} not applied: with --no-freeze-stem nothing is "
                     f"frozen to unfreeze (no AdamW rebuild, one cosine)")
    if intersection_only(cfg.data):
        lines.append("combined on the intersection: only the paintings with all three labels train and "
                     "validate (the seed's; --combined-data union for every painting)")
    return lines


def _maybe_resume(cfg, run_dir, model, optimizer, ema, manifest, heads, accelerator):
    """Load the checkpoint to resume from into model, optimizer and EMA, after checking that it
    belongs to this task and class list and fits this model. Every rank does the same; nothing
    is written here (except what `--resume hub` fetches into --out)."""
    path = ckpt.resolve_resume(resolve_hub_resume(cfg, run_dir, accelerator), run_dir)  # hub -> auto
    if path is None:
        return ckpt.TrainState(labelled_epochs=True), {}
    check_resume_recipe(cfg, _saved_config(path.parent.parent), f"checkpoint {path}")
    state, model_state, optimizer_state, extra = ckpt.load_checkpoint(path)
    check_class_names(extra.get("class_names", {}), manifest, f"checkpoint {path}", heads=heads)
    chosen = [{k: group[k] for k in HYPERPARAMETERS} for group in optimizer.param_groups]
    changed: list[str] = []
    try:
        model.load_state_dict(model_state)
        optimizer.load_state_dict(optimizer_state)
        if ema is not None and "ema" in extra:
            ema.load_state_dict(extra["ema"])
            if ema.decay != cfg.optim.ema_decay:
                changed.append(f"EMA decay {ema.decay:g} -> {cfg.optim.ema_decay:g}")
            ema.decay = cfg.optim.ema_decay  # this command line's, as config.json records
        elif ema is not None:  # EMA newly on: it averages from the resumed weights, not the initial ones
            ema.load_state_dict({"decay": ema.decay, "num_updates": 0, "shadow": model.state_dict()})
    except (RuntimeError, ValueError, KeyError) as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        reason = " ".join(lines[:2])[:300] or type(exc).__name__
        raise ckpt.CheckpointError(f"checkpoint {path} does not fit the model of this command line "
                                   f"(--backbone and the model flags must match the run's): {reason}") from exc
    check_data_layout(state, path, accelerator.num_processes, cfg.data.batch_size, cfg.train.grad_accum)
    changed = restore_hyperparameters(optimizer, chosen) + changed
    if accelerator.is_main_process:
        print(f"resuming from {path} at step {state.step} (epoch {state.epoch}, "
              f"batch {state.batch_in_epoch})", flush=True)
        if changed:
            print(f"the checkpoint's run had other hyperparameters ({'; '.join(changed)}); "
                  f"this command line's are used from here on", flush=True)
    return state, extra


def _saved_config(run_dir: Path) -> dict[str, Any] | None:
    """The config.json of the run a checkpoint belongs to (None when absent or unreadable)."""
    try:
        return json.loads(RunDir(run_dir).config.read_text())
    except (OSError, ValueError):
        return None


def check_data_layout(state: ckpt.TrainState, path: Path, world_size: int, batch_size: int, grad_accum: int) -> None:
    """The checkpoint's step, epoch and data position only mean the same thing in the same layout."""
    saved = (state.world_size, state.batch_size, state.grad_accum)
    if state.world_size is not None and saved != (world_size, batch_size, grad_accum):
        raise ckpt.CheckpointError(
            f"checkpoint {path} was saved by a run with world size {saved[0]}, --batch-size {saved[1]} and "
            f"--grad-accum {saved[2]}; this run has {world_size}, {batch_size} and {grad_accum}. Its data "
            f"position, steps per epoch and learning-rate schedule are counted in that layout: resume with "
            f"the same three (--workers may differ)")


def save_training_state(job: Job) -> Path | None:
    """Every rank calls this; the main process writes (model and optimizer are identical on all)."""
    acc = job.accelerator
    path, error = None, None
    if acc.is_main_process:
        net = acc.unwrap_model(job.ctx.model)
        extra: dict[str, Any] = {"class_names": net.class_names_dict(), "task": job.cfg.data.task}
        if job.ctx.ema is not None:
            extra["ema"] = job.ctx.ema.state_dict()
        if acc.scaler is not None:
            extra["scaler"] = acc.scaler.state_dict()
        job.state.freeze_phase = job.ctx.freeze.phase(job.state.epoch)
        job.state.world_size, job.state.batch_size = acc.num_processes, job.cfg.data.batch_size
        job.state.grad_accum = job.cfg.train.grad_accum
        job.state.logged_rows_at_step = job.logger.rows_at(job.state.step)
        try:
            path = ckpt.save_checkpoint(job.run_dir, job.state, net.state_dict(), job.ctx.optimizer.state_dict(),
                                        extra, keep_last=job.cfg.train.keep_last)
        except ckpt.CheckpointError as exc:  # a full disk: every rank stops now, none waits for it
            error = exc
    raise_on_every_rank(acc, error)  # also the barrier: no rank runs ahead of the write
    if job.hub is not None:  # after the barrier: a push (or the final wait) never holds other ranks
        job.hub.on_checkpoint(job)
    return path


def save_best(job: Job, metrics: dict[str, float]) -> None:
    """Keep `best/` in save_pretrained form (EMA weights when EMA is on)."""
    acc = job.accelerator
    error = None
    if acc.is_main_process:
        try:
            _write_best(job, metrics)
        except ckpt.WRITE_ERRORS as exc:
            error = ckpt.write_failure(str(RunDir(job.run_dir).best), exc, "the previous best/ is intact")
        if error is None and job.hub is not None:
            job.hub.on_best(job)  # stages links and enqueues: returns at once
    raise_on_every_rank(acc, error)


def _write_best(job: Job, metrics: dict[str, float]) -> None:
    net = job.accelerator.unwrap_model(job.ctx.model)
    run = RunDir(job.run_dir)
    tmp = run.best_tmp
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        if job.ctx.ema is not None:
            with job.ctx.ema.swapped_into(net):
                net.save_pretrained(tmp)
        else:
            net.save_pretrained(tmp)
        write_json(tmp / "metrics.json", {"step": job.state.step, **metrics}, ensure_ascii=True)
        record_weights_kind(tmp, "ema" if job.ctx.ema is not None else "model")
        write_run_card(job, tmp)  # our card, not save_pretrained's placeholder README.md
        ckpt.replace_directory(tmp, run.best)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_validation(job: Job) -> dict[str, float]:
    acc, data = job.accelerator, job.cfg.data
    info = build_eval_data(job.manifest, "val", data, rank=acc.process_index, world_size=acc.num_processes,
                           keep=eval_filter(data))
    net = acc.unwrap_model(job.ctx.model)
    weights = job.ctx.ema.swapped_into(net) if job.ctx.ema is not None else contextlib.nullcontext()
    with weights:
        out = evaluate(acc, job.ctx.model, info.loader, job.heads, eval_samples_for(job.manifest, "val", data),
                       channels_last=job.cfg.model.channels_last)
    metrics = headline_metrics(out.logits, out.labels, smoothing=job.cfg.optim.label_smoothing)
    improved = job.state.best_metric is None or metrics["score"] > job.state.best_metric
    if improved:
        job.state.best_metric, job.state.best_step = metrics["score"], job.state.step
        save_best(job, metrics)
    job.logger.record("val", {**metrics, "epoch": job.state.epoch, "best": improved}, job.state.step)
    return metrics
