"""Synthetic mini-WikiArt: deterministic, fast, imbalanced, with learnable artist/genre/style."""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from wikiart.formats.labels import ARTGAN_ARTISTS, ARTGAN_GENRES, STYLES
from wikiart.prep.sources import SyntheticSource
from wikiart.prep.synthetic import class_names, make_painting, render_array


def test_painting_depends_only_on_seed_and_index():
    a = render_array(make_painting(7, seed=3, max_side=80))
    assert np.array_equal(a, render_array(make_painting(7, seed=3, max_side=80)))
    assert not np.array_equal(a, render_array(make_painting(7, seed=4, max_side=80)))
    small, large = SyntheticSource(50, seed=1).index(), SyntheticSource(200, seed=1).index()
    assert [(r.key, r.labels) for r in small] == [(r.key, r.labels) for r in large[:len(small)]]


def test_class_names_are_real_wikiart_names():
    names = class_names(8, 6, 6)
    assert set(names["artist"]) <= set(ARTGAN_ARTISTS) and len(names["artist"]) == 8
    assert set(names["genre"]) <= set(ARTGAN_GENRES) and len(names["genre"]) == 6
    assert set(names["style"]) <= set(STYLES) and len(names["style"]) == 6
    with pytest.raises(ValueError, match="--synthetic-genres"):
        class_names(8, 11, 6)


def test_sizes_imbalance_and_missing_labels():
    paintings = [make_painting(i) for i in range(1500)]
    sides = [max(p.width, p.height) for p in paintings]
    assert max(sides) <= 1500 and min(sides) >= 900
    assert any(p.width > p.height for p in paintings) and any(p.height > p.width for p in paintings)
    for task, n in (("artist", 8), ("genre", 6), ("style", 6)):
        counts = Counter(dict(p.labels)[task] for p in paintings)
        missing = counts.pop(-1, 0)
        assert len(counts) == n
        assert max(counts.values()) >= 2 * min(counts.values()), f"{task} should be imbalanced"
        assert missing > 0, f"some paintings lack a {task} label"
    assert sum(dict(p.labels)["artist"] == -1 for p in paintings) > 100


def test_render_is_fast_at_256_px():
    paintings = [make_painting(i, max_side=256) for i in range(40)]
    times = []
    for p in paintings:
        start = time.perf_counter()
        p.render()
        times.append(time.perf_counter() - start)
    assert np.median(times) < 0.020


def _augment(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Random-resized crop (70-100 % area), flip and hue jitter 0.03, like the training transform."""
    w, h = img.size
    scale = np.sqrt(rng.uniform(0.7, 1.0))
    cw, ch = int(w * scale), int(h * scale)
    x0, y0 = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
    img = img.crop((x0, y0, x0 + cw, y0 + ch)).resize((48, 48), Image.Resampling.BILINEAR)
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    hsv = np.asarray(img.convert("HSV")).copy()
    hsv[..., 0] = (hsv[..., 0].astype(int) + int(rng.uniform(-0.03, 0.03) * 255)) % 256
    return Image.fromarray(hsv, "HSV").convert("RGB")


def _features(img: Image.Image) -> dict[str, np.ndarray]:
    hsv = np.asarray(img.convert("HSV")).astype(np.float32) / 255
    coloured = hsv[..., 1] > 0.15
    angle = 2 * np.pi * hsv[..., 0]
    hue = np.array([np.cos(angle)[coloured].mean(), np.sin(angle)[coloured].mean()]) if coloured.any() else np.zeros(2)
    gray = np.asarray(img.convert("L")).astype(np.float32) / 255
    layout = np.asarray(Image.fromarray(gray).resize((8, 8), Image.Resampling.BOX))
    layout = (layout + layout[:, ::-1]) / 2   # flip-invariant composition
    dx, dy = np.abs(np.diff(gray, axis=1)).mean(), np.abs(np.diff(gray, axis=0)).mean()
    diag = np.abs(gray[1:, 1:] - gray[:-1, :-1]).mean()
    blur = np.asarray(Image.fromarray(gray).resize((12, 12), Image.Resampling.BOX).resize((48, 48)))
    texture = np.array([dx, dy, diag, np.abs(gray - blur).mean(), dx / (dy + 1e-6)])
    return {"artist": hue, "genre": layout.ravel(), "style": texture}


def _nearest_centroid_accuracy(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    keep = y >= 0
    x, y = x[keep], y[keep]
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    cut = int(len(y) * 0.7)
    centroids = np.stack([x[:cut][y[:cut] == c].mean(0) for c in range(y.max() + 1)])
    pred = np.argmin(((x[cut:, None, :] - centroids[None]) ** 2).sum(-1), axis=1)
    return float((pred == y[cut:]).mean()), float(np.bincount(y[cut:]).max() / len(y[cut:]))


def test_labels_are_visible_through_augmentation():
    """Even hand-made features + nearest centroid read the labels off augmented images,
    so a CNN has strong signals: palette -> artist, layout -> genre, texture -> style."""
    rng = np.random.default_rng(0)
    paintings = [make_painting(i, max_side=128) for i in range(500)]
    feats = [_features(_augment(p.render(), rng)) for p in paintings]
    for task, floor in (("artist", 0.9), ("genre", 0.6), ("style", 0.45)):
        x = np.stack([f[task] for f in feats])
        y = np.array([dict(p.labels)[task] for p in paintings])
        accuracy, majority = _nearest_centroid_accuracy(x, y)
        assert accuracy >= floor and accuracy >= 1.3 * majority, (task, accuracy, majority)
    genre_acc, genre_majority = _nearest_centroid_accuracy(
        np.stack([f["genre"] for f in feats]), np.array([dict(p.labels)["genre"] for p in paintings]))
    assert genre_acc >= 2 * genre_majority
