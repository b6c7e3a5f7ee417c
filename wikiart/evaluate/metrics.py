"""Classification metrics on gathered arrays. Labels of -1 (missing) are never scored.

`headline_metrics` is what the trainer logs each validation; `evaluation_metrics` is the full
set evaluate.py reports. Top-k is computed here rather than with scikit-learn's
`top_k_accuracy_score`, which rejects 2-class heads given as (N, 2) scores.

Two populations, as in the seed notebooks: each head's own numbers use every painting that
has that head's label; the numbers across heads (joint exact match, the `mean_*` metrics and
a combined model's `loss`) use only the paintings labelled for *every* head (`joint_scored`).
The seed trains and validates `combined` on the three-way intersection, so its joint exact
match (68.18 %) and mean metrics (e.g. mean top-1 86.14 %) are over exactly such
paintings; ours are comparable with them (with `--combined-data union`, over the val paintings
that have all three labels). Metrics here are fractions (0.6818), the seed prints percentages.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _valid(labels: np.ndarray) -> np.ndarray:
    return labels >= 0


def joint_rows(labels: dict[str, np.ndarray]) -> np.ndarray:
    """Rows labelled for every head: the population of the cross-head metrics."""
    masks = [_valid(v) for v in labels.values()]
    return np.logical_and.reduce(masks) if masks else np.zeros(0, dtype=bool)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def cross_entropy(logits: np.ndarray, labels: np.ndarray, smoothing: float = 0.0) -> float:
    """Mean cross-entropy over labelled rows (nan when none is labelled).

    `smoothing` is torch's `CrossEntropyLoss(label_smoothing=...)`: the target is
    (1 - smoothing) * one-hot + smoothing / C. The seed validates with its training criterion,
    smoothing 0.03 included, so the trainer passes the run's smoothing to be comparable.
    """
    mask = _valid(labels)
    if not mask.any():
        return float("nan")
    logp = log_softmax(logits[mask].astype(np.float64))
    nll = -logp[np.arange(mask.sum()), labels[mask]]
    return float(((1.0 - smoothing) * nll - smoothing * logp.mean(axis=1)).mean())


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


def f1_scores(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> tuple[float, float]:
    """(macro F1, weighted F1) as scikit-learn's `f1_score(..., zero_division=0)`; nan when
    nothing is scored.

    Macro averages the classes that occur among the labels or predictions (scikit-learn's
    default, and the seed's): a class absent from both has no F1, and counting it as 0 would keep
    a perfect model below 1 on a split that lacks a rare class. Weighted F1 weighs by support,
    so absent classes weigh 0 either way. Computed from the counts here rather than with
    scikit-learn: the trainer validates every epoch, and importing scikit-learn costs each
    training process ~1.5 s (tests/unit/evaluate/test_metrics.py checks the two agree).
    """
    if len(y_true) == 0:
        return float("nan"), float("nan")
    support = np.bincount(y_true, minlength=num_classes)  # labels and predictions are < num_classes
    predicted = np.bincount(y_pred, minlength=num_classes)
    true_pos = np.bincount(y_true[y_true == y_pred], minlength=num_classes)
    seen = support + predicted > 0  # support + predicted = 2tp + fp + fn
    f1 = np.divide(2.0 * true_pos, support + predicted, out=np.zeros(num_classes), where=seen)
    return float(f1[seen].mean()), float((f1 * support).sum() / support.sum())


def head_scores(logits: np.ndarray, labels: np.ndarray, smoothing: float = 0.0) -> dict[str, float]:
    """loss, top1, top5, macro_f1, weighted_f1 and scored of one head, on its labelled rows."""
    mask = _valid(labels)
    macro, weighted = f1_scores(labels[mask], predicted_classes(logits[mask]), logits.shape[1])
    return {"loss": cross_entropy(logits, labels, smoothing), "top1": topk_accuracy(logits, labels, 1),
            "top5": topk_accuracy(logits, labels, 5), "macro_f1": macro, "weighted_f1": weighted,
            "scored": int(mask.sum())}


def joint_exact_match(logits: dict[str, np.ndarray], labels: dict[str, np.ndarray],
                      rows: np.ndarray | None = None) -> float:
    """Share of the paintings labelled for every head (or of `rows`, a subset of them) whose
    every head is right (the seed's joint exact match; nan when there is none)."""
    rows = joint_rows(labels) if rows is None else rows & joint_rows(labels)
    if not rows.any():
        return float("nan")
    right = np.ones(int(rows.sum()), dtype=bool)
    for t in logits:
        right &= predicted_classes(logits[t][rows]) == labels[t][rows]
    return float(right.mean())


MEAN_KEYS = ("top1", "top5", "macro_f1", "weighted_f1")


def combined_metrics(logits: dict[str, np.ndarray], labels: dict[str, np.ndarray],
                     smoothing: float = 0.0, rows: np.ndarray | None = None) -> dict[str, Any]:
    """The cross-head numbers of a multi-head model, all over the paintings labelled for every
    head (as the seed's `evaluate_metrics_multitask`, hence comparable with its 68.18 % joint
    exact match and 86.14 % mean top-1): `joint_scored` (how many), `joint_exact_match`,
    `mean_<m>` (each head's metric on those paintings, averaged over the heads) and `loss` (the
    SUM of the heads' cross-entropies, the seed's `style_loss + artist_loss + genre_loss`).
    `rows` narrows the population further (evaluate.py: the seed's intersection of the ArtGAN val
    files, `wikiart.data.census`).
    """
    rows = joint_rows(labels) if rows is None else rows & joint_rows(labels)
    per_head = {t: head_scores(logits[t][rows], labels[t][rows], smoothing) for t in logits}
    out: dict[str, Any] = {"joint_scored": int(rows.sum()),
                           "joint_exact_match": joint_exact_match(logits, labels, rows)}
    for key in MEAN_KEYS:
        out[f"mean_{key}"] = float(np.mean([m[key] for m in per_head.values()])) if rows.any() else float("nan")
    out["loss"] = float(sum(m["loss"] for m in per_head.values())) if rows.any() else float("nan")
    return out


def headline_metrics(logits: dict[str, np.ndarray], labels: dict[str, np.ndarray],
                     smoothing: float = 0.0) -> dict[str, float]:
    """The validation row the trainer logs (metrics.jsonl, console, trackers) and selects `best/`
    by (key `score`): what the seed notebooks print each epoch.

    Per head `<task>/loss` (cross-entropy with the run's label `smoothing`, as the seed's
    validation criterion), `/top1`, `/top5`, `/macro_f1`, `/weighted_f1`, `/scored`, on the
    head's labelled rows. Several heads add `combined_metrics` (joint exact match, the means and
    the summed `loss`, over the paintings labelled for every head). `score`: top-1 of a single
    head; for several heads the joint exact match, which the seed saves its best model by.
    Where no painting has every label, `loss` and `score` fall back to the per-head losses
    summed and the mean per-head top-1 (the val split fixes which, so a run never mixes them).
    """
    out: dict[str, float] = {}
    for t in logits:
        for key, value in head_scores(logits[t], labels[t], smoothing).items():
            out[f"{t}/{key}"] = value
    if len(logits) == 1:
        t = next(iter(logits))
        out["loss"], out["score"] = out[f"{t}/loss"], out[f"{t}/top1"]
        return out
    out.update(combined_metrics(logits, labels, smoothing))
    out["score"] = out["joint_exact_match"]
    if out["joint_scored"] == 0:
        losses = [out[f"{t}/loss"] for t in logits if np.isfinite(out[f"{t}/loss"])]
        out["loss"] = float(sum(losses)) if losses else float("nan")
        top1 = [out[f"{t}/top1"] for t in logits if np.isfinite(out[f"{t}/top1"])]
        out["score"] = float(np.mean(top1)) if top1 else float("nan")
    return out


# ---------------------------------------------------------------------------------------------
# Full evaluation metrics (evaluate.py). scikit-learn on the gathered arrays, always with
# labels=range(C), so a class absent from a split keeps its row, column and (zero) scores.
# ---------------------------------------------------------------------------------------------
def _nan_to_none(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def task_metrics(logits: np.ndarray, labels: np.ndarray, class_names: list[str],
                 smoothing: float = 0.0) -> dict[str, Any]:
    """Every number evaluate.py reports for one head, on its labelled rows.

    loss (cross-entropy; evaluate.py reports it without label smoothing, a property of the model
    alone, while the trainer's validation row uses the run's smoothing), top1/top5 (k capped by the
    class count; `top5_k` says which k), macro/weighted F1 (`f1_scores`), per-class
    precision/recall/F1/support, the confusion matrix (rows = true class) and the classification
    report text. NaN where nothing is labelled.
    """
    mask = _valid(labels)
    head = head_scores(logits, labels, smoothing)
    out: dict[str, Any] = {
        "scored": head["scored"], "missing": int(len(labels) - mask.sum()), "num_classes": len(class_names),
        "loss": head["loss"], "top1": head["top1"], "top5": head["top5"], "top5_k": min(5, len(class_names)),
        "macro_f1": head["macro_f1"], "weighted_f1": head["weighted_f1"],
    }
    y_true = labels[mask]
    y_pred = predicted_classes(logits[mask]) if mask.any() else y_true
    return {**out, **_label_scores(y_true, y_pred, list(class_names))}


def _label_scores(y_true: np.ndarray, y_pred: np.ndarray, names: list[str]) -> dict[str, Any]:
    """Per-class scores, confusion matrix and report; zeros when nothing is scored."""
    classes = list(range(len(names)))
    if len(y_true) == 0:  # scikit-learn refuses empty arrays
        zeros = {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
        return {"per_class": [{"class": n, **zeros} for n in names],
                "confusion": [[0] * len(names) for _ in names], "report": ""}
    from sklearn.metrics import classification_report, confusion_matrix, precision_recall_fscore_support

    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=classes, average=None, zero_division=0)
    per_class = [{"class": n, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(c)}
                 for n, p, r, f, c in zip(names, precision, recall, f1, support)]
    return {
        "per_class": per_class,
        "confusion": confusion_matrix(y_true, y_pred, labels=classes).tolist(),
        "report": classification_report(y_true, y_pred, labels=classes, target_names=names, digits=4,
                                        zero_division=0),
    }


def evaluation_metrics(logits: dict[str, np.ndarray], labels: dict[str, np.ndarray],
                       class_names: dict[str, list[str]], joint_population: np.ndarray | None = None
                       ) -> dict[str, Any]:
    """{"tasks": {task: task_metrics}, "combined": combined_metrics over `joint_population` (several
    heads only; default: every painting labelled for every head)}."""
    tasks = {t: task_metrics(logits[t], labels[t], class_names[t]) for t in logits}
    out: dict[str, Any] = {"tasks": tasks}
    if len(tasks) > 1:
        out["combined"] = combined_metrics(logits, labels, rows=joint_population)
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
