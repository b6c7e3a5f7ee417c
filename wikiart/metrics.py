"""Classification metrics on gathered arrays. Labels of -1 (missing) are never scored."""

from __future__ import annotations

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
        pred = logits[t].argmax(axis=1)
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
