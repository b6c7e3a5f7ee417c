"""Shards -> `DataInfo(loader, num_samples, num_batches)` for training and evaluation.

Both streams treat the split as one sequence of samples (shards concatenated, the manifest's
per-shard counts giving positions) and give each *reader* - one (rank, worker) pair, G =
world_size x workers of them - a contiguous range of it. Node and worker splitting are one
step, work is balanced to within one sample whatever the shard sizes, any shard count works
(even fewer shards than readers), and a reader opens only the shards its range touches.

Training: per epoch (and per pass over the data) the shard order is a permutation seeded by
(seed, epoch); reader ranges are sized in proportion to the reader's quota of batches, so one
pass gives each sample to one reader once. A single-task epoch reads only the samples that
carry that task's label (on ArtGAN ~19k of 81k paintings have an artist): the rest would only
cost compute, their loss masked out. Its quotas come from the manifest's labelled count, while
the ranges still split all positions, so a range holds its share of labelled samples only about
exactly: a reader that comes up short continues into the next pass, and one pass may then show
a few samples twice and leave as many unread (as class balancing does anyway). A range without
any labelled sample reads from the whole split. A reader balances classes by stochastic repeat/drop,
takes exactly its quota (continuing into the next pass if balancing or corrupt samples leave it
short), shuffles through a buffer and augments. Every rank thus yields exactly `num_batches`
full batches (no DDP hang; the epoch is not `workers` times too long).

Determinism: order, balancing draws and every augmentation are pure functions of (seed, epoch,
rank, world_size, workers) - explicit generators, no global RNG - and the DataLoader returns
worker batches round-robin in order. `skip_batches=k` drops the first k batches before
decoding: worker w plays the role of worker (w + k) % W of the unskipped epoch, so the
round-robin continues exactly where the unskipped epoch would have been.

Evaluation: the same ranges without shuffling or repeats, so every sample is scored exactly once
across ranks and workers; partial last batches are kept and batches carry keys.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import signal
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .buffers import BatchBuffers, send_small_tensors_inline
from ..config.options import DataConfig
from .stream import (CorruptCounter, CorruptSample, Sample, Weigher, balance_weights, balanced,
                          class_weigher, collate, decode_image, log, mean_class_weigher, range_samples,
                          seeds, shard_permutation, shuffled)
from ..runtime.device import loader_workers
from .census import LabelFilter, census
from ..formats.labels import BASE_TASKS, heads_for_task
from ..formats.location import is_remote
from ..formats.manifest import Manifest, ManifestError
from ..formats.shard import ShardSource
from .transforms import build_eval_transform, build_train_transform, make_generator


@dataclasses.dataclass
class DataInfo:
    """A loader and its size. Train: `num_samples` = samples per epoch over all ranks,
    `num_batches` = batches of this rank (equal on all ranks). Eval: `num_samples` = samples
    of the split, `num_batches` = batches this rank yields. `corrupt` counts skipped samples."""
    loader: DataLoader
    num_samples: int
    num_batches: int
    corrupt: CorruptCounter | None = None


@dataclasses.dataclass
class _Shards:
    paths: list[ShardSource]  # local files or URLs (formats.location), with their manifest entries
    sizes: list[int]
    num_classes: dict[str, int]  # every task of the manifest: batches carry all labels

    @property
    def total(self) -> int:
        return sum(self.sizes)


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def _worker_batches(num_batches: int, workers: int, role: int) -> int:
    return num_batches // workers + int(role < num_batches % workers)


def _decode(sample: Sample, min_side: int, counter: CorruptCounter):
    """Decode (reduced-size JPEG decoding); None, logged and counted, if the pixels are bad."""
    try:
        return decode_image(sample.image, min_side)
    except CorruptSample as exc:
        counter.add()
        log.warning("skipping corrupt sample %s: %s", sample.key, exc)
        return None


class TrainStream(IterableDataset):
    """Fixed-length, deterministic, balanced training batches of one rank."""

    def __init__(self, shards: _Shards, cfg: DataConfig, *, rank: int, world_size: int, epoch: int,
                 seed: int, num_batches: int, skip_batches: int, weigher: Weigher | None,
                 counter: CorruptCounter, buffers: BatchBuffers, keep: LabelFilter):
        self.shards, self.cfg = shards, cfg
        self.rank, self.world_size, self.epoch, self.seed = rank, world_size, epoch, seed
        self.num_batches, self.skip_batches = num_batches, skip_batches
        self.weigher, self.counter = weigher, counter
        self.buffers = buffers
        self.transform = build_train_transform(cfg)
        self.keep = keep  # which samples are read (by their labels)

    def __len__(self) -> int:
        return max(0, self.num_batches - self.skip_batches)

    def reader_range(self, reader: int, workers: int) -> tuple[int, int]:
        """[start, end) of a pass read by `reader`, proportional to its quota of batches."""
        quota = [_worker_batches(self.num_batches, workers, g % workers)
                 for g in range(self.world_size * workers)]
        before, total = sum(quota[:reader]), sum(quota)
        n = self.shards.total
        start, end = n * before // total, n * (before + quota[reader]) // total
        # Fewer samples than ranks (tiny test sets): never an empty range.
        return (start, end) if end > start else (min(start, n - 1), min(start, n - 1) + 1)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker, workers = _worker()
        role = (worker + self.skip_batches) % workers  # see module docstring
        my_batches = _worker_batches(self.num_batches, workers, role)
        my_skip = max(0, -(-(self.skip_batches - role) // workers))  # ceil((k - role) / W)
        if my_skip >= my_batches:
            return
        reader, readers = self.rank * workers + role, self.world_size * workers
        bs = self.cfg.batch_size
        rng = np.random.default_rng(seeds(self.seed, self.epoch, reader, readers, 1))
        stream = balanced(self._passes(*self.reader_range(reader, workers)), self.weigher, rng)
        quota = itertools.islice(stream, my_batches * bs)
        shuffle_rng = np.random.default_rng(seeds(self.seed, self.epoch, reader, readers, 2))
        # After the quota the same stream continues, only to replace samples that fail to decode.
        samples = itertools.chain(shuffled(quota, self.cfg.shuffle_buffer, shuffle_rng), stream)
        # Whole batches are skipped before decoding, so resuming mid-epoch is cheap.
        samples = itertools.islice(enumerate(samples), my_skip * bs, None)
        batches = self._batches(samples, reader, readers, (self.buffers, worker))
        yield from itertools.islice(batches, my_batches - my_skip)

    def _passes(self, start: int, end: int) -> Iterator[Sample]:
        """This reader's range of pass 0, then of pass 1, ... (each pass a new shard order)."""
        sh = self.shards
        for pass_index in itertools.count():
            order = shard_permutation(len(sh.paths), self.seed, self.epoch, pass_index)
            found = readable = 0
            for sample in range_samples(sh.paths, sh.sizes, order, start, end, sh.num_classes,
                                        self.counter):
                readable += 1
                if not self.keep(sample.labels, sample.foreign):
                    continue
                found += 1
                yield sample
            if readable and not found and (start, end) != (0, sh.total):
                start, end = 0, sh.total  # no sample of the range has the label: fill from the whole split
                continue
            if not found:
                labelled = f" labelled for {', '.join(self.keep.tasks)}" if self.keep.tasks else ""
                raise RuntimeError(f"no readable training samples{labelled} at positions {start}..{end} "
                                   f"of pass {pass_index}; the shards are empty or damaged")

    def _batches(self, samples: Iterator[tuple[int, Sample]], reader: int, readers: int,
                 buffers: tuple[BatchBuffers, int]) -> Iterator[dict[str, Any]]:
        batch: list[tuple[str, torch.Tensor, dict[str, int], torch.Tensor]] = []
        tasks = tuple(self.shards.num_classes)
        for counter, sample in samples:
            pixels = _decode(sample, self.transform.decode_size, self.counter)
            if pixels is None:
                continue
            gen = make_generator(self.seed, self.epoch, reader, readers, counter)
            image, aug = self.transform(pixels, gen)
            batch.append((sample.key, image, sample.labels, aug))
            if len(batch) == self.cfg.batch_size:
                keys, images, labels, augs = map(list, zip(*batch))
                yield collate(keys, images, labels, tasks, augs, buffers)
                batch = []


