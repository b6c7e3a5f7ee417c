"""Shared fixtures. `synthetic_shards`: a small synthetic shard set for loader/training tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests never reach the network: `datasets` and the hub client stay offline.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="session")
def synthetic_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of ~400 train + ~100 val synthetic samples (short side <= 64 px, long side <= 96),
    8 train and 4 val shards, with manifest.json. Built once per session, in-process (~2 s)."""
    from wikiart.prep.synthetic import build_synthetic_shards

    out = tmp_path_factory.mktemp("synthetic_shards")
    manifest = build_synthetic_shards(out, n=500, short_side=64, seed=0, max_side=96, val_frac=0.2,
                                      min_shards=8, min_val_shards=4, workers=0)
    assert len(manifest.splits["train"].shards) >= 8 and len(manifest.splits["val"].shards) >= 4
    return out


@pytest.fixture(scope="session")
def trained_run(synthetic_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run directory of a tiny `combined` model (3 heads) trained 20 steps by train.py on
    `synthetic_shards`: checkpoints/step-00000020/ and best/ hold the same weights. ~20 s."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = tmp_path_factory.mktemp("trained") / "run"
    cmd = [sys.executable, str(root / "train.py"), "--shards", str(synthetic_shards), "--out", str(out),
           "--task", "combined", "--epochs", "1", "--max-steps", "20", "--workers", "1",
           "--backbone", "resnet18", "--image-size", "32", "--batch-size", "8", "--proj-dim", "16",
           "--rnn-hidden", "16", "--rnn-layers", "1", "--shuffle-buffer", "50", "--no-progress",
           "--balance", "none", "--no-pretrained"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return out


# ----------------------------------------------------------------------------------------------
# A small ArtGAN download in the real, quirky format (used by test_sources and test_shards)
# ----------------------------------------------------------------------------------------------
ARTGAN_IMAGES = {  # letter -> relative path
    "A": "Impressionism/claude-monet_water-lilies.jpg",
    "B": "Impressionism/claude-monet_haystacks.jpg",
    "C": "Post_Impressionism/vincent-van-gogh_ears-of-wheat-1890(1).jpg",
    "D": "Realism/ivan-shishkin_forest.jpg",
    "E": "Baroque/rembrandt_night-watch.jpg",
    "F": "Cubism/pablo-picasso_guitar,-glass.jpg",
    "G": "Realism/ivan-shishkin_rye.jpg",
    "H": "Impressionism/claude-monet_poplars.jpg",
    "I": "Baroque/rembrandt_self-portrait.jpg",
    "J": "Post_Impressionism/vincent-van-gogh_irises.jpg",
}
# (task, split) -> [(letter, label)]; labels index the built-in ArtGAN lists.
ARTGAN_ROWS = {
    ("artist", "train"): [("A", 4), ("C", 22), ("D", 10), ("F", 15), ("I", 20), ("J", 22)],
    ("artist", "val"): [("B", 4), ("E", 20)],
    ("genre", "train"): [("A", 4), ("B", 4), ("D", 4), ("F", 9), ("G", 4), ("I", 6), ("J", 9)],
    ("genre", "val"): [("C", 4), ("E", 6), ("C", 4)],   # the real genre_val.csv repeats one path
    ("style", "train"): [("A", 12), ("B", 12), ("C", 20), ("F", 7), ("G", 21), ("I", 4), ("J", 20)],
    ("style", "val"): [("D", 21), ("E", 4), ("H", 12)],
}
ARTGAN_TRAIN, ARTGAN_VAL = set("AFGIJ"), set("BCDEH")   # B, C, D are val of one task, train of another


def write_artgan(root: Path, rows: dict | None = None, image_size: tuple[int, int] = (40, 30)) -> tuple[Path, Path]:
    """Write an image tree and split files as the ArtGAN download has them; returns (images, csvs)."""
    import numpy as np
    from PIL import Image

    images, csvs = root / "wikiart", root / "csv"
    csvs.mkdir(parents=True, exist_ok=True)
    for i, (letter, rel) in enumerate(sorted(ARTGAN_IMAGES.items())):
        path = images / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = np.full((image_size[1], image_size[0], 3), (i * 25, 255 - i * 25, 128), np.uint8)
        Image.fromarray(pixels).save(path, "JPEG", quality=90)
    for (task, split), entries in (ARTGAN_ROWS if rows is None else rows).items():
        if task == "artist":  # no extension, header line, blank line, ",," separator
            text = "(Path to image),, (Groundtruth class)\n\n" + "".join(
                f"{ARTGAN_IMAGES[k]},,{label}\n" for k, label in entries)
            (csvs / f"artist_{split}").write_text(text)
        else:
            text = "".join(f"{ARTGAN_IMAGES[k]},{label}\n" for k, label in entries)
            (csvs / f"{task}_{split}.csv").write_text(text)
    return images, csvs


@pytest.fixture
def artgan(tmp_path: Path) -> tuple[Path, Path]:
    """(images_root, csv_dir) of a 10-image ArtGAN download in the real quirky format."""
    return write_artgan(tmp_path)
