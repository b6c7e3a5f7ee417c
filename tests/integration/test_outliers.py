"""evaluate.py --outliers on a genre run trained by train.py finds the label swaps planted in its
shards (the scoring itself: tests/unit/evaluate/test_outliers.py)."""

from __future__ import annotations

import collections
import csv
import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from tests.support.training import run_train
from wikiart.cli.evaluate import main as evaluate_main
from wikiart.formats.manifest import load_manifest, sha256_file


# ---------------------------------------------------------------------------------------------
# Through evaluate.py --outliers: a model that separates genres, shards with planted swaps.
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def genre_run(synthetic_shards, tmp_path_factory) -> Path:
    """A genre model trained one epoch without MixUp/CutMix: ~90 % top-1 on the synthetic val."""
    out = tmp_path_factory.mktemp("genre") / "run"
    run_train(["--shards", str(synthetic_shards), "--out", str(out), "--task", "genre", "--epochs", "1",
               "--workers", "1", "--backbone", "resnet18", "--image-size", "32", "--batch-size", "8",
               "--proj-dim", "16", "--rnn-hidden", "16", "--rnn-layers", "1", "--shuffle-buffer", "50",
               "--no-progress", "--balance", "none", "--mixup-p", "0", "--cutmix-p", "0", "--erasing-p", "0",
               "--label-smoothing", "0", "--lr", "2e-3", "--backbone-lr", "1e-3", "--no-pretrained"])
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
