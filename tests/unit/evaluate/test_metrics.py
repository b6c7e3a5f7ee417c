"""Metrics against values computed by hand on small arrays."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from rich.console import Console
from sklearn.metrics import f1_score

from wikiart.evaluate.metrics import (combined_metrics, evaluation_metrics, headline_metrics, joint_exact_match, json_ready,
                             task_metrics, topk_accuracy)
from wikiart.train.runlog import epoch_table

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


def torch_ce(logits: np.ndarray, labels: np.ndarray, smoothing: float) -> float:
    """The seed's criterion, `CrossEntropyLoss(label_smoothing=...)`, on the labelled rows."""
    keep = labels >= 0
    return F.cross_entropy(torch.tensor(logits[keep], dtype=torch.float64), torch.tensor(labels[keep]),
                           label_smoothing=smoothing).item()


def test_validation_loss_uses_the_label_smoothing_as_the_seeds_criterion():
    head = headline_metrics({"genre": LOGITS}, {"genre": LABELS}, smoothing=0.03)
    assert head["genre/loss"] == pytest.approx(torch_ce(LOGITS, LABELS, 0.03), rel=1e-9)
    assert head["loss"] == head["genre/loss"]
    plain = headline_metrics({"genre": LOGITS}, {"genre": LABELS})["genre/loss"]
    assert plain == pytest.approx(hand_cross_entropy(), rel=1e-6)
    assert abs(head["genre/loss"] - plain) > 1e-3  # the smoothing is not dropped on the way


def test_headline_f1s_are_sklearns_on_the_labelled_rows():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(60, 7))
    labels = rng.choice([0, 1, 2, 3, -1], size=60)        # classes 4-6 never labelled, some predicted
    head = headline_metrics({"style": logits}, {"style": labels})
    keep = labels >= 0
    pred = logits[keep].argmax(axis=1)
    assert head["style/macro_f1"] == pytest.approx(f1_score(labels[keep], pred, average="macro"))
    assert head["style/weighted_f1"] == pytest.approx(f1_score(labels[keep], pred, average="weighted"))
    assert head["style/scored"] == int(keep.sum())
    full = task_metrics(logits, labels, [str(i) for i in range(7)])  # evaluate.py: the same numbers
    assert (full["macro_f1"], full["weighted_f1"]) == (head["style/macro_f1"], head["style/weighted_f1"])


@pytest.mark.parametrize("seed", range(6))
def test_f1_from_counts_equals_sklearns_f1_score(seed):
    """The trainer's F1s are counted by hand (no scikit-learn import per process): they equal
    `f1_score` with the seed's settings on random, perfect, constant and rare-class predictions."""
    from wikiart.evaluate.metrics import f1_scores

    rng = np.random.default_rng(seed)
    classes = int(rng.integers(2, 12))
    y_true = rng.integers(0, classes, size=int(rng.integers(1, 80)))
    cases = [rng.integers(0, classes, size=len(y_true)), y_true.copy(), np.zeros_like(y_true),
             np.where(rng.random(len(y_true)) < 0.8, y_true, classes - 1)]
    for y_pred in cases:
        seen = sorted(set(y_true.tolist()) | set(y_pred.tolist()))
        macro, weighted = f1_scores(y_true, y_pred, classes)
        assert macro == pytest.approx(f1_score(y_true, y_pred, labels=seen, average="macro", zero_division=0),
                                      abs=1e-12)
        assert weighted == pytest.approx(f1_score(y_true, y_pred, labels=list(range(classes)),
                                                  average="weighted", zero_division=0), abs=1e-12)
    assert f1_scores(y_true, y_true, classes) == (1.0, 1.0)


def one_hot_logits(pred: list[int], classes: int) -> np.ndarray:
    return np.eye(classes)[pred] * 2.0 + np.linspace(0.0, 0.1, classes)  # not one-hot-degenerate losses


# Five paintings: 0, 1 and 4 have every label. Row 1: artist wrong; row 2: no artist label
# (style and genre right); row 3: style wrong, no genre label; rows 0 and 4 all right.
COMBINED_LABELS = {"style": np.array([0, 1, 2, 0, 1]), "artist": np.array([0, 1, -1, 1, 0]),
                   "genre": np.array([1, 0, 1, -1, 0])}
COMBINED_LOGITS = {"style": one_hot_logits([0, 1, 2, 2, 1], 3), "artist": one_hot_logits([0, 0, 1, 1, 0], 2),
                   "genre": one_hot_logits([1, 0, 1, 0, 0], 2)}


