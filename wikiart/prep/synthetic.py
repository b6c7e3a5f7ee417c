"""A procedural mini-WikiArt: paintings whose artist, genre and style can be learned from pixels.

- artist -> palette: each artist owns a hue (and, past 12 artists, a pastel or deep tier);
  hues are >= 30 degrees apart, so a hue jitter of 0.03 (11 degrees) cannot swap artists.
- genre  -> composition: horizon and sun, a central figure on a dark ground, a skyline,
  fruit on a table, ... large shapes that survive a 70 % random-resized crop and a flip.
- style  -> brush texture: dabs, dots, facets, cross-hatching, horizontal or vertical
  streaks, ... sized relative to the canvas, so they survive downscaling to 48-64 px, and
  mirror-symmetric as a set, so a horizontal flip keeps the class.

Classes are imbalanced (Zipf-like), artists prefer some styles, and a few paintings lack
a label (-1) to exercise masking. Painting `i` depends only on (seed, i): a larger dataset
contains the smaller one. Rendering is vectorised numpy (~5 ms at 256 px).
"""

from __future__ import annotations

import colorsys
import dataclasses
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

from ..formats.labels import ARTGAN_ARTISTS, MISSING

ARTIST_NAMES: tuple[str, ...] = ("Claude_Monet", "Vincent_van_Gogh", "Pablo_Picasso", "Rembrandt",
                                 "Salvador_Dali", "Edgar_Degas", "Paul_Cezanne", "Marc_Chagall") + tuple(
    a for a in ARTGAN_ARTISTS if a not in ("Claude_Monet", "Vincent_van_Gogh", "Pablo_Picasso", "Rembrandt",
                                           "Salvador_Dali", "Edgar_Degas", "Paul_Cezanne", "Marc_Chagall"))
GENRE_NAMES: tuple[str, ...] = ("landscape", "portrait", "cityscape", "still_life", "abstract_painting",
                                "religious_painting", "genre_painting", "nude_painting", "sketch_and_study",
                                "illustration")
STYLE_NAMES: tuple[str, ...] = ("Impressionism", "Realism", "Pointillism", "Cubism", "Expressionism",
                                "Baroque", "Romanticism", "Art_Nouveau", "Ukiyo_e", "Minimalism")
MISSING_RATE = {"artist": 0.12, "genre": 0.06, "style": 0.03}
ZIPF = 0.7          # class frequency ~ (rank + 1) ** -ZIPF
STYLE_LOYALTY = 0.4  # chance that a painting is in its artist's preferred style


@dataclasses.dataclass(frozen=True)
class SyntheticPainting:
    """Everything needed to render one painting; small and picklable (sent to workers)."""
    index: int
    seed: int
    width: int
    height: int
    artist: int
    genre: int
    style: int
    n_artists: int
    labels: tuple[tuple[str, int], ...]   # what the manifest records (-1 = missing)

    def render(self) -> Image.Image:
        return Image.fromarray(render_array(self), "RGB")


def class_names(n_artists: int = 8, n_genres: int = 6, n_styles: int = 6) -> dict[str, list[str]]:
    """Real WikiArt class names used by a synthetic set of this size."""
    for name, n, pool in (("artists", n_artists, ARTIST_NAMES), ("genres", n_genres, GENRE_NAMES),
                          ("styles", n_styles, STYLE_NAMES)):
        if not 2 <= n <= len(pool):
            raise ValueError(f"--synthetic-{name}: {n} must be between 2 and {len(pool)}")
    return {"artist": list(ARTIST_NAMES[:n_artists]), "genre": list(GENRE_NAMES[:n_genres]),
            "style": list(STYLE_NAMES[:n_styles])}


def _zipf(n: int) -> np.ndarray:
    p = (np.arange(n) + 1.0) ** -ZIPF
    return p / p.sum()


