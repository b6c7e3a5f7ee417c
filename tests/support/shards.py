"""Small real WebDataset shards for the data tests, and reading them back.

`make_shards` writes shards + manifest.json by hand, independent of the shard builder on
purpose: tests choose uneven shard sizes, skewed labels and deliberately corrupt samples. The
loader helpers read an epoch through the training loader; the builder helpers run the real
shard builder in this process.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import webdataset as wds
from PIL import Image

from wikiart.config.options import DataConfig
from wikiart.data.loader import build_train_data
from wikiart.formats.manifest import Manifest, ShardInfo, SplitInfo, load_manifest, sha256_file
from wikiart.prep.build import build_shards, parse_build_config

CLASSES = {"artist": ["a0", "a1", "a2"], "genre": ["g0", "g1", "g2", "g3"],
           "style": ["s0", "s1", "s2", "s3", "s4"]}
LabelFn = Callable[[int, np.random.Generator], Mapping[str, int]]


def jpeg_bytes(rng: np.random.Generator, size: tuple[int, int] = (48, 40), quality: int = 85) -> bytes:
    """A random-coloured JPEG with a little noise, `size` = (w, h)."""
    w, h = size
    base = rng.integers(0, 256, size=3)
    pixels = np.clip(base + rng.normal(0, 20, size=(h, w, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def random_labels(index: int, rng: np.random.Generator) -> dict[str, int]:
    """Uniform labels; every 10th sample has no artist (-1)."""
    labels = {t: int(rng.integers(len(names))) for t, names in CLASSES.items()}
    if index % 10 == 0:
        labels["artist"] = -1
    return labels


def corrupt_member(kind: str, good_jpg: bytes, good_json: bytes) -> tuple[bytes, bytes]:
    """(jpg, json) damaged as `kind`: 'jpeg' garbage, 'truncated' JPEG, 'json' garbage."""
    if kind == "jpeg":
        return b"this is not a jpeg" * 10, good_json
    if kind == "truncated":
        return good_jpg[: len(good_jpg) // 2], good_json
    if kind == "json":
        return good_jpg, b'{"key": "broken", "labels": '
    raise ValueError(kind)


def write_split(root: Path, split: str, shard_sizes: Sequence[int], *, seed: int = 0,
                label_fn: LabelFn = random_labels, corrupt: Mapping[int, str] | None = None,
                image_size: tuple[int, int] = (48, 40)) -> SplitInfo:
    """Write `split-NNNNNN.tar` shards; `corrupt` maps a sample index within the split to a kind.

    Keys are `{split}{index:05d}`; corrupt samples count in the shard sizes and in the
    class counts (the damage came after the build).
    """
    rng = np.random.default_rng(seed)
    corrupt = corrupt or {}
    info = SplitInfo(class_counts={t: [0] * len(names) for t, names in CLASSES.items()})
    index = 0
    for shard_no, size in enumerate(shard_sizes):
        name = f"{split}-{shard_no:06d}.tar"
        with wds.TarWriter(str(root / name), encoder=False) as sink:
            for _ in range(size):
                key = f"{split}{index:05d}"
                labels = dict(label_fn(index, rng))
                jpg = jpeg_bytes(rng, image_size)
                meta = json.dumps({"key": key, "labels": labels, "source": "test",
                                   "orig_size": list(image_size)}).encode()
                for t, v in labels.items():  # counted as the builder did, before the damage
                    if v >= 0:
                        info.class_counts[t][v] += 1
                if index in corrupt:
                    jpg, meta = corrupt_member(corrupt[index], jpg, meta)
                sink.write({"__key__": key, "jpg": jpg, "json": meta})
                index += 1
        path = root / name
        info.shards.append(ShardInfo(name=name, num_samples=size, bytes=path.stat().st_size,
                                     sha256=sha256_file(path)))
    return info


def make_shards(root: Path, splits: Mapping[str, Sequence[int]], *, seed: int = 0,
                label_fn: LabelFn = random_labels, corrupt: Mapping[str, Mapping[int, str]] | None = None,
                image_size: tuple[int, int] = (48, 40), classes: Mapping[str, list[str]] | None = None,
                ) -> Manifest:
    """Write shards for each split (shard sizes per split) and the manifest; return it loaded."""
    root.mkdir(parents=True, exist_ok=True)
    corrupt = corrupt or {}
    infos = {split: write_split(root, split, sizes, seed=seed + i, label_fn=label_fn,
                                corrupt=corrupt.get(split), image_size=image_size)
             for i, (split, sizes) in enumerate(splits.items())}
    names = dict(classes or CLASSES)
    for info in infos.values():
        info.class_counts = {t: c for t, c in info.class_counts.items() if t in names}
    Manifest(classes=names, splits=infos, source={"name": "test"}).save(root)
    return load_manifest(root)


def split_keys(manifest: Manifest, split: str) -> list[str]:
    """All keys of a split, in shard order (as `write_split` names them)."""
    return [f"{split}{i:05d}" for i in range(manifest.num_samples(split))]


# ----------------------------------------------------------------------------------------------
# Reading hand-made shards through the training loader (tests/unit/data, tests/faults)
# ----------------------------------------------------------------------------------------------
def loader_config(**kw) -> DataConfig:
    """A small genre loader config (32 px, batch 8, no workers) with `kw` overriding it."""
    base = dict(task="genre", image_size=32, batch_size=8, workers=0, shuffle_buffer=40)
    return DataConfig(**{**base, **kw})


def train_epoch(manifest, cfg, rank=0, world=2, epoch=0, seed=0, skip=0):
    """(info, every batch) of one training epoch of `rank` out of `world`."""
    info = build_train_data(manifest, cfg, rank=rank, world_size=world, epoch=epoch, seed=seed,
                            skip_batches=skip)
    return info, list(info.loader)


def keys_of(batches) -> list[str]:
    return [k for b in batches for k in b["key"]]


def write_tar(path, mode: str, members) -> None:
    """A tar (`mode`: "w", "w:gz", ...) of (name, bytes) members; None bytes make a directory."""
    import tarfile

    with tarfile.open(path, mode) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


# ----------------------------------------------------------------------------------------------
# Shards from the real builder (tests/unit/prep, tests/faults)
# ----------------------------------------------------------------------------------------------
def build_shards_with(out: Path, *args: str):
    """wikiart-build-shards' build with these flags (no progress bar), in this process."""
    return build_shards(parse_build_config(["--out", str(out), "--no-progress", *args]))


def build_small_synthetic(out: Path, n: int = 60, *args: str):
    """`n` synthetic paintings at 32 px in >= 4 train and 2 val shards."""
    return build_shards_with(out, "--synthetic", str(n), "--synthetic-max-side", "48", "--short-side", "32",
                             "--min-shards", "4", "--min-val-shards", "2", "--val-frac", "0.2", "--workers", "0",
                             *args)


def tar_contents(directory: Path) -> dict[str, bytes]:
    """name -> bytes of every shard in `directory`."""
    return {p.name: p.read_bytes() for p in sorted(directory.glob("*.tar"))}
