"""Outlier scores: planted label errors rank first, on made-up embeddings and through evaluate.py."""

from __future__ import annotations

import collections
import csv
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wikiart.cli.evaluate import main as evaluate_main
from wikiart.formats.manifest import load_manifest, sha256_file
from wikiart.evaluate.outliers import class_centroids, joint_outlier_table, l2_normalize, outlier_table
from wikiart.evaluate.report import joint_caption, plot_contact_sheet, write_outliers_csv

ROOT = Path(__file__).resolve().parents[1]


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


# ---------------------------------------------------------------------------------------------
# Through evaluate.py --outliers: a model that separates genres, shards with planted swaps.
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def genre_run(synthetic_shards, tmp_path_factory) -> Path:
    """A genre model trained one epoch without MixUp/CutMix: ~90 % top-1 on the synthetic val."""
    out = tmp_path_factory.mktemp("genre") / "run"
    cmd = [sys.executable, str(ROOT / "train.py"), "--shards", str(synthetic_shards), "--out", str(out),
           "--task", "genre", "--epochs", "1", "--workers", "1", "--backbone", "resnet18",
           "--image-size", "32", "--batch-size", "8", "--proj-dim", "16", "--rnn-hidden", "16",
           "--rnn-layers", "1", "--shuffle-buffer", "50", "--no-progress", "--balance", "none",
           "--mixup-p", "0", "--cutmix-p", "0", "--erasing-p", "0", "--label-smoothing", "0",
           "--lr", "2e-3", "--backbone-lr", "1e-3", "--no-pretrained"]
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return out


def plant_swaps(src: Path, dst: Path, task: str, relabel: dict[str, int]) -> None:
    """Copy the shards, giving the val paintings in `relabel` (key -> class index) new labels."""
    shutil.copytree(src, dst)
    manifest = json.loads((src / "manifest.json").read_text())
    todo = dict(relabel)
    for shard in manifest["splits"]["val"]["shards"]:
        path = dst / shard["name"]
        with tarfile.open(src / shard["name"]) as tin, tarfile.open(path, "w") as tout:
            for info in tin:
                data = tin.extractfile(info).read()
                if info.name.endswith(".json") and json.loads(data)["key"] in todo:
                    meta = json.loads(data)
                    meta["labels"][task] = todo.pop(meta["key"])
                    data = json.dumps(meta).encode()
                info.size = len(data)
                tout.addfile(info, io.BytesIO(data))
        shard.update(bytes=path.stat().st_size, sha256=sha256_file(path))
    (dst / "manifest.json").write_text(json.dumps(manifest))
    assert not todo, f"keys not in the val split: {sorted(todo)}"


def outlier_rows(out: Path, task: str = "genre") -> list[dict[str, str]]:
    with (out / f"outliers_{task}.csv").open() as fh:
        return list(csv.DictReader(fh))


def typical_paintings(rows: list[dict[str, str]], n: int) -> list[dict[str, str]]:
    """For the n largest classes (well-estimated centroids), the correctly predicted painting
    closest to its class centroid."""
    sizes = collections.Counter(row["true"] for row in rows)
    chosen = []
    for name, _ in sizes.most_common(n):
        right = [r for r in rows if r["true"] == name and r["mismatch"] == "False"]
        chosen.append(max(right, key=lambda r: float(r["own_similarity"])))
    return chosen


@pytest.mark.slow
def test_evaluate_outliers_finds_planted_label_swaps(genre_run, synthetic_shards, tmp_path, capsys):
    common = ["--checkpoint", str(genre_run), "--outliers", "--batch-size", "16", "--workers", "0",
              "--outlier-top", "8"]
    clean = tmp_path / "clean"
    assert evaluate_main([*common, "--shards", str(synthetic_shards), "--out", str(clean),
                          "--centroids", "eval"]) == 0, capsys.readouterr().err
    classes = json.loads((synthetic_shards / "manifest.json").read_text())["classes"]["genre"]
    # Three typical paintings get each other's labels (a -> b -> c -> a): clear label errors.
    chosen = typical_paintings(outlier_rows(clean), 3)
    relabel = {row["key"]: classes.index(chosen[(i + 1) % 3]["true"]) for i, row in enumerate(chosen)}
    shards = tmp_path / "planted"
    plant_swaps(synthetic_shards, shards, "genre", relabel)
    load_manifest(shards)  # still a valid shard set
    out = tmp_path / "eval"
    assert evaluate_main([*common, "--shards", str(shards), "--out", str(out)]) == 0, capsys.readouterr().err
    rows = outlier_rows(out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(rows) == metrics["tasks"]["genre"]["scored"]
    assert [int(r["rank"]) for r in rows] == list(range(1, len(rows) + 1))
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    # All three planted swaps are in the reported top 8 of ~100 paintings (chance: ~3e-4). Not
    # necessarily the top 3: the small test model also misreads a few paintings of its own.
    assert set(relabel) <= {r["key"] for r in rows[:8]}, [(r["key"], r["mismatch"], r["score"]) for r in rows[:10]]
    for row in (r for r in rows[:8] if r["key"] in relabel):
        assert row["mismatch"] == "True" and float(row["margin"]) < 0
        assert row["true"] == classes[relabel[row["key"]]] and row["source"].startswith("synthetic:")
    assert metrics["outliers"]["centroids"] == "train"
    assert set(relabel) <= set(metrics["outliers"]["tasks"]["genre"]["top"])
    assert "joint" not in metrics["outliers"] and not (out / "outliers_joint.csv").exists()  # one head
    with Image.open(out / "outliers_genre.png") as sheet:
        assert 600 <= sheet.width <= 4000 and 300 <= sheet.height <= 4000