def make_painting(index: int, seed: int = 0, n_artists: int = 8, n_genres: int = 6, n_styles: int = 6,
                  max_side: int = 1500) -> SyntheticPainting:
    """Sample the labels and size of painting `index` (cheap; rendering happens later)."""
    rng = np.random.default_rng([seed, index, 0])
    artist = int(rng.choice(n_artists, p=_zipf(n_artists)))
    genre = int(rng.choice(n_genres, p=_zipf(n_genres)))
    style = artist % n_styles if rng.random() < STYLE_LOYALTY else int(rng.choice(n_styles, p=_zipf(n_styles)))
    aspect = float(np.exp(rng.uniform(-0.45, 0.45)))
    aspect *= {"landscape": 1.25, "portrait": 0.8}.get(GENRE_NAMES[genre], 1.0)
    long_side = max(16, round(max_side * rng.uniform(0.6, 1.0)))
    short_side = max(12, round(long_side / max(aspect, 1 / aspect)))
    width, height = (long_side, short_side) if aspect >= 1 else (short_side, long_side)
    labels = {"artist": artist, "genre": genre, "style": style}
    for task, rate in MISSING_RATE.items():
        if rng.random() < rate:
            labels[task] = MISSING
    return SyntheticPainting(index=index, seed=seed, width=width, height=height, artist=artist, genre=genre,
                             style=style, n_artists=n_artists, labels=tuple(labels.items()))


