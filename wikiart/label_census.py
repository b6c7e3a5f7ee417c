"""Counts over the paintings that carry every one of a set of labels, read from the shards.

The manifest counts each task's labels on its own; the seed's combined experiment trains and
scores only the paintings labelled for all three tasks (11,276 train / 4,707 val on ArtGAN), so
its epoch length, its sampler weights and its validation count need counts over that
intersection. They are read here from the shards' `.json` members alone: tar headers are
walked with seeks, no image byte is read (the whole ArtGAN train split in a few seconds).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import tarfile
from typing import Iterator, Sequence

from .labels import MISSING
from .manifest import Manifest


@dataclasses.dataclass(frozen=True)
class Census:
    """Paintings of a split labelled for every task of `tasks`, and their per-task class counts."""
    tasks: tuple[str, ...]
    num_samples: int
    class_counts: dict[str, list[int]]


def shard_labels(path: str) -> Iterator[dict[str, int]]:
    """The `labels` of every sample of one shard, in file order; damaged members are left out
    (the loaders skip and count those samples too)."""
    with tarfile.open(path, mode="r:*") as tar:
        while (info := tar.next()) is not None:
            if info.isreg() and info.name.endswith(".json"):
                try:
                    yield {t: int(v) for t, v in json.loads(tar.extractfile(info).read())["labels"].items()}
                except (ValueError, KeyError, TypeError, AttributeError):
                    continue
            tar.members.clear()  # keeps memory flat on long shards


def census(manifest: Manifest, split: str, tasks: Sequence[str]) -> Census:
    """Count the `split` paintings whose every task in `tasks` is labelled (cached per process)."""
    paths = tuple(manifest.shard_paths(split))
    num_classes = tuple(manifest.num_classes(t) for t in tasks)
    return _census(paths, tuple(tasks), num_classes)


@functools.lru_cache(maxsize=16)
def _census(paths: tuple[str, ...], tasks: tuple[str, ...], num_classes: tuple[int, ...]) -> Census:
    counts = {t: [0] * n for t, n in zip(tasks, num_classes)}
    total = 0
    for path in paths:
        for labels in shard_labels(path):
            values = [labels.get(t, MISSING) for t in tasks]
            if any(not 0 <= v < n for v, n in zip(values, num_classes)):
                continue
            total += 1
            for task, value in zip(tasks, values):
                counts[task][value] += 1
    return Census(tasks, total, counts)
