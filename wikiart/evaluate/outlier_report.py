"""The outlier step of evaluate.py: class centroids, per-task outlier tables, their files, and
for a model with several heads the seed's joint ranking (`outliers_joint.csv`/`.png`).

Training-split centroids come from per-class sums of normalised embeddings reduced across
ranks (C x D numbers), never from gathering every training embedding: on WikiArt that would
be about a gigabyte on every rank.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator

from ..data.buffers import release_batch
from ..config.options import DataConfig
from ..data.loader import build_eval_data
from ..data.device import Normalizer, eval_images
from .score import EvalOutputs
from ..formats.manifest import Manifest
from .outliers import (JointOutlierTable, OutlierTable, centroids_from_sums, class_centroids, joint_outlier_table,
                       outlier_table)
from .report import joint_caption, plot_contact_sheet, write_outliers_csv
from ..formats.shard import iter_shard_samples
from .explain_report import strips


@torch.no_grad()
def centroid_sums(accelerator: Accelerator, model: torch.nn.Module, loader: Iterable[dict[str, Any]],
                  num_classes: Mapping[str, int]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per task (sums of L2-normalised `model.embed` features per class, counts), all ranks summed."""
    device = accelerator.device
    normalize = Normalizer(model.mean, model.std)
    sums: dict[str, torch.Tensor] = {}
    counts = {t: torch.zeros(c, dtype=torch.float64, device=device) for t, c in num_classes.items()}
    for batch in loader:
        with accelerator.autocast():
            images = eval_images(batch["image"], device, normalize)
            release_batch(batch)
            feats = model.embed(images)
        z = F.normalize(feats.double(), dim=1)
        for task, c in num_classes.items():
            labels = batch["labels"][task].to(device)
            keep = labels >= 0
            total = sums.setdefault(task, torch.zeros(c, z.shape[1], dtype=torch.float64, device=device))
            total.index_add_(0, labels[keep], z[keep])
            counts[task].index_add_(0, labels[keep], torch.ones(int(keep.sum()), dtype=torch.float64,
                                                                  device=device))
    dim = model.embed_dim
    out = {}
    for task, c in num_classes.items():  # same order and shapes on every rank: no mismatched collectives
        total = sums.get(task, torch.zeros(c, dim, dtype=torch.float64, device=device))
        count = counts[task]
        if accelerator.num_processes > 1:
            total, count = accelerator.reduce(total, "sum"), accelerator.reduce(count, "sum")
        out[task] = (total.cpu().numpy(), count.cpu().numpy().round().astype(np.int64))
    return out


def compute_outliers(accelerator: Accelerator, model: torch.nn.Module, manifest: Manifest, split: str,
                     centroids: str, data_cfg: DataConfig, out: EvalOutputs,
                     class_names: Mapping[str, list[str]]) -> dict[str, OutlierTable]:
    """Outlier table per head; centroids from the training split ('train') or the scored one."""
    if out.embeddings is None:
        raise RuntimeError("outlier scores need the embeddings of the scored split")
    num_classes = {t: len(names) for t, names in class_names.items()}
    if centroids == "train" and split != "train":
        info = build_eval_data(manifest, "train", data_cfg, rank=accelerator.process_index,
                               world_size=accelerator.num_processes)
        sums = centroid_sums(accelerator, model, info.loader, num_classes)
        cents = {t: centroids_from_sums(*sums[t]) for t in num_classes}
    else:
        cents = {t: class_centroids(out.embeddings, out.labels[t], c) for t, c in num_classes.items()}
    return {t: outlier_table(out.keys, out.embeddings, out.labels[t], out.logits[t], *cents[t])
            for t in num_classes}


def compute_joint_outliers(out: EvalOutputs, population: np.ndarray | None = None) -> JointOutlierTable | None:
    """The joint ranking of a model with several heads (None for one head) over the paintings of
    `population` labelled for every head: the gathered logits, softmaxed (no embeddings or
    centroids needed)."""
    return joint_outlier_table(out.keys, out.labels, out.logits, population) if len(out.logits) > 1 else None


def read_sources_and_images(paths: Iterable[str], wanted: set[str]) -> tuple[dict[str, str], dict[str, bytes]]:
    """Every painting's source path, and the JPEG bytes of the `wanted` keys, from the shards."""
    sources: dict[str, str] = {}
    images: dict[str, bytes] = {}
    for key, jpg, meta in iter_shard_samples(paths):
        sources[key] = str(meta.get("source", ""))
        if key in wanted:
            images[key] = jpg
    return sources, images


def write_outlier_files(out_dir: Path, manifest: Manifest, split: str, tables: Mapping[str, OutlierTable],
                        class_names: Mapping[str, list[str]], top: int,
                        joint: JointOutlierTable | None = None,
                        explained: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """outliers_<task>.csv (all labelled paintings, most suspicious first) and outliers_<task>.png;
    with `joint`, outliers_joint.csv (the paintings labelled for every head) and outliers_joint.png.
    With `explained` (--explain-outliers: key -> explain_report.Explained) the sheets show, beside
    each painting, the attention map and the Grad-CAM of the sheet's heads.
    Returns {"tasks": {task: summary}, "joint": summary (with `joint` only)} for metrics.json."""
    rows = {t: table.rows(class_names[t]) for t, table in tables.items()}
    joint_rows = joint.rows({t: class_names[t] for t in joint.labels}) if joint is not None else []
    wanted = {row["key"] for task_rows in [*rows.values(), joint_rows] for row in task_rows[:top]}
    sources, images = read_sources_and_images(manifest.shard_sources(split), wanted)
    summary: dict[str, Any] = {"tasks": {}}
    for task, task_rows in rows.items():
        write_outliers_csv(out_dir / f"outliers_{task}.csv", task_rows, sources)
        plot_contact_sheet(out_dir / f"outliers_{task}.png", task_rows[:top], images,
                           f"{task}: the {min(top, len(task_rows))} most suspicious {split} paintings"
                           + (" (painting | attention | Grad-CAM of the prediction)" if explained else ""),
                           strips=strips(explained, [task]) if explained else None)
        summary["tasks"][task] = {"scored": len(task_rows), "mismatches": int(tables[task].mismatch.sum()),
                                  "top": [r["key"] for r in task_rows[:top]]}
    if joint is not None:
        names = list(joint_rows[0]) if joint_rows else ["rank", "key"]
        columns = ["rank", "key", "source", *names[2:]]
        write_outliers_csv(out_dir / "outliers_joint.csv", joint_rows, sources, columns)
        plot_contact_sheet(out_dir / "outliers_joint.png", joint_rows[:top], images,
                           f"all heads: the {min(top, len(joint_rows))} most suspicious {split} paintings"
                           + (f" (painting | attention | Grad-CAM of {', '.join(joint.labels)})" if explained else ""),
                           caption=joint_caption, strips=strips(explained, list(joint.labels)) if explained else None)
        every_head_wrong = int((joint.mismatch_count == len(joint.labels)).sum())
        summary["joint"] = {"scored": len(joint_rows), "every_head_wrong": every_head_wrong,
                            "top": [r["key"] for r in joint_rows[:top]]}
    return summary
