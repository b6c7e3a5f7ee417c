"""`run_evaluation` (the command: wikiart.cli.evaluate, evaluate.py): how good a trained model is
and where it fails, on one process or across ranks.

    accelerate launch evaluate.py --checkpoint DIR_OR_HUB_ID --shards DIR --out DIR \
        [--split val] [--outliers] [--tta flip]

Every rank loads the model and scores its share of the split (exactly once overall); the
logits are gathered and deduplicated by key (`score.evaluate`), and every metric is computed
with scikit-learn on the gathered arrays, so the numbers do not depend on the world size.
Only the main process writes files and prints. A checkpoint whose class names differ from
the manifest is refused before anything is written.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from rich.console import Console

from ..config.options import ConfigError, DataConfig, EvalConfig
from ..data.loader import INTERSECTION, build_eval_data
from ..runtime.device import resolve_mixed_precision
from .score import EvalOutputs, evaluate
from ..runtime.accelerator import make_accelerator
from ..model.load import LoadedModel, check_class_names, eval_data_config, load_model
from . import explain_report
from .outlier_report import compute_joint_outliers, compute_outliers, read_sources_and_images, write_outlier_files
from ..hub.repo import check_repo_id, check_token, push_eval_card
from ..data.census import census
from ..formats import files
from ..formats.labels import BASE_TASKS
from ..formats.manifest import Manifest, ManifestError, load_manifest
from .metrics import evaluation_metrics
from .outliers import JointOutlierTable
from .report import (plot_confusion, print_summary, write_classification_report, write_json,
                     write_per_class_recall)
from ..data.transforms import build_eval_transform

def load_checked_model(cfg: EvalConfig, manifest: Manifest) -> LoadedModel:
    """The checkpoint's model, refused (CheckpointError) if its classes differ from the manifest."""
    try:
        manifest.split(cfg.split)  # an unknown split fails before the model is loaded
    except ManifestError as exc:
        raise ManifestError(f"--split {cfg.split}: {exc}") from None
    loaded = load_model(cfg.checkpoint, use_ema=cfg.ema)
    check_class_names(loaded.model.class_names_dict(), manifest, f"checkpoint {cfg.checkpoint}")
    return loaded


def score_split(accelerator: Accelerator, model: torch.nn.Module, manifest: Manifest, split: str,
                data_cfg: DataConfig, with_embeddings: bool, tta_flip: bool) -> EvalOutputs:
    """Logits (and embeddings) of every painting of `split`, gathered on every rank."""
    info = build_eval_data(manifest, split, data_cfg, rank=accelerator.process_index,
                           world_size=accelerator.num_processes)
    return evaluate(accelerator, model, info.loader, model.tasks, manifest.num_samples(split),
                    with_embeddings=with_embeddings, tta_flip=tta_flip,
                    channels_last=accelerator.device.type == "cuda")


def seed_population(manifest: Manifest, split: str, out: EvalOutputs) -> np.ndarray | None:
    """For a model with several heads: the rows of the seed's combined population (all three
    labels, each from the split's own ArtGAN files), so the joint numbers cover the seed's 4,707
    val paintings rather than every painting the leak rule gave three labels."""
    if len(out.logits) < 2 or set(out.logits) != set(BASE_TASKS):
        return None
    keys = census(manifest, split, INTERSECTION).keys
    return np.fromiter((k in keys for k in out.keys), dtype=bool, count=len(out.keys))


