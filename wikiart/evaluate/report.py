"""What evaluate.py leaves behind: metrics.json, text reports, CSVs, PNGs and rich tables.

Plots use matplotlib's object API (`Figure`, no pyplot): no global state, no display needed.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from rich.console import Console
from rich.table import Table

from ..formats import files
from .metrics import json_ready


def write_json(path: Path, data: Any) -> None:
    """Strict JSON (NaN -> null), written atomically."""
    files.write_json(path, json_ready(data), ensure_ascii=True, allow_nan=False)


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def write_classification_report(path: Path, task: str, m: Mapping[str, Any], split: str,
                                checkpoint: str) -> None:
    """sklearn's classification report with a header saying what was scored."""
    lines = [f"checkpoint: {checkpoint}", f"split: {split}   task: {task}",
             f"scored: {m['scored']} paintings ({m['missing']} without a {task} label are not scored)",
             f"loss {_fmt(m['loss'])}   top-1 {_fmt(m['top1'])}   top-{m['top5_k']} {_fmt(m['top5'])}   "
             f"macro F1 {_fmt(m['macro_f1'])}   weighted F1 {_fmt(m['weighted_f1'])}", "",
             m["report"] or "(no labelled paintings)"]
    path.write_text("\n".join(lines).rstrip() + "\n")


def write_per_class_recall(path: Path, m: Mapping[str, Any]) -> None:
    """One row per class in class order: recall first, then precision, F1, support, correct."""
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["class_index", "class", "recall", "precision", "f1", "support", "correct"])
        for i, row in enumerate(m["per_class"]):
            writer.writerow([i, row["class"], f"{row['recall']:.6f}", f"{row['precision']:.6f}",
                             f"{row['f1']:.6f}", row["support"], m["confusion"][i][i]])


def confusion_layout(num_classes: int) -> tuple[float, float, bool]:
    """(cell size in inches, tick font size, annotate cells) for a readable heat map."""
    if num_classes <= 15:
        return 0.55, 9.0, True
    if num_classes <= 40:
        return 0.36, 7.0, num_classes <= 30
    return 0.24, 5.5, False


def plot_confusion(path: Path, confusion: Sequence[Sequence[int]], class_names: Sequence[str],
                   title: str) -> None:
    """Row-normalised confusion heat map (recall on the diagonal); size and font scale with C."""
    from matplotlib.figure import Figure

    cm = np.asarray(confusion, dtype=np.float64)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    n = len(class_names)
    cell, font, annotate = confusion_layout(n)
    side = 2.0 + cell * n
    fig = Figure(figsize=(side + 1.2, side), dpi=100)
    ax = fig.add_subplot()
    image = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks(range(n), labels=list(class_names), rotation=90, fontsize=font)
    ax.set_yticks(range(n), labels=list(class_names), fontsize=font)
    ax.set_xlabel("predicted class", fontsize=font + 2)
    ax.set_ylabel("true class", fontsize=font + 2)
    ax.set_title(title, fontsize=font + 3)
    if annotate:
        for i, j in zip(*np.nonzero(norm >= 0.005)):
            ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=font - 1.5,
                    color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02).ax.tick_params(labelsize=font)
    fig.savefig(path, bbox_inches="tight")


OUTLIER_COLUMNS = ["rank", "key", "source", "true", "predicted", "confidence", "true_probability",
                   "own_similarity", "nearest_other", "other_similarity", "margin", "mismatch", "score"]


def write_outliers_csv(path: Path, rows: Sequence[Mapping[str, Any]], sources: Mapping[str, str],
                       columns: Sequence[str] = OUTLIER_COLUMNS) -> None:
    """The ranked outlier rows with each painting's source path (`columns`: the CSV's header)."""
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            out = {**row, "source": sources.get(row["key"], "")}
            for key, value in out.items():
                if isinstance(value, float):
                    out[key] = "" if not math.isfinite(value) else f"{value:.6f}"
            writer.writerow(out)


TILE = 224          # contact sheet: image box in pixels
CAPTION_LINES = 4
LINE_HEIGHT = 15


def _caption(row: Mapping[str, Any]) -> list[str]:
    return [f"#{row['rank']} {row['key']}", f"true: {row['true']}",
            f"pred: {row['predicted']} ({row['confidence']:.2f})",
            f"score {row['score']:.2f}  sim {_fmt(row['own_similarity'], 2)}  margin {_fmt(row['margin'], 2)}"]


def joint_caption(row: Mapping[str, Any]) -> list[str]:
    """Caption of a joint-ranking row: per task "task: true -> predicted (p_true)"."""
    tasks = [k[:-len("_p_true")] for k in row if k.endswith("_p_true")]
    return [f"#{row['rank']} {row['key']}",
            f"score {row['combined_outlier_score']:.2f}  wrong {row['mismatch_count']}/{len(tasks)}",
            *(f"{t}: {row[f'{t}_true']} -> {row[f'{t}_predicted']} ({row[f'{t}_p_true']:.2f})" for t in tasks)]