class EvalStream(IterableDataset):
    """Every sample of a split exactly once across ranks and workers; partial batches kept."""

    def __init__(self, shards: _Shards, cfg: DataConfig, *, rank: int, world_size: int,
                 counter: CorruptCounter, buffers: BatchBuffers, keep: LabelFilter = LabelFilter()):
        self.shards, self.cfg, self.keep = shards, cfg, keep
        self.rank, self.world_size, self.counter, self.buffers = rank, world_size, counter, buffers
        self.batch_size = cfg.eval_batch_size or cfg.batch_size
        self.transform = build_eval_transform(cfg)

    def reader_range(self, worker: int, workers: int) -> tuple[int, int]:
        """[start, end) of the split read by this rank's `worker`.

        Readers get whole batches (batch i is always samples [i*B, (i+1)*B)), so every batch
        holds the same images whatever the world size and worker count: the logits, and so
        every metric, are bit-identical to a single-process evaluation.
        """
        readers, reader = self.world_size * workers, self.rank * workers + worker
        n, size = self.shards.total, self.batch_size
        batches = -(-n // size)
        first, last = batches * reader // readers, batches * (reader + 1) // readers
        return min(first * size, n), min(last * size, n)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        sh = self.shards
        worker, workers = _worker()
        start, end = self.reader_range(worker, workers)
        tasks, buffers = tuple(sh.num_classes), (self.buffers, worker)
        batch: list[tuple[str, torch.Tensor, dict[str, int]]] = []
        for sample in range_samples(sh.paths, sh.sizes, range(len(sh.paths)), start, end,
                                    sh.num_classes, self.counter):
            if not self.keep(sample.labels, sample.foreign):  # outside the scored population
                continue
            image = _decode(sample, self.transform.decode_size, self.counter)
            if image is None:
                continue
            batch.append((sample.key, self.transform(image), sample.labels))
            if len(batch) == self.batch_size:
                yield collate(*map(list, zip(*batch)), tasks, buffers=buffers)
                batch = []
        if batch:
            yield collate(*map(list, zip(*batch)), tasks, buffers=buffers)


def _identity(batch: Any) -> Any:
    return batch


def _loader(dataset: IterableDataset, workers: int | None) -> DataLoader:
    # Batches are built in the workers (batch_size=None). DataLoader's default in-order
    # delivery takes worker batches round-robin, which the determinism above relies on.
    # Its own generator only draws the (unused) worker base seed, which would otherwise
    # come from - and shift - the trainer's global RNG on every epoch.
    workers = loader_workers(workers)  # None (a DataConfig used outside train.py): the default
    return DataLoader(dataset, batch_size=None, num_workers=workers, collate_fn=_identity,
                      pin_memory=torch.cuda.is_available(), persistent_workers=False,
                      generator=torch.Generator().manual_seed(0),
                      worker_init_fn=_init_worker if workers else None)


def _init_worker(_worker_id: int) -> None:
    """SLURM signals every process of a job step, loader workers included; PyTorch's worker
    handler would die on SIGTERM and crash the rank before it can save. The main process
    handles the stop (wikiart.train.preemption) and ends its workers itself. Small tensors of a
    batch travel by value (see `data.buffers`)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    send_small_tensors_inline()


def _shards(manifest: Manifest, split: str, task: str) -> _Shards:
    """Shard paths and sizes of `split`; errors name a missing task, an empty split, missing files."""
    for head in heads_for_task(task):
        manifest.class_names(head)  # ManifestError naming the task if absent
    sources = manifest.shard_sources(split)
    if not sources or manifest.num_samples(split) == 0:
        raise ManifestError(f"split {split!r} in {manifest.root} has no samples")
    missing = [s.location for s in sources if not is_remote(s.location) and not os.path.isfile(s.location)]
    if missing:
        raise FileNotFoundError(f"{len(missing)} shard file(s) of split {split!r} listed in the "
                                f"manifest are missing: {', '.join(missing[:5])}")
    sizes = [s.num_samples for s in manifest.split(split).shards]
    return _Shards(sources, sizes, {t: manifest.num_classes(t) for t in manifest.tasks})


def _check_rank(rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world size {world_size}")


def intersection_only(cfg: DataConfig) -> bool:
    """--task combined on the paintings with all three labels (the seed's experiment)."""
    return cfg.task == "combined" and cfg.combined_data == "intersection"


# The seed's combined population: all three labels, each from the painting's own split's files.
INTERSECTION = LabelFilter(BASE_TASKS, own_split=True)


def train_filter(cfg: DataConfig, labelled_only: bool = True) -> LabelFilter:
    """The training samples read: those labelled for the task (the rest would only cost compute,
    their loss masked out), the seed's intersection for combined, or every sample."""
    if intersection_only(cfg):
        return INTERSECTION
    return LabelFilter((cfg.task,)) if labelled_only and cfg.task in BASE_TASKS else LabelFilter()


def eval_filter(cfg: DataConfig) -> LabelFilter:
    """The samples a training validation scores: the combined intersection's, else all."""
    return INTERSECTION if intersection_only(cfg) else LabelFilter()


def balance_task_for(cfg: DataConfig) -> str:
    """The task whose classes are balanced: --balance-task, else the task; for combined 'all'
    (the mean of the three, the seed's) on the intersection, style on the union."""
    if cfg.balance_task:
        return cfg.balance_task
    if cfg.task == "combined":
        return "all" if intersection_only(cfg) else "style"
    return cfg.task


def balance_weigher(manifest: Manifest, cfg: DataConfig) -> Weigher | None:
    """The repeat factor of a training sample under --balance (None: no balancing)."""
    if cfg.balance == "none":
        return None
    task = balance_task_for(cfg)
    if task == "all":
        if not intersection_only(cfg):
            raise ValueError("--balance-task all weighs a painting by its three labels: it needs --task "
                             "combined --combined-data intersection")
        return mean_class_weigher(census(manifest, "train", INTERSECTION).class_counts, cfg.balance)
    return class_weigher(task, balance_weights(manifest.class_counts("train", task), cfg.balance))


def train_samples_for(manifest: Manifest, task: str, labelled_only: bool = True,
                      combined_data: str = "union") -> int:
    """Samples one training epoch reads: for a single task, those labelled for it (the manifest's
    class counts); for combined, those with all three labels (intersection) or all (union, or a
    run resumed from a checkpoint older than single-task epochs)."""
    if task == "combined" and combined_data == "intersection":
        count = census(manifest, "train", INTERSECTION).num_samples
        if not count:
            raise ManifestError("no training painting of the shards has all three labels (artist, genre, "
                                "style); use --combined-data union, or shards built with all three tasks")
        return count
    counts = manifest.split("train").class_counts
    if not labelled_only or task not in BASE_TASKS or task not in counts:  # no class counts: all
        return manifest.num_samples("train")
    if not sum(counts[task]):
        raise ManifestError(f"no training sample of the shards has a {task} label; build shards with "
                            f"--tasks including {task}, or train another --task")
    return sum(counts[task])


def eval_samples_for(manifest: Manifest, split: str, cfg: DataConfig) -> int:
    """Samples a training validation scores (`eval_filter`)."""
    return census(manifest, split, INTERSECTION).num_samples if intersection_only(cfg) \
        else manifest.num_samples(split)


def train_batches_per_rank(num_samples: int, world_size: int, batch_size: int) -> int:
    """Batches every rank yields per epoch: one pass over the data, at least one batch."""
    return max(1, num_samples // (world_size * batch_size))


def build_train_data(manifest: Manifest, cfg: DataConfig, *, rank: int, world_size: int, epoch: int,
                     seed: int, skip_batches: int = 0, labelled_only: bool = True) -> DataInfo:
    """The training loader of `rank` for `epoch`; starts at batch `skip_batches` (exact resume).
    `labelled_only=False` keeps a single task's unlabelled samples (runs started before)."""
    _check_rank(rank, world_size)
    shards = _shards(manifest, "train", cfg.task)
    samples = train_samples_for(manifest, cfg.task, labelled_only, cfg.combined_data)
    num_batches = train_batches_per_rank(samples, world_size, cfg.batch_size)
    counter, buffers = CorruptCounter(), BatchBuffers(loader_workers(cfg.workers))
    stream = TrainStream(shards, cfg, rank=rank, world_size=world_size, epoch=epoch, seed=seed,
                         num_batches=num_batches, skip_batches=max(0, skip_batches),
                         weigher=balance_weigher(manifest, cfg), counter=counter, buffers=buffers,
                         keep=train_filter(cfg, labelled_only))
    return DataInfo(_loader(stream, cfg.workers), num_batches * world_size * cfg.batch_size,
                    num_batches, counter)


def build_eval_data(manifest: Manifest, split: str, cfg: DataConfig, *, rank: int,
                    world_size: int, keep: LabelFilter = LabelFilter()) -> DataInfo:
    """The evaluation loader of `rank`: its share of `split`, each sample exactly once overall;
    only the samples `keep` reads (`num_batches` is then an upper bound: the positions are split
    before the labels are read)."""
    _check_rank(rank, world_size)
    shards = _shards(manifest, split, cfg.task)
    counter, buffers = CorruptCounter(), BatchBuffers(loader_workers(cfg.workers))
    stream = EvalStream(shards, cfg, rank=rank, world_size=world_size, counter=counter, buffers=buffers,
                        keep=keep)
    workers = max(1, loader_workers(cfg.workers))
    ranges = (stream.reader_range(w, workers) for w in range(workers))
    num_batches = sum(math.ceil((end - start) / stream.batch_size) for start, end in ranges)
    return DataInfo(_loader(stream, cfg.workers), shards.total, num_batches, counter)
