"""The paintings a stream reads (`LabelFilter`) and counts over them, read from the shards.

The manifest counts each task's labels on its own; the seed's combined experiment trains and
scores only the paintings labelled for all three tasks (11,276 train / 4,707 val on ArtGAN), so
its epoch length, its sampler weights and its validation count need counts over that
intersection. They are read here from the shards' `.json` members alone: tar headers are
walked with seeks, no image byte is read (the whole ArtGAN train split in a few seconds).

The seed inner-joins the three train files and the three val files apart. A painting the leak
rule moved to val (say artist-train, genre-val, style-val) has all three labels in our val split
but is in neither of the seed's sets: `own_split` leaves out labels whose json `label_splits`
names the other split, which gives the seed's 4,707 exactly.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Iterator, Mapping, Sequence

from ..formats.shard import ShardSource, iter_shard_json
from .stream import foreign_tasks
from ..formats.labels import MISSING
from ..formats.manifest import Manifest


@dataclasses.dataclass(frozen=True)
class LabelFilter:
    """Keep a sample labelled for every task of `tasks` (none: every sample); with `own_split`,
    only by labels from its own split's files. Picklable: the loader workers call it."""
    tasks: tuple[str, ...] = ()
    own_split: bool = False

    def __call__(self, labels: Mapping[str, int], foreign: Sequence[str] = ()) -> bool:
        if any(labels.get(t, MISSING) == MISSING for t in self.tasks):
            return False
        return not (self.own_split and any(t in foreign for t in self.tasks))


@dataclasses.dataclass(frozen=True)
class Census:
    """Paintings of a split labelled for every task of `tasks`, and their per-task class counts."""
    tasks: tuple[str, ...]
    num_samples: int
    class_counts: dict[str, list[int]]
    keys: frozenset[str] = frozenset()


def shard_labels(path: ShardSource, size: int) -> Iterator[tuple[str, dict[str, int], tuple[str, ...]]]:
    """(key, labels, foreign tasks) of the first `size` samples of one shard (the manifest's
    count: the loaders read no further), in file order; a sample with bad json is left out, as
    the loaders leave it out."""
    for key, raw in iter_shard_json(path, size):
        try:
            meta = json.loads(raw)
            labels = {t: int(v) for t, v in meta["labels"].items()}
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
        yield key, labels, foreign_tasks(meta)


def census(manifest: Manifest, split: str, keep: LabelFilter) -> Census:
    """Count the `split` paintings `keep` reads, per task of it and class (cached per process)."""
    paths = tuple(manifest.shard_sources(split))
    sizes = tuple(s.num_samples for s in manifest.split(split).shards)
    num_classes = tuple(manifest.num_classes(t) for t in keep.tasks)
    return _census(paths, sizes, keep, num_classes)


@functools.lru_cache(maxsize=16)
def _census(paths: tuple[ShardSource, ...], sizes: tuple[int, ...], keep: LabelFilter,
            num_classes: tuple[int, ...]) -> Census:
    tasks = keep.tasks
    counts = {t: [0] * n for t, n in zip(tasks, num_classes)}
    keys = []
    for path, size in zip(paths, sizes):
        for key, labels, foreign in shard_labels(path, size):
            values = [labels.get(t, MISSING) for t in tasks]
            if not keep(labels, foreign) or any(not 0 <= v < n for v, n in zip(values, num_classes)):
                continue
            keys.append(key)
            for task, value in zip(tasks, values):
                counts[task][value] += 1
    return Census(tasks, len(keys), counts, frozenset(keys))