def test_combined_numbers_use_only_the_paintings_with_every_label():
    """The seed's population: over rows 0, 1, 4 joint exact match is 2/3 (over every painting with a
    label it would be 3/5), mean top-1 (1 + 2/3 + 1) / 3 (per-head rows would give (4/5 + 3/4 + 1) / 3)."""
    head = headline_metrics(COMBINED_LOGITS, COMBINED_LABELS, smoothing=0.03)
    assert head["joint_scored"] == 3
    assert head["joint_exact_match"] == pytest.approx(2 / 3)
    assert head["score"] == head["joint_exact_match"]                 # best/ by joint exact match
    assert head["mean_top1"] == pytest.approx((1 + 2 / 3 + 1) / 3)
    assert head["mean_top5"] == 1.0
    rows = np.array([0, 1, 4])
    f1s = {avg: np.mean([f1_score(COMBINED_LABELS[t][rows], COMBINED_LOGITS[t][rows].argmax(1), average=avg)
                         for t in COMBINED_LABELS]) for avg in ("macro", "weighted")}
    assert head["mean_macro_f1"] == pytest.approx(f1s["macro"]) and f1s["macro"] < 1
    assert head["mean_weighted_f1"] == pytest.approx(f1s["weighted"])
    # the loss is the seed's sum of the three heads' smoothed losses, on the same rows
    expected = sum(torch_ce(COMBINED_LOGITS[t][rows], COMBINED_LABELS[t][rows], 0.03) for t in COMBINED_LABELS)
    assert head["loss"] == pytest.approx(expected, rel=1e-9)
    # each head's own numbers stay on its labelled rows
    assert head["style/top1"] == pytest.approx(4 / 5) and head["artist/top1"] == pytest.approx(3 / 4)
    assert head["genre/top1"] == 1.0 and head["artist/scored"] == 4 and head["genre/scored"] == 4
    assert head["artist/loss"] == pytest.approx(torch_ce(COMBINED_LOGITS["artist"], COMBINED_LABELS["artist"], 0.03))
    # evaluate.py reports the same combined numbers (its losses are unsmoothed)
    names = {"style": ["a", "b", "c"], "artist": ["p", "q"], "genre": ["u", "v"]}
    combined = evaluation_metrics(COMBINED_LOGITS, COMBINED_LABELS, names)["combined"]
    for key in ("joint_scored", "joint_exact_match", "mean_top1", "mean_top5", "mean_macro_f1", "mean_weighted_f1"):
        assert combined[key] == pytest.approx(head[key]), key
    assert combined["loss"] == pytest.approx(
        sum(torch_ce(COMBINED_LOGITS[t][rows], COMBINED_LABELS[t][rows], 0.0) for t in COMBINED_LABELS))


def test_without_a_fully_labelled_painting_the_score_falls_back_to_the_mean_top1():
    labels = {"artist": np.array([0, 1, -1]), "genre": np.array([-1, -1, 1])}
    logits = {"artist": one_hot_logits([0, 0, 1], 2), "genre": one_hot_logits([0, 0, 1], 2)}
    head = headline_metrics(logits, labels)
    assert head["joint_scored"] == 0 and math.isnan(head["joint_exact_match"]) and math.isnan(head["mean_top1"])
    assert head["score"] == pytest.approx((0.5 + 1.0) / 2)
    assert head["loss"] == pytest.approx(head["artist/loss"] + head["genre/loss"])
    assert math.isnan(combined_metrics(logits, labels)["loss"])


def test_single_head_has_no_combined_section_and_headline_keys_are_kept():
    assert "combined" not in evaluation_metrics({"genre": LOGITS}, {"genre": LABELS}, {"genre": NAMES})
    head = headline_metrics({"genre": LOGITS}, {"genre": LABELS})
    assert set(head) == {"genre/loss", "genre/top1", "genre/top5", "genre/macro_f1", "genre/weighted_f1",
                         "genre/scored", "score", "loss"}
    assert head["score"] == head["genre/top1"] == task_metrics(LOGITS, LABELS, NAMES)["top1"]


def test_the_epoch_table_shows_the_seeds_epoch_line():
    head = headline_metrics(COMBINED_LOGITS, COMBINED_LABELS, smoothing=0.03)
    console = Console(record=True, width=160)
    console.print(epoch_table(4, {"loss": 0.8551}, head))
    text = console.export_text()
    assert "epoch 4: train loss 0.8551" in text
    style_row = next(line for line in text.splitlines() if "style" in line)
    assert f"{head['style/loss']:.4f}" in style_row and "80.00%" in style_row and style_row.rstrip(" │").endswith("5")
    joint_row = next(line for line in text.splitlines() if "joint " in line and "│" in line)
    assert f"{head['loss']:.4f}" in joint_row and "88.89%" in joint_row   # summed loss, mean top-1
    assert "joint exact match 66.67%" in text
