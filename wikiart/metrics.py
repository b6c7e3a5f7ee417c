"""Classification metrics on gathered arrays. Labels of -1 (missing) are never scored.

`headline_metrics` is what the trainer logs each validation; `evaluation_metrics` is the full
set evaluate.py reports. Top-k is computed here rather than with scikit-learn's
`top_k_accuracy_score`, which rejects 2-class heads given as (N, 2) scores.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _valid(labels: np.ndarray) -> np.ndarray:
    return labels >= 0


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean cross-entropy over labelled rows (nan when none is labelled)."""
    mask = _valid(labels)
    if not mask.any():
        return float("nan")
    logp = log_softmax(logits[mask].astype(np.float64))
    return float(-logp[np.arange(mask.sum()), labels[mask]].mean())


def predicted_classes(logits: np.ndarray) -> np.ndarray:
    """The top-ranked class of each row, as topk_accuracy ranks them: a NaN logit ranks last (not
    first, as argmax has it), so top-1, the confusion matrix and the F1s tell the same story."""
    return np.where(np.isnan(logits), -np.inf, logits).argmax(axis=1)


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Top-k accuracy over labelled rows; k is capped by the number of classes."""
    mask = _valid(labels)
    if not mask.any():
        return float("nan")
    k = min(k, logits.shape[1])
    topk = np.argsort(-logits[mask], axis=1, kind="stable")[:, :k]
    return float((topk == labels[mask][:, None]).any(axis=1).mean())


def joint_exact_match(logits: dict[str, np.ndarray], labels: dict[str, np.ndarray]) -> float:
    """Share of paintings whose every labelled task is predicted right (rows with no label skipped)."""
    tasks = list(logits)
    n = len(labels[tasks[0]])
    right = np.ones(n, dtype=bool)
    any_label = np.zeros(n, dtype=bool)
    for t in tasks:
        mask = _valid(labels[t])
        pred = predicted_classes(logits[t])
        right &= ~mask | (pred == labels[t])
        any_label |= mask
    return float(right[any_label].mean()) if any_label.any() else float("nan")


def headline_metrics(logits: dict[str, np.ndarray], labels: dict[str, np.ndarray]) -> dict[str, float]:
    """The validation numbers the trainer logs and selects `best/` by (key `score`)."""
    out: dict[str, float] = {}
    for t in logits:
        out[f"{t}/loss"] = cross_entropy(logits[t], labels[t])
        out[f"{t}/top1"] = topk_accuracy(logits[t], labels[t], 1)
        out[f"{t}/top5"] = topk_accuracy(logits[t], labels[t], 5)
        out[f"{t}/scored"] = int(_valid(labels[t]).sum())
    if len(logits) > 1:
        out["joint_exact_match"] = joint_exact_match(logits, labels)
        out["mean_top1"] = float(np.nanmean([out[f"{t}/top1"] for t in logits]))
        out["score"] = out["mean_top1"]
    else:
        out["score"] = out[f"{next(iter(logits))}/top1"]
    out["loss"] = float(np.nanmean([out[f"{t}/loss"] for t in logits]))
    return out


# ---------------------------------------------------------------------------------------------
# Full evaluation metrics (evaluate.py). scikit-learn on the gathered arrays, always with
# labels=range(C), so a class absent from a split keeps its row, column and (zero) scores.
# ---------------------------------------------------------------------------------------------
def _nan_to_none(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def task_metrics(logits: np.ndarray, labels: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    """Every number evaluate.py reports for one head, on its labelled rows.

    loss (cross-entropy), top1/top5 (k capped by the class count; `top5_k` says which k),
    macro/weighted F1, per-class precision/recall/F1/support, the confusion matrix
    (rows = true class) and the classification report text. NaN where nothing is labelled.
    """
    mask = _valid(labels)
    out: dict[str, Any] = {
        "scored": int(mask.sum()), "missing": int(len(labels) - mask.sum()), "num_classes": len(class_names),
        "loss": cross_entropy(logits, labels),
        "top1": topk_accuracy(logits, labels, 1),
        "top5": topk_accuracy(logits, labels, 5), "top5_k": min(5, len(class_names)),
    }
    y_true = labels[mask]
    y_pred = predicted_classes(logits[mask]) if mask.any() else y_true
    return {**out, **_label_scores(y_true, y_pred, list(class_names))}


def _label_scores(y_true: np.ndarray, y_pred: np.ndarray, names: list[str]) -> dict[str, Any]:
    """F1s, per-class scores, confusion matrix and report; zeros/NaN when nothing is scored."""
    classes = list(range(len(names)))
    if len(y_true) == 0:  # scikit-learn refuses empty arrays
        zeros = {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
        return {"macro_f1": float("nan"), "weighted_f1": float("nan"),
                "per_class": [{"class": n, **zeros} for n in names],
                "confusion": [[0] * len(names) for _ in names], "report": ""}
    # Imported here: scikit-learn takes seconds to import and training never needs it.
    from sklearn.metrics import classification_report, confusion_matrix, f1_score, precision_recall_fscore_support

    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=classes, average=None, zero_division=0)
    per_class = [{"class": n, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(c)}
                 for n, p, r, f, c in zip(names, precision, recall, f1, support)]
    # Macro F1 averages the classes that occur among the labels or predictions (scikit-learn's
    # default): a class absent from both has no F1, and counting it as 0 would keep a perfect
    # model below 1 on a split that lacks a rare class. Per-class rows still list every class.
    seen = sorted(set(y_true.tolist()) | set(y_pred.tolist()))
    return {
        "macro_f1": float(f1_score(y_true, y_pred, labels=seen, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(y_true, y_pred, labels=classes, average="weighted", zero_division=0)),
        "per_class": per_class,
        "confusion": confusion_matrix(y_true, y_pred, labels=classes).tolist(),
        "report": classification_report(y_true, y_pred, labels=classes, target_names=names, digits=4,
                                        zero_division=0),
    }


def combined_metrics(per_task: dict[str, dict[str, Any]], logits: dict[str, np.ndarray],
                     labels: dict[str, np.ndarray]) -> dict[str, Any]:
    """Across heads: joint exact match (every labelled task right) and the mean of each metric."""
    any_label = np.zeros(len(next(iter(labels.values()))), dtype=bool)
    for t in labels:
        any_label |= _valid(labels[t])
    out: dict[str, Any] = {"joint_exact_match": joint_exact_match(logits, labels),
                           "joint_scored": int(any_label.sum())}
    for key in ("top1", "top5", "macro_f1", "weighted_f1"):
        values = [per_task[t][key] for t in per_task if np.isfinite(per_task[t][key])]
        out[f"mean_{key}"] = float(np.mean(values)) if values else float("nan")
    return out


def evaluation_metrics(logits: dict[str, np.ndarray], labels: dict[str, np.ndarray],
                       class_names: dict[str, list[str]]) -> dict[str, Any]:
    """{"tasks": {task: task_metrics}, "combined": ... (several heads only)}."""
    tasks = {t: task_metrics(logits[t], labels[t], class_names[t]) for t in logits}
    out: dict[str, Any] = {"tasks": tasks}
    if len(tasks) > 1:
        out["combined"] = combined_metrics(tasks, logits, labels)
    return out


def json_ready(value: Any) -> Any:
    """Metrics as strict JSON: NaN/inf -> null, numpy scalars -> Python numbers."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return _nan_to_none(float(value))
    if isinstance(value, np.integer):
        return int(value)
    return value
