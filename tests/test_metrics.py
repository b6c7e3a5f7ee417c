"""Metrics against values computed by hand on small arrays."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from wikiart.metrics import (combined_metrics, evaluation_metrics, headline_metrics, joint_exact_match, json_ready,
                             task_metrics, topk_accuracy)

NAMES = ["a", "b", "c", "d"]  # class "d" never occurs, neither as a label nor as a prediction
# Rows: true labels with one missing (-1); argmax predictions 0, 1, 1, 1, 0, (2).
LOGITS = np.array([[3.0, 1.0, 0.0, -1.0],
                   [1.0, 3.0, 0.0, -1.0],
                   [0.0, 3.0, 1.0, -1.0],
                   [0.0, 2.0, 1.0, -1.0],
                   [2.0, 1.0, 0.0, -1.0],
                   [0.0, 0.0, 5.0, -1.0]], dtype=np.float32)
LABELS = np.array([0, 0, 1, 1, 2, -1])


def hand_cross_entropy() -> float:
    total = 0.0
    for row, y in zip(LOGITS[:5].tolist(), LABELS[:5].tolist()):
        total += math.log(sum(math.exp(v) for v in row)) - row[y]
    return total / 5


def test_task_metrics_match_hand_computed_values():
    m = task_metrics(LOGITS, LABELS, NAMES)
    assert m["scored"] == 5 and m["missing"] == 1
    assert m["top1"] == pytest.approx(3 / 5)              # rows 0, 2, 3 right
    assert m["top5"] == 1.0 and m["top5_k"] == 4          # k capped at 4 classes
    assert m["loss"] == pytest.approx(hand_cross_entropy(), rel=1e-6)
    # a: TP 1, FP 1 (row 4), FN 1 -> P = R = F1 = 0.5;  b: TP 2, FP 1 (row 1) -> P 2/3, R 1, F1 0.8
    # c: one sample, never predicted -> 0;  d: absent -> 0 with zero_division=0
    per_class = {row["class"]: row for row in m["per_class"]}
    assert [per_class[c]["support"] for c in NAMES] == [2, 2, 1, 0]
    assert per_class["a"]["precision"] == pytest.approx(0.5) and per_class["a"]["recall"] == pytest.approx(0.5)
    assert per_class["b"]["precision"] == pytest.approx(2 / 3) and per_class["b"]["recall"] == 1.0
    assert per_class["b"]["f1"] == pytest.approx(0.8)
    assert per_class["c"]["recall"] == 0.0 and per_class["d"]["f1"] == 0.0
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 0) / 3)  # d: no label, no prediction: not averaged
    assert m["weighted_f1"] == pytest.approx((0.5 * 2 + 0.8 * 2 + 0 * 1) / 5)
    assert m["confusion"] == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    for name in NAMES:  # the report lists every class, absent ones included
        assert name in m["report"]


def test_a_perfect_model_has_macro_f1_one_on_a_split_missing_a_class():
    logits = np.array([[0.9, 0.1, 0.0], [0.1, 0.9, 0.0], [0.8, 0.2, 0.0]])
    m = task_metrics(logits, np.array([0, 1, 0]), ["a", "b", "rare"])
    assert m["macro_f1"] == 1.0 and m["weighted_f1"] == 1.0
    assert [row["support"] for row in m["per_class"]] == [2, 1, 0]


def test_topk_counts_ties_and_caps_k():
    assert topk_accuracy(LOGITS, LABELS, 2) == pytest.approx(4 / 5)   # row 4: top-2 is {a, b}, true c
    assert topk_accuracy(LOGITS, LABELS, 3) == 1.0
    two = np.array([[0.2, 0.8], [0.9, 0.1], [0.3, 0.7]])
    m = task_metrics(two, np.array([0, 0, 1]), ["x", "y"])  # 2 classes: no sklearn binary pitfall
    assert m["top1"] == pytest.approx(2 / 3) and m["top5"] == 1.0 and m["top5_k"] == 2


def test_a_nan_logit_ranks_last_in_top1_the_confusion_matrix_and_joint_match_alike():
    """A diverged head's NaN must not be a prediction in one number and not in the others."""
    logits = np.array([[np.nan, 1.0, 0.0], [np.nan, 0.0, 1.0], [2.0, 1.0, 0.0]], dtype=np.float32)
    labels = np.array([1, 0, 0])
    m = task_metrics(logits, labels, NAMES[:3])
    assert m["top1"] == pytest.approx(2 / 3)  # rows predict 1, 2, 0
    assert np.trace(np.asarray(m["confusion"])) == 2
    assert np.asarray(m["confusion"])[0].tolist() == [1, 0, 1]  # true 0: once 2 (not the NaN class 0), once 0
    assert joint_exact_match({"genre": logits}, {"genre": labels}) == pytest.approx(2 / 3)


def test_a_head_without_labels_scores_nothing_and_serialises_as_null():
    m = task_metrics(LOGITS, np.full(6, -1), NAMES)
    assert m["scored"] == 0 and math.isnan(m["top1"]) and math.isnan(m["macro_f1"])
    assert m["confusion"] == [[0] * 4 for _ in range(4)]
    text = json.dumps(json_ready(m), allow_nan=False)  # strict JSON: NaN became null
    assert json.loads(text)["top1"] is None


def test_combined_joint_exact_match_skips_missing_labels():
    logits = {"artist": np.eye(2)[[0, 1, 0, 0]] * 3.0, "genre": np.eye(3)[[1, 0, 1, 0]] * 3.0}
    labels = {"artist": np.array([0, 1, -1, 1]), "genre": np.array([1, -1, -1, 0])}
    # row 0: both right; row 1: artist right, genre missing; row 2: no labels (skipped);
    # row 3: artist wrong -> 2 of 3 scored rows
    result = evaluation_metrics(logits, labels, {"artist": ["p", "q"], "genre": ["u", "v", "w"]})
    combined = result["combined"]
    assert combined["joint_exact_match"] == pytest.approx(2 / 3) and combined["joint_scored"] == 3
    assert result["tasks"]["artist"]["top1"] == pytest.approx(2 / 3)
    assert result["tasks"]["genre"]["top1"] == 1.0
    assert combined["mean_top1"] == pytest.approx((2 / 3 + 1.0) / 2)
    assert result["tasks"]["artist"]["scored"] == 3 and result["tasks"]["genre"]["scored"] == 2


def test_combined_means_ignore_a_head_without_labels():
    per_task = {"artist": {"top1": 0.5, "top5": 1.0, "macro_f1": 0.4, "weighted_f1": 0.6},
                "genre": {"top1": float("nan"), "top5": float("nan"), "macro_f1": float("nan"),
                          "weighted_f1": float("nan")}}
    labels = {"artist": np.array([0, 1]), "genre": np.array([-1, -1])}
    logits = {"artist": np.array([[1.0, 0.0], [1.0, 0.0]]), "genre": np.zeros((2, 2))}
    out = combined_metrics(per_task, logits, labels)
    assert out["mean_top1"] == 0.5 and out["mean_macro_f1"] == 0.4


def test_single_head_has_no_combined_section_and_headline_keys_are_kept():
    assert "combined" not in evaluation_metrics({"genre": LOGITS}, {"genre": LABELS}, {"genre": NAMES})
    head = headline_metrics({"genre": LOGITS}, {"genre": LABELS})
    assert set(head) == {"genre/loss", "genre/top1", "genre/top5", "genre/scored", "score", "loss"}
    assert head["score"] == head["genre/top1"] == task_metrics(LOGITS, LABELS, NAMES)["top1"]
