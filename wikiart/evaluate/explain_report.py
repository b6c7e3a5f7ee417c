"""evaluate.py's pictures of where the model looked (ours, all off by default):

    --explain-worst N     explain_worst_<task>.png: per task the N most confident mistakes
    --explain-outliers    the outlier contact sheets show the overlays beside each painting
    --card-gallery N      gallery/<key>.png for the split's first N paintings (by key), which
                          --push-to-hub adds to the model card

Each cell shows the painting as the model saw it, the attention map (shared by the heads) and
Grad-CAM of the predicted class (wikiart.model.explain), so a curator sees at a glance whether
the label or the model is wrong. Only the main process runs this, after the other ranks are
done: a few dozen paintings re-read from the shards and explained one small batch at a time.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..config.options import DataConfig, EvalConfig
from ..data.device import Normalizer, eval_images
from ..data.transforms import build_eval_transform
from ..formats import files
from ..formats.images import decode_rgb
from ..model.explain import Explanation, explain
from .explain_plot import render_explanation, strip
from .metrics import log_softmax
from .outliers import JointOutlierTable, OutlierTable
from .report import TILE, plot_contact_sheet
from .score import EvalOutputs

GALLERY_DIR = "gallery"
BATCH = 16


@dataclasses.dataclass
class Explained:
    """One painting: the crop the model saw (S, S, 3) uint8 and its row `index` in `expl`."""
    crop: np.ndarray
    expl: Explanation
    index: int


def wanted(cfg: EvalConfig) -> bool:
    return bool(cfg.explain_worst or cfg.card_gallery or (cfg.explain_outliers and cfg.outliers))


def confident_mistakes(out: EvalOutputs, class_names: Mapping[str, Sequence[str]], n: int) -> dict[str, list[dict]]:
    """Per task, the n labelled paintings predicted wrong with the highest confidence, as
    contact-sheet rows (rank, key, true, predicted, confidence, mismatch); ties by key."""
    rows: dict[str, list[dict]] = {}
    for task, logits in out.logits.items():
        labels = out.labels[task]
        probs = np.exp(log_softmax(logits.astype(np.float64)))
        predicted, confidence = probs.argmax(axis=1), probs.max(axis=1)
        wrong = np.flatnonzero((labels >= 0) & (predicted != labels))
        order = sorted(wrong, key=lambda i: (-confidence[i], out.keys[i]))[:n]
        names = class_names[task]
        rows[task] = [{"rank": r + 1, "key": out.keys[i], "true": names[int(labels[i])],
                       "predicted": names[int(predicted[i])], "confidence": float(confidence[i]),
                       "true_probability": float(probs[i, labels[i]]), "mismatch": True}
                      for r, i in enumerate(order)]
    return rows


def mistake_caption(row: Mapping[str, Any]) -> list[str]:
    return [f"#{row['rank']} {row['key']}", f"true: {row['true']} ({row['true_probability']:.2f})",
            f"pred: {row['predicted']} ({row['confidence']:.2f})"]


def outlier_keys(tables: Mapping[str, OutlierTable], joint: JointOutlierTable | None, top: int) -> set[str]:
    """The paintings on the outlier contact sheets."""
    keys = {k for table in tables.values() for k in table.keys[:top]}
    return keys | (set(joint.keys[:top]) if joint is not None else set())


def explain_paintings(model: torch.nn.Module, jpegs: Mapping[str, bytes], data_cfg: DataConfig,
                      device: torch.device) -> dict[str, Explained]:
    """The maps of every painting in `jpegs` (key -> shard JPEG bytes), through the eval transform."""
    transform = build_eval_transform(data_cfg)
    normalize = Normalizer(model.mean, model.std)
    keys = sorted(jpegs)
    crops = {k: transform(np.asarray(decode_rgb(jpegs[k], min_side=transform.decode_size))) for k in keys}
    found: dict[str, Explained] = {}
    for start in range(0, len(keys), BATCH):
        chunk = keys[start:start + BATCH]
        images = torch.stack([crops[k] for k in chunk]).permute(0, 3, 1, 2)
        expl = explain(model, eval_images(images, device, normalize))
        found.update({k: Explained(crops[k].numpy(), expl, i) for i, k in enumerate(chunk)})
    return found


def strips(explained: Mapping[str, Explained], tasks: Sequence[str]) -> dict[str, Any]:
    """key -> the painting | attention | Grad-CAM of `tasks` strip of a contact-sheet cell."""
    return {k: strip(e.crop, e.expl, e.index, tasks, TILE) for k, e in explained.items()}


def write_worst_sheets(out_dir: Path, rows: Mapping[str, list[dict]], explained: Mapping[str, Explained],
                       split: str) -> dict[str, list[str]]:
    """explain_worst_<task>.png per task; returns {task: keys} for metrics.json."""
    for task, task_rows in rows.items():
        plot_contact_sheet(out_dir / f"explain_worst_{task}.png", task_rows, {},
                           f"{task}: the {len(task_rows)} most confident mistakes on {split} "
                           f"(painting | attention | Grad-CAM of the prediction)",
                           caption=mistake_caption,
                           strips=strips({r["key"]: explained[r["key"]] for r in task_rows}, [task]))
    return {task: [r["key"] for r in task_rows] for task, task_rows in rows.items()}


def gallery_keys(out: EvalOutputs, n: int) -> list[str]:
    return sorted(out.keys)[:n]


def gallery_name(key: str) -> str:
    """The repo path of a painting's gallery picture (a key is made safe as a file name)."""
    return f"{GALLERY_DIR}/{re.sub(r'[^A-Za-z0-9_.-]', '_', key)}.png"


def render_gallery(keys: Sequence[str], explained: Mapping[str, Explained],
                   class_names: Mapping[str, Sequence[str]]) -> dict[str, bytes]:
    """gallery/<key>.png -> PNG bytes of each painting's full picture (panels and top classes)."""
    return {gallery_name(key): render_explanation(explained[key].crop, explained[key].expl, explained[key].index,
                                                  class_names, title=key)
            for key in keys}


def write_gallery(out_dir: Path, gallery: Mapping[str, bytes]) -> None:
    """Replace --out's gallery/ with `gallery` (no PNG of an earlier evaluation stays beside it)."""
    shutil.rmtree(out_dir / GALLERY_DIR, ignore_errors=True)
    if gallery:
        (out_dir / GALLERY_DIR).mkdir(parents=True, exist_ok=True)
    for name, data in gallery.items():
        files.write_bytes(out_dir / name, data)