# ----------------------------------------------------------------------------------------------
# Palette (artist)
# ----------------------------------------------------------------------------------------------
def palette(artist: int, n_artists: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Five role colours in the artist's hue, with a little per-painting variation."""
    hues_per_tier = min(n_artists, 12)
    hue = (artist % hues_per_tier) / hues_per_tier + rng.uniform(-0.01, 0.01)
    sat, val = ((0.75, 0.8), (0.4, 0.95))[(artist // 12) % 2]
    sat = float(np.clip(sat + rng.uniform(-0.06, 0.06), 0.2, 1.0))
    val = float(np.clip(val + rng.uniform(-0.06, 0.06), 0.3, 1.0))

    def hsv(h: float, s: float, v: float) -> np.ndarray:
        return np.array(colorsys.hsv_to_rgb(h % 1.0, min(s, 1.0), min(v, 1.0)), dtype=np.float32)

    return {"bg": hsv(hue, sat * 0.45, 0.92), "main": hsv(hue, sat, val * 0.8),
            "dark": hsv(hue, sat * 0.9, 0.28), "accent": hsv(hue + 0.07, sat, val),
            "light": hsv(hue + 0.03, sat * 0.3, 1.0)}


# ----------------------------------------------------------------------------------------------
# Composition (genre). Coordinates are normalised: y, x in [0, 1], shapes are soft masks.
# ----------------------------------------------------------------------------------------------
def _paint(canvas: np.ndarray, mask: np.ndarray, color: np.ndarray) -> None:
    canvas += mask[..., None] * (color - canvas)


def _ellipse(y: np.ndarray, x: np.ndarray, cy: float, cx: float, ry: float, rx: float,
             edge: float = 12.0) -> np.ndarray:
    d = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2
    return np.clip((1.0 - d) * edge, 0.0, 1.0)


def _above(values: np.ndarray, threshold: np.ndarray | float, edge: float = 200.0) -> np.ndarray:
    return np.clip((values - threshold) * edge + 0.5, 0.0, 1.0)


def _landscape(c, y, x, p, rng):
    c[:] = p["light"] + y[..., None] * (p["bg"] - p["light"])
    horizon = rng.uniform(0.55, 0.65) + 0.03 * np.sin(2 * np.pi * (x * rng.uniform(1, 2.5) + rng.random()))
    _paint(c, _above(y, horizon), p["main"])
    _paint(c, _ellipse(y, x, horizon.mean() - 0.3, rng.uniform(0.25, 0.75), 0.08, 0.08), p["accent"])


def _portrait(c, y, x, p, rng):
    c[:] = p["dark"]
    cx = 0.5 + rng.uniform(-0.04, 0.04)
    _paint(c, _ellipse(y, x, 1.0, cx, 0.5, 0.4), p["main"])
    _paint(c, _ellipse(y, x, 0.38, cx, 0.22, 0.17), p["light"])


def _cityscape(c, y, x, p, rng):
    c[:] = p["light"]
    n = int(rng.integers(5, 9))
    heights = rng.uniform(0.3, 0.75, size=n)
    column = np.minimum((x * n).astype(int), n - 1)
    roof = 1.0 - heights[column]
    _paint(c, _above(y, roof), p["dark"])
    shade = (column % 2 == 0).astype(np.float32) * _above(y, roof)
    _paint(c, shade * 0.6, p["main"])


def _still_life(c, y, x, p, rng):
    c[:] = p["main"]
    table = rng.uniform(0.6, 0.68)
    _paint(c, _above(y, table), p["dark"])
    for cx in np.linspace(0.3, 0.7, int(rng.integers(3, 5))):
        r = rng.uniform(0.08, 0.11)
        _paint(c, _ellipse(y, x, table - r * 0.6, cx + rng.uniform(-0.03, 0.03), r, r), p["accent"])


def _abstract(c, y, x, p, rng):
    c[:] = p["bg"]
    roles = ["main", "dark", "accent", "light"]
    for i in range(int(rng.integers(8, 12))):
        color = p[roles[i % 4]]
        cy, cx, sy, sx = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.08, 0.25), rng.uniform(0.08, 0.25)
        if i % 2:
            _paint(c, _ellipse(y, x, cy, cx, sy, sx), color)
        else:
            _paint(c, _above(sy - np.abs(y - cy), 0) * _above(sx - np.abs(x - cx), 0), color)


def _religious(c, y, x, p, rng):
    c[:] = p["dark"]
    _paint(c, _ellipse(y, x, 0.68, 0.5, 0.4, 0.15), p["main"])
    ring = _ellipse(y, x, 0.24, 0.5, 0.14, 0.14) * (1 - _ellipse(y, x, 0.24, 0.5, 0.09, 0.09))
    _paint(c, ring, np.clip(p["accent"] * 1.4, 0, 1))
    _paint(c, _ellipse(y, x, 0.26, 0.5, 0.07, 0.07), p["light"])


def _genre_painting(c, y, x, p, rng):
    c[:] = p["bg"]
    _paint(c, _above(y, 0.55), p["main"])
    for _ in range(int(rng.integers(5, 9))):
        _paint(c, _ellipse(y, x, rng.uniform(0.6, 0.8), rng.uniform(0.08, 0.92), 0.1, 0.035), p["dark"])


def _nude(c, y, x, p, rng):
    c[:] = p["main"]
    _paint(c, _above(y, 0.72), p["dark"])
    _paint(c, _ellipse(y, x, 0.6, 0.5, 0.12, 0.42), p["light"])


def _sketch(c, y, x, p, rng):
    c[:] = 0.35 * p["bg"] + 0.65
    for _ in range(int(rng.integers(4, 7))):
        curve = rng.uniform(0.15, 0.85) + 0.12 * np.sin(2 * np.pi * (x * rng.uniform(0.5, 2) + rng.random()))
        _paint(c, np.clip(1 - np.abs(y - curve) * 90, 0, 1) * 0.9, p["dark"])


def _illustration(c, y, x, p, rng):
    c[:] = p["dark"]
    inner = _above(0.45 - np.abs(y - 0.5), 0) * _above(0.45 - np.abs(x - 0.5), 0)
    _paint(c, inner, p["bg"])
    _paint(c, _above(0.2 - np.abs(y - 0.5), 0) * _above(0.2 - np.abs(x - 0.5), 0), p["accent"])


COMPOSITIONS: dict[str, Callable[..., None]] = {
    "landscape": _landscape, "portrait": _portrait, "cityscape": _cityscape, "still_life": _still_life,
    "abstract_painting": _abstract, "religious_painting": _religious, "genre_painting": _genre_painting,
    "nude_painting": _nude, "sketch_and_study": _sketch, "illustration": _illustration,
}


# ----------------------------------------------------------------------------------------------
# Texture (style): a field in about [-1, 1] that modulates brightness. Scales are fractions
# of the shorter side `s`, so a texture is still a few pixels wide after resizing to 48 px.
# ----------------------------------------------------------------------------------------------
def _noise(rng: np.random.Generator, h: int, w: int, cell_y: float, cell_x: float,
           resample: Image.Resampling = Image.Resampling.BILINEAR) -> np.ndarray:
    small = rng.uniform(-1, 1, size=(max(2, round(h / cell_y)), max(2, round(w / cell_x)))).astype(np.float32)
    return np.asarray(Image.fromarray(small, "F").resize((w, h), resample))


def _texture(style: str, h: int, w: int, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    s = min(h, w)
    yy, xx = np.ogrid[:h, :w]
    if style == "Impressionism":
        return _noise(rng, h, w, s / 18, s / 18), 0.35
    if style == "Realism":
        vignette = ((yy / h - 0.5) ** 2 + (xx / w - 0.5) ** 2) * -3.0 + 0.3
        return (vignette + 0.3 * _noise(rng, h, w, s / 3, s / 3)).astype(np.float32), 0.25
    if style == "Pointillism":
        period = s / 16
        fy, fx = (yy % period) / period - 0.5, (xx % period) / period - 0.5
        dots = (fy ** 2 + fx ** 2) < 0.35 ** 2
        return np.where(dots, -0.6 + 0.4 * _noise(rng, h, w, period, period, Image.Resampling.NEAREST), 0.8), 0.45
    if style == "Cubism":
        cell = s / 6
        blocks = _noise(rng, h, w, cell, cell, Image.Resampling.NEAREST)
        tri = np.where((yy % cell) > (xx % cell), 0.6, -0.6)
        return np.clip(blocks + tri, -1, 1), 0.4
    if style == "Expressionism":
        period, u, v = s / 9, (xx + yy), (xx - yy)
        lines = np.maximum(np.abs(np.cos(np.pi * u / period)), np.abs(np.cos(np.pi * v / period))) ** 6
        return (lines * 2 - 1).astype(np.float32), -0.4
    if style == "Baroque":  # vertical streaks in chiaroscuro
        dark = ((xx / w - 0.5) ** 2 + (yy / h - 0.45) ** 2) * -4.0
        return (_noise(rng, h, w, s / 3, s / 28) + dark).astype(np.float32), 0.35
    if style == "Romanticism":  # horizontal streaks
        return _noise(rng, h, w, s / 28, s / 3), 0.35
    if style == "Art_Nouveau":
        cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
        r = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
        return np.sin(2 * np.pi * r / (s / 10)).astype(np.float32), 0.3
    return np.zeros((h, w), np.float32), 0.0  # Ukiyo_e and Minimalism are handled as filters


def _finish(canvas: np.ndarray, style: str) -> np.ndarray:
    if style == "Ukiyo_e":  # flat colour fields with dark outlines about 1/60 of the canvas wide
        canvas = np.round(canvas * 3) / 3
        lum = canvas.mean(axis=2)
        edges = (np.abs(np.diff(lum, axis=0, prepend=lum[:1])) + np.abs(np.diff(lum, axis=1, prepend=lum[:, :1]))) > 0.05
        h, w = lum.shape
        step = max(1, min(h, w) // 60)
        thick = Image.fromarray(edges.astype(np.uint8) * 255).resize((max(1, w // step), max(1, h // step)),
                                                                       Image.Resampling.BOX)
        canvas[np.asarray(thick.resize((w, h), Image.Resampling.BILINEAR)) > 10] *= 0.2
    elif style == "Minimalism":  # low contrast, flat
        canvas = 0.55 * canvas + 0.45 * canvas.mean(axis=(0, 1))
    return canvas


def render_array(p: SyntheticPainting) -> np.ndarray:
    """Render a painting to an (H, W, 3) uint8 array."""
    rng = np.random.default_rng([p.seed, p.index, 1])
    h, w = p.height, p.width
    y = (np.arange(h, dtype=np.float32)[:, None] + 0.5) / h
    x = (np.arange(w, dtype=np.float32)[None, :] + 0.5) / w
    canvas = np.empty((h, w, 3), np.float32)
    pal = palette(p.artist, p.n_artists, rng)
    COMPOSITIONS[GENRE_NAMES[p.genre]](canvas, y, x, pal, rng)
    style = STYLE_NAMES[p.style]
    tex, amp = _texture(style, h, w, rng)
    if amp:
        canvas *= (1.0 + amp * tex)[..., None]
    canvas = _finish(canvas, style)
    grain = rng.standard_normal((h, w), dtype=np.float32) * 0.02
    canvas += grain[..., None]
    return (np.clip(canvas, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def build_synthetic_shards(out_dir: str | Path, n: int = 500, short_side: int = 64, seed: int = 0,
                           max_side: int = 96, val_frac: float = 0.2, min_shards: int = 8,
                           min_val_shards: int = 4, workers: int = 0, **build: Any):
    """Build a synthetic shard set programmatically (tests, demo) and return its Manifest.

    Extra keyword arguments are BuildConfig fields (e.g. synthetic_artists=..., jpeg_quality=...).
    """
    from .build import BuildConfig, build_shards  # late import: build imports this module

    cfg = BuildConfig(out=str(out_dir), synthetic=n, synthetic_max_side=max_side, short_side=short_side,
                      seed=seed, val_frac=val_frac, min_shards=min_shards, min_val_shards=min_val_shards,
                      workers=workers, progress=False, **build)
    return build_shards(cfg)