def plot_contact_sheet(path: Path, rows: Sequence[Mapping[str, Any]], images: Mapping[str, bytes],
                       title: str, columns: int = 6,
                       caption: Callable[[Mapping[str, Any]], list[str]] = _caption,
                       strips: Mapping[str, Any] | None = None) -> None:
    """The top-ranked paintings with true/predicted class and scores; mismatches captioned in red.
    `strips` (key -> a PIL image TILE high: painting | attention | Grad-CAM, from
    wikiart.evaluate.explain_report) replace the thumbnails; their cells are as wide as they are.

    Drawn with Pillow (a grid of thumbnails): a matplotlib figure of 24 images takes seconds.
    """
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=12)
    box_w = max([TILE, *(s.width for s in (strips or {}).values())])
    cols = max(1, min(columns if box_w == TILE else max(1, columns * TILE // box_w), len(rows)))
    lines = max(1, math.ceil(len(rows) / cols))
    caption_lines = max([CAPTION_LINES, *(len(caption(row)) for row in rows)])
    cell_w, cell_h = box_w + 16, TILE + 12 + caption_lines * LINE_HEIGHT
    sheet = Image.new("RGB", (max(cols * cell_w, 480), 36 + lines * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((8, 10), title, fill="black", font=ImageFont.load_default(size=16))
    for i, row in enumerate(rows):
        x, y = (i % cols) * cell_w + 8, 36 + (i // cols) * cell_h
        _paste_tile(sheet, draw, (x, y), images.get(row["key"]), (strips or {}).get(row["key"]))
        colour = "crimson" if row.get("mismatch") or row.get("mismatch_count") else "black"
        for j, text in enumerate(caption(row)):
            draw.text((x, y + TILE + 4 + j * LINE_HEIGHT), _clip(draw, text, font, box_w + 8), fill=colour, font=font)
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    files.write_bytes(path, buffer.getvalue())


def _paste_tile(sheet, draw, at: tuple[int, int], data: bytes | None, strip) -> None:
    """A cell's picture: its strip, else the painting's thumbnail, else an empty frame."""
    from PIL import Image, ImageOps

    x, y = at
    if strip is not None:
        sheet.paste(strip, (x, y))
    elif data is not None:
        with Image.open(io.BytesIO(data)) as img:
            thumb = ImageOps.contain(img.convert("RGB"), (TILE, TILE))  # shrinks or enlarges
        sheet.paste(thumb, (x + (TILE - thumb.width) // 2, y + (TILE - thumb.height) // 2))
    else:
        draw.rectangle((x, y, x + TILE - 1, y + TILE - 1), outline="grey")


def _clip(draw, text: str, font, width: int) -> str:
    """Shorten `text` with an ellipsis until it fits `width` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def headline_table(results: Mapping[str, Any], split: str) -> Table:
    """One row per head (+ the means and joint exact match of a multi-head model, over the
    paintings labelled for every head)."""
    table = Table(title=f"{split} metrics")
    for name in ("task", "scored", "loss", "top-1", "top-5", "macro F1", "weighted F1"):
        table.add_column(name, justify="left" if name == "task" else "right")
    for task, m in results["tasks"].items():
        top5 = _fmt(m["top5"]) + ("" if m["top5_k"] == 5 else f" (k={m['top5_k']})")
        table.add_row(task, str(m["scored"]), _fmt(m["loss"]), _fmt(m["top1"]), top5,
                      _fmt(m["macro_f1"]), _fmt(m["weighted_f1"]))
    combined = results.get("combined")
    if combined:
        table.add_row("mean", "", "", _fmt(combined["mean_top1"]), _fmt(combined["mean_top5"]),
                      _fmt(combined["mean_macro_f1"]), _fmt(combined["mean_weighted_f1"]))
        table.caption = (f"joint exact match (every head right) {_fmt(combined['joint_exact_match'])}; it and the "
                         f"mean row are over the {combined['joint_scored']} paintings labelled for every head")
    return table


def worst_classes(m: Mapping[str, Any], n: int) -> list[dict[str, Any]]:
    """The n classes with the lowest recall among those with support, and what they become."""
    cm = np.asarray(m["confusion"])
    out = []
    for i, row in enumerate(m["per_class"]):
        if row["support"] == 0:
            continue
        wrong = cm[i].copy()
        wrong[i] = 0
        confused = int(wrong.argmax()) if wrong.any() else -1
        out.append({**row, "confused_with": m["per_class"][confused]["class"] if confused >= 0 else "",
                    "confused_count": int(wrong.max()) if wrong.any() else 0})
    return sorted(out, key=lambda r: (r["recall"], -r["support"], r["class"]))[:n]


def worst_table(task: str, m: Mapping[str, Any], n: int) -> Table:
    table = Table(title=f"{task}: worst {n} classes by recall")
    for name in ("class", "recall", "precision", "F1", "support", "most often predicted as"):
        table.add_column(name, justify="left" if name in ("class", "most often predicted as") else "right")
    for row in worst_classes(m, n):
        confused = f"{row['confused_with']} ({row['confused_count']})" if row["confused_with"] else ""
        table.add_row(row["class"], _fmt(row["recall"], 3), _fmt(row["precision"], 3), _fmt(row["f1"], 3),
                      str(row["support"]), confused)
    return table


def print_summary(console: Console, results: Mapping[str, Any], split: str, worst: int) -> None:
    """Rich tables: headline metrics, then the worst classes of every head."""
    console.print(headline_table(results, split))
    for task, m in results["tasks"].items():
        if m["scored"]:
            console.print(worst_table(task, m, min(worst, m["num_classes"])))
