"""Outlier scores: planted label errors rank first, on made-up embeddings and through evaluate.py."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

from wikiart.evaluate.outliers import class_centroids, joint_outlier_table, l2_normalize, outlier_table
from wikiart.evaluate.report import joint_caption, plot_contact_sheet, write_outliers_csv


def clustered(seed: int = 0, per_class: int = 30, dim: int = 16, classes: int = 4):
    """Embeddings in tight clusters, logits that follow the embedding, labels = the cluster."""
    rng = np.random.default_rng(seed)
    centres = l2_normalize(rng.normal(size=(classes, dim)))
    labels = np.repeat(np.arange(classes), per_class)
    emb = centres[labels] * 3.0 + rng.normal(scale=0.25, size=(len(labels), dim))
    logits = 4.0 * l2_normalize(emb) @ centres.T
    keys = [f"k{i:04d}" for i in range(len(labels))]
    return keys, emb, labels, logits


def test_centroids_are_normalised_class_means_of_normalised_rows():
    emb = np.array([[2.0, 0.0], [0.0, 5.0], [0.0, -1.0], [9.0, 9.0]])
    labels = np.array([0, 0, 2, -1])                      # class 1 absent, last row unlabelled
    cents, present = class_centroids(emb, labels, 3)
    assert present.tolist() == [True, False, True]
    np.testing.assert_allclose(cents[0], [2 ** -0.5, 2 ** -0.5])  # mean of (1,0) and (0,1), renormalised
    np.testing.assert_allclose(cents[2], [0.0, -1.0])
    np.testing.assert_allclose(cents[1], [0.0, 0.0])


def test_planted_label_swaps_rank_first():
    keys, emb, labels, logits = clustered()
    planted = [5, 40, 77, 100]
    noisy = labels.copy()
    noisy[planted] = (labels[planted] + 1) % 4           # the painting looks like class y, says y+1
    cents, present = class_centroids(emb, noisy, 4)
    table = outlier_table(keys, emb, noisy, logits, cents, present)
    assert set(table.keys[:4]) == {keys[i] for i in planted}
    assert table.mismatch[:4].all() and (table.margin[:4] < 0).all()
    assert (table.margin[4:] > 0).all() and not table.mismatch[4:].any()
    assert np.all(np.diff(table.score) <= 0)              # sorted most suspicious first
    rows = table.rows(["w", "x", "y", "z"])
    first = rows[0]
    i = keys.index(first["key"])
    assert first["true"] == "wxyz"[noisy[i]] and first["predicted"] == "wxyz"[labels[i]]
    assert first["nearest_other"] == first["predicted"]


def test_unlabelled_rows_are_skipped_and_a_class_without_centroid_still_scores():
    keys, emb, labels, logits = clustered(per_class=10, classes=3)
    labels = labels.copy()
    labels[[0, 1]] = -1
    cents, present = class_centroids(emb, np.where(labels == 2, -1, labels), 3)  # no class-2 centroid
    table = outlier_table(keys, emb, labels, logits, cents, present)
    assert len(table) == len(keys) - 2 and "k0000" not in table.keys
    no_centroid = table.labels == 2
    assert np.isnan(table.own_sim[no_centroid]).all() and np.isfinite(table.score).all()


# The joint ranking (several heads). Logits = log-probabilities, so softmax gives them back.
# key: (artist label, artist probs), (style label, style probs or raw logits)
JOINT = {
    "a": (0, [0.9, 0.1], 0, [0.8, 0.1, 0.1]),   # 1-p: 0.1, 0.2  -> 0.15, 0 wrong
    "b": (0, [0.3, 0.7], 1, [0.2, 0.5, 0.3]),   # 0.7 (wrong), 0.5 -> 0.60, 1 wrong
    "c": (1, [0.6, 0.4], 2, [0.2, 0.6, 0.2]),   # 0.6 (wrong), 0.8 (wrong) -> 0.70, 2 wrong
    "f": (0, [0.3, 0.7], 1, [0.2, 0.5, 0.3]),   # exactly b's numbers: after b by key
    "g": (-1, [0.5, 0.5], 0, [0.01, 0.98, 0.01]),  # no artist label: not ranked, though it would lead
}
# d and e have equal scores (tied logits; the first of tied classes is predicted): e has both
# heads wrong, d none, so e ranks first despite its later key.
TIED = {"d": (0, 0), "e": (1, 1)}


def joint_case():
    keys, labels, logits = [], {"artist": [], "style": []}, {"artist": [], "style": []}
    for key, (artist, p_artist, style, p_style) in JOINT.items():
        keys.append(key)
        labels["artist"].append(artist), labels["style"].append(style)
        logits["artist"].append(np.log(p_artist)), logits["style"].append(np.log(p_style))
    for key, (artist, style) in TIED.items():
        keys.append(key)
        labels["artist"].append(artist), labels["style"].append(style)
        logits["artist"].append([0.0, 0.0]), logits["style"].append([1.0, 1.0, -1.0])
    return keys, {t: np.array(v) for t, v in labels.items()}, {t: np.array(v) for t, v in logits.items()}


def test_joint_ranking_is_the_mean_of_one_minus_the_true_class_probability():
    keys, labels, logits = joint_case()
    table = joint_outlier_table(keys, labels, logits)
    assert table.keys == ["c", "b", "f", "e", "d", "a"]
    tied = (0.5 + 1.0 - 1.0 / (2.0 + np.exp(-2.0))) / 2     # artist 1 - 0.5, style 1 - e/(2e + 1/e)
    np.testing.assert_allclose(table.score, [0.7, 0.6, 0.6, tied, tied, 0.15], rtol=1e-9)
    assert table.mismatch_count.tolist() == [2, 1, 1, 2, 0, 0]
    rows = table.rows({"artist": ["p", "q"], "style": ["x", "y", "z"]})
    assert rows[0] == {"rank": 1, "key": "c", "artist_true": "q", "artist_predicted": "p",
                       "artist_p_true": pytest.approx(0.4), "artist_mismatch": True, "style_true": "z",
                       "style_predicted": "y", "style_p_true": pytest.approx(0.2), "style_mismatch": True,
                       "combined_outlier_score": pytest.approx(0.7), "mismatch_count": 2}
    assert rows[1]["artist_mismatch"] and not rows[1]["style_mismatch"]


def test_joint_table_csv_and_contact_sheet(tmp_path):
    keys, labels, logits = joint_case()
    rows = joint_outlier_table(keys, labels, logits).rows({"artist": ["p", "q"], "style": ["x", "y", "z"]})
    columns = ["rank", "key", "source", *list(rows[0])[2:]]
    write_outliers_csv(tmp_path / "joint.csv", rows, {"c": "wikiart/c.jpg"}, columns)
    with (tmp_path / "joint.csv").open() as fh:
        written = list(csv.DictReader(fh))
    assert [r["key"] for r in written] == ["c", "b", "f", "e", "d", "a"]
    assert written[0]["source"] == "wikiart/c.jpg" and written[0]["combined_outlier_score"] == "0.700000"
    assert written[0]["style_p_true"] == "0.200000" and written[0]["mismatch_count"] == "2"
    assert joint_caption(rows[0])[2:] == ["artist: q -> p (0.40)", "style: z -> y (0.20)"]
    plot_contact_sheet(tmp_path / "joint.png", rows[:4], {}, "joint", caption=joint_caption)
    with Image.open(tmp_path / "joint.png") as sheet:
        assert sheet.size[0] == 4 * (224 + 16)