def run_evaluation(cfg: EvalConfig, console: Console | None = None) -> dict[str, Any]:
    """Score, compute metrics (and outliers), write the outputs; returns the metrics on every rank."""
    if cfg.push_to_hub:  # a bad repo id or a missing token fails before any work
        check_repo_id(cfg.push_to_hub)
        check_token()
    check_out_dir(Path(cfg.out))  # before the scoring, not after it
    if cfg.explain_outliers and not cfg.outliers:
        raise ConfigError("--explain-outliers draws on the outlier contact sheets: add --outliers")
    accelerator = make_accelerator(resolve_mixed_precision(cfg.mixed_precision))
    if accelerator.mixed_precision == "fp16" and accelerator.device.type != "cuda":
        raise ValueError(f"--mixed-precision fp16 needs a GPU: on {accelerator.device.type} Accelerate has no "
                         f"fp16 autocast and would score in fp32; use --mixed-precision bf16 or no")
    manifest = load_manifest(cfg.shards, cache=cfg.shard_cache)
    loaded = load_checked_model(cfg, manifest)
    channels_last = accelerator.device.type == "cuda"  # the GPU fast path, as in training
    loaded.model.to(accelerator.device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    main = accelerator.is_main_process
    console = console or Console(highlight=False)
    if main:
        console.print(f"evaluating {loaded.describe()} on {cfg.split} of {cfg.shards} "
                      f"({manifest.num_samples(cfg.split)} paintings, world size {accelerator.num_processes})")
    data_cfg = eval_data_config(loaded, cfg.shards, cfg.batch_size, cfg.workers, cfg.eval_resize)
    out = score_split(accelerator, loaded.model, manifest, cfg.split, data_cfg,
                      with_embeddings=cfg.outliers, tta_flip=cfg.tta == "flip")
    class_names = loaded.model.class_names_dict()
    population = seed_population(manifest, cfg.split, out)
    summary = {**describe_run(cfg, loaded, data_cfg, manifest, out, accelerator.num_processes,
                              accelerator.mixed_precision),
               **evaluation_metrics(out.logits, out.labels, class_names, population)}
    tables, joint = {}, None
    if cfg.outliers:
        tables = compute_outliers(accelerator, loaded.model, manifest, cfg.split, cfg.centroids, data_cfg,
                                  out, class_names)
        joint = compute_joint_outliers(out, population)
    if main:  # the other ranks are done: nothing here can make them wait
        pictures = explain_pictures(cfg, loaded.model, manifest, data_cfg, out, tables, joint, accelerator.device)
        write_outputs(Path(cfg.out), cfg, manifest, summary, tables, class_names, joint, pictures)
        print_summary(console, summary, cfg.split, cfg.worst)
        console.print(f"wrote {Path(cfg.out) / 'metrics.json'} and the reports beside it")
        if cfg.push_to_hub:
            url = push_eval_card(cfg.push_to_hub, card_metrics(summary), split=cfg.split, step=loaded.step,
                                 model_config=loaded.model.hub_config(), manifest=manifest,
                                 private=cfg.hub_private, gallery=pictures.gallery)
            console.print(f"updated the model card of {cfg.push_to_hub}: {url}")
    accelerator.end_training()
    return summary


@dataclasses.dataclass
class Pictures:
    """What --explain-worst, --explain-outliers and --card-gallery need (explain_report)."""
    explained: dict[str, Any] = dataclasses.field(default_factory=dict)  # key -> Explained
    on_outliers: bool = False  # the outlier contact sheets show the overlays
    worst: dict[str, list[dict]] = dataclasses.field(default_factory=dict)  # task -> sheet rows
    gallery: dict[str, bytes] = dataclasses.field(default_factory=dict)  # gallery/<key>.png -> PNG


def explain_pictures(cfg: EvalConfig, model: torch.nn.Module, manifest: Manifest, data_cfg: DataConfig,
                     out: EvalOutputs, tables: dict, joint: JointOutlierTable | None,
                     device: torch.device) -> Pictures:
    """The main process's maps of the paintings those flags show (none asked: nothing computed)."""
    if not explain_report.wanted(cfg):
        return Pictures()
    class_names = model.class_names_dict()
    worst = explain_report.confident_mistakes(out, class_names, cfg.explain_worst) if cfg.explain_worst else {}
    gallery_keys = explain_report.gallery_keys(out, cfg.card_gallery)
    keys = {r["key"] for rows in worst.values() for r in rows} | set(gallery_keys)
    if cfg.explain_outliers and cfg.outliers:
        keys |= explain_report.outlier_keys(tables, joint, cfg.outlier_top)
    _, jpegs = read_sources_and_images(manifest.shard_sources(cfg.split), keys)
    explained = explain_report.explain_paintings(model, jpegs, data_cfg, device)
    return Pictures(explained=explained, on_outliers=cfg.explain_outliers and cfg.outliers, worst=worst,
                    gallery=explain_report.render_gallery(gallery_keys, explained, class_names))


def card_metrics(summary: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers for the model card table (no per-class rows or matrices)."""
    keys = ("top1", "top5", "macro_f1", "weighted_f1", "loss", "scored")
    card = {task: {k: m[k] for k in keys if k in m} for task, m in summary["tasks"].items()}
    card.update({k: v for k, v in summary.get("combined", {}).items() if isinstance(v, (int, float))})
    return card


def describe_run(cfg: EvalConfig, loaded: LoadedModel, data_cfg: DataConfig, manifest: Manifest,
                 out: EvalOutputs, world_size: int, mixed_precision: str) -> dict[str, Any]:
    """What was evaluated: checkpoint, split and sample counts (the head of metrics.json)."""
    return {"checkpoint": cfg.checkpoint, "checkpoint_kind": loaded.kind, "checkpoint_path": loaded.path,
            "checkpoint_step": loaded.step, "weights": loaded.weights, "shards": str(cfg.shards),
            "split": cfg.split, "num_samples": len(out.keys), "manifest_samples": manifest.num_samples(cfg.split),
            "tta": cfg.tta, "image_size": loaded.model.image_size,
            "eval_resize": build_eval_transform(data_cfg).resize,
            "world_size": world_size, "mixed_precision": mixed_precision}


# What write_outputs writes per task: an earlier evaluation's files of these names are removed
# first, so that --out never mixes reports of two models (or of tasks this one does not have).
REPORT_NAMES = tuple(name.format(task) for task in BASE_TASKS for name in (
    "classification_report_{}.txt", "per_class_recall_{}.csv", "confusion_{}.png", "outliers_{}.csv",
    "outliers_{}.png", "explain_worst_{}.png")) + ("outliers_joint.csv", "outliers_joint.png")


def check_out_dir(out_dir: Path) -> None:
    """--out must be a directory we can write, or not exist yet (it is created at the end)."""
    problem = files.writable_directory_problem(out_dir)
    if problem:
        raise ConfigError(f"--out {out_dir}: {problem}")


def write_outputs(out_dir: Path, cfg: EvalConfig, manifest: Manifest, summary: dict[str, Any],
                  tables: dict, class_names: dict[str, list[str]], joint: JointOutlierTable | None = None,
                  pictures: Pictures | None = None) -> None:
    """metrics.json, classification_report_<task>.txt, per_class_recall_<task>.csv,
    confusion_<task>.png (+ outliers_<task>.csv/png, + outliers_joint.csv/png for several heads,
    + explain_worst_<task>.png, gallery/)."""
    pictures = pictures or Pictures()
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in REPORT_NAMES:
        (out_dir / name).unlink(missing_ok=True)
    for task, m in summary["tasks"].items():
        write_classification_report(out_dir / f"classification_report_{task}.txt", task, m, cfg.split,
                                    cfg.checkpoint)
        write_per_class_recall(out_dir / f"per_class_recall_{task}.csv", m)
        plot_confusion(out_dir / f"confusion_{task}.png", m["confusion"], class_names[task],
                       f"{task} on {cfg.split}: confusion normalised by row ({m['scored']} paintings)")
    if tables:
        summary["outliers"] = {"centroids": cfg.centroids, **write_outlier_files(
            out_dir, manifest, cfg.split, tables, class_names, cfg.outlier_top, joint,
            pictures.explained if pictures.on_outliers else None)}
    if pictures.worst:
        summary["explain_worst"] = explain_report.write_worst_sheets(out_dir, pictures.worst, pictures.explained,
                                                                     cfg.split)
    explain_report.write_gallery(out_dir, pictures.gallery)
    if pictures.gallery:
        summary["gallery"] = sorted(pictures.gallery)
    metrics = {**summary, "tasks": {t: {k: v for k, v in m.items() if k != "report"}
                                    for t, m in summary["tasks"].items()}}
    write_json(out_dir / "metrics.json", metrics)
