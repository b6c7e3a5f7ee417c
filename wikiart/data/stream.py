"""Low-level pieces of the sample streams: validation, decoding, balancing, shuffling, collating
(shard reading itself is `formats.shard`).

Everything random here takes an explicit `numpy.random.Generator` seeded from (seed, epoch,
reader, ...) so a stream is a pure function of its arguments; nothing touches global RNG state.
"""

from __future__ import annotations

import io
import json
import logging
import multiprocessing
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence, TypeVar

import numpy as np
import simplejpeg
import torch
from PIL import Image
from torch.utils.data import get_worker_info

from ..formats.images import JPEG_END, JPEG_END_WINDOW
from ..formats.labels import MISSING
from ..formats.shard import ShardSource, iter_shard

log = logging.getLogger("wikiart.data.loader")
T = TypeVar("T")
BALANCE_POWER = {"none": 0.0, "sqrt": 0.5, "inverse": 1.0}
SEED_MASK = (1 << 64) - 1


class CorruptSample(ValueError):
    """A sample inside a shard is unusable (bad JPEG, bad json, bad label)."""


class CorruptCounter:
    """Counts corrupt samples across DataLoader worker processes (shared memory)."""

    def __init__(self) -> None:
        self._value = multiprocessing.Value("q", 0)

    def add(self, n: int = 1) -> None:
        with self._value.get_lock():
            self._value.value += n

    @property
    def count(self) -> int:
        return int(self._value.value)


@dataclass(slots=True)
class Sample:
    """A validated, not yet decoded sample."""
    key: str
    image: bytes
    labels: dict[str, int]
    foreign: tuple[str, ...] = ()  # tasks whose label came from the other split's file (ArtGAN)


def seeds(*parts: int) -> list[int]:
    """Entropy for numpy's SeedSequence from ints that may be negative."""
    return [int(p) & SEED_MASK for p in parts]


def check_image_bytes(data: bytes) -> None:
    """Cheap validity check without decoding pixels: parseable header, JPEG not truncated.

    Run before the resume skip, so a sample this rejects is rejected identically in a resumed
    epoch; only the rare damage it cannot see (inside the entropy-coded data) shifts later samples.
    JPEG headers are read by libjpeg-turbo (simplejpeg, ~3 us); other formats by PIL (~35 us).
    """
    if data[:2] == b"\xff\xd8":
        try:
            h, w = simplejpeg.decode_jpeg_header(data)[:2]
        except ValueError as exc:
            raise CorruptSample(f"unreadable image header ({exc})") from None
        if data.rfind(JPEG_END, max(0, len(data) - JPEG_END_WINDOW)) < 0:
            raise CorruptSample("truncated JPEG (no end-of-image marker)")
    else:
        try:
            with Image.open(io.BytesIO(data)) as img:
                w, h = img.size
        except Exception as exc:  # PIL raises many types for garbage
            raise CorruptSample(f"unreadable image header ({exc.__class__.__name__})") from None
    if w <= 0 or h <= 0:
        raise CorruptSample(f"invalid image size {w}x{h}")


def jpeg_reduction(width: int, height: int, min_side: int) -> int:
    """The largest of 1, 2, 4, 8 that keeps both sides >= min_side after reduced-size decoding."""
    factor = 1
    while factor < 8 and min(width, height) // (factor * 2) >= min_side:
        factor *= 2
    return factor


def decode_image(data: bytes, min_side: int) -> np.ndarray:
    """Decode to RGB (H, W, 3) uint8; a JPEG at least twice `min_side` is decoded reduced by
    libjpeg-turbo's DCT scaling (1/2, 1/4, 1/8), so only the pixels the crop needs are made.

    JPEGs go through simplejpeg (libjpeg-turbo straight into a numpy array, ~1.5x faster than
    PIL's decode + convert; its "fast" DCT/upsampling saves only ~8% and shifts noisy
    textures by ~2 levels on average, so decoding stays exact). Shards hold re-encoded RGB
    JPEGs with orientation already applied, so no EXIF handling. Raises CorruptSample.
    """
    try:
        if data[:2] == b"\xff\xd8":
            height, width = simplejpeg.decode_jpeg_header(data)[:2]
            factor = jpeg_reduction(width, height, min_side)
            return simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=-(-width // factor), min_height=-(-height // factor))
        with Image.open(io.BytesIO(data)) as img:  # other formats: rare, PIL at full size
            return np.asarray(img.convert("RGB"))
    except Exception as exc:  # simplejpeg raises ValueError, PIL many types, on bad data
        raise CorruptSample(f"undecodable image ({exc.__class__.__name__}: {exc})") from None


def foreign_tasks(meta: Mapping[str, Any]) -> tuple[str, ...]:
    """The tasks of a sample json whose label comes from the other split's file (`label_splits`)."""
    splits = meta.get("label_splits") or {}
    return tuple(sorted(t for t, s in splits.items() if s != meta.get("split"))) if isinstance(splits, dict) else ()


def parse_sample(raw: Mapping, num_classes: Mapping[str, int]) -> Sample:
    """Validate a raw tar sample into a `Sample`; raises CorruptSample with a reason."""
    key = raw.get("__key__", "?")
    image = raw.get("jpg")
    if image is None or "json" not in raw:
        raise CorruptSample(f"missing members (has {sorted(k for k in raw if not k.startswith('__'))})")
    try:
        meta = json.loads(raw["json"])
        labels = {t: int(v) for t, v in meta["labels"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CorruptSample(f"bad json ({exc.__class__.__name__}: {exc})") from None
    for task, value in labels.items():
        k = num_classes.get(task)
        if k is not None and value != MISSING and not 0 <= value < k:
            raise CorruptSample(f"label {task}={value} out of range 0..{k - 1}")
    check_image_bytes(image)
    return Sample(key=str(key), image=image, labels=labels, foreign=foreign_tasks(meta))


def shard_samples(path: str | ShardSource, size: int, lo: int, hi: int, num_classes: Mapping[str, int],
                  counter: CorruptCounter) -> Iterator[Sample]:
    """Validated samples at positions lo..hi-1 of one shard (positions count corrupt ones too,
    as the manifest's sizes do); samples before `lo` are read past without being parsed.
    Samples missing because the shard is damaged or short are counted as corrupt."""
    position = -1
    for position, raw in enumerate(iter_shard(path)):
        if position >= hi:
            if position >= size:
                log.warning("shard %s holds more samples than the %d its manifest lists; "
                            "the extra ones are ignored", path, size)
            return
        if position < lo:
            continue
        try:
            yield parse_sample(raw, num_classes)
        except CorruptSample as exc:
            counter.add()
            log.warning("skipping corrupt sample %s in %s: %s", raw.get("__key__"), path, exc)
    lost = hi - max(lo, position + 1)
    if lost > 0:
        counter.add(lost)
        log.warning("shard %s ends after %d samples but its manifest lists %d; %d lost",
                    path, position + 1, size, lost)


def range_samples(paths: Sequence[str | ShardSource], sizes: Sequence[int], order: Iterable[int], start: int,
                  end: int, num_classes: Mapping[str, int], counter: CorruptCounter) -> Iterator[Sample]:
    """Validated samples at positions [start, end) of the shards concatenated in `order`.

    Only the shards overlapping the range are opened.
    """
    offset = 0
    for idx in order:
        lo, hi = max(start, offset), min(end, offset + sizes[idx])
        if lo < hi:
            yield from shard_samples(paths[idx], sizes[idx], lo - offset, hi - offset, num_classes, counter)
        offset += sizes[idx]
        if offset >= end:
            return


def shard_permutation(num_shards: int, seed: int, epoch: int, pass_index: int) -> np.ndarray:
    """The shard order of one pass over the data; the same on every rank and worker."""
    return np.random.default_rng(seeds(seed, epoch, pass_index, 0x5A4D)).permutation(num_shards)


def balance_weights(counts: Sequence[int], mode: str) -> np.ndarray:
    """Per-class repeat factors (N / (K * n_c)) ** p, p = 1 (inverse), 0.5 (sqrt), 0 (none).

    Normalised so that sum_c n_c * w_c = N: the expected stream length is unchanged.
    Classes without samples get weight 0 (they never occur).
    """
    if mode not in BALANCE_POWER:
        raise ValueError(f"unknown balance mode {mode!r}; expected one of {list(BALANCE_POWER)}")
    n = np.asarray(counts, dtype=np.float64)
    present = n > 0
    weights = np.zeros_like(n)
    if not present.any():
        return weights
    total = n.sum()
    weights[present] = (total / (present.sum() * n[present])) ** BALANCE_POWER[mode]
    return weights * total / float((n * weights).sum())


Weigher = Callable[[Mapping[str, int]], float]  # a sample's labels -> its repeat factor


@dataclass(frozen=True)
class class_weigher:  # noqa: N801 - used as a function; a class so that loader workers can unpickle it
    """Repeat factor from one task's class weights; a sample without that label keeps 1."""
    task: str
    weights: np.ndarray

    def __call__(self, labels: Mapping[str, int]) -> float:
        label = labels.get(self.task, MISSING)
        return float(self.weights[label]) if 0 <= label < len(self.weights) else 1.0


class mean_class_weigher:  # noqa: N801 - used as a function; picklable for the loader workers
    """The seed's combined sampler: a painting weighs the mean over the tasks of n_c ** -p for
    its class c of each task (p = 1 for inverse), scaled so the expected stream length stays the
    number of paintings N: sum_i mean_t n_t(i) ** -p = mean_t sum_c n_tc ** (1 - p), so the
    scale follows from the class counts alone. Meant for paintings labelled for every task."""

    def __init__(self, counts: Mapping[str, Sequence[int]], mode: str):
        self.power = BALANCE_POWER[mode]
        self.arrays = {t: np.asarray(c, dtype=np.float64) for t, c in counts.items()}
        total = max(float(next(iter(self.arrays.values())).sum()), 1.0)
        mass = np.mean([float((n[n > 0] ** (1.0 - self.power)).sum()) for n in self.arrays.values()])
        self.scale = total / mass if mass > 0 else 0.0

    def __call__(self, labels: Mapping[str, int]) -> float:
        terms = [n[labels[t]] ** -self.power for t, n in self.arrays.items()
                 if 0 <= labels.get(t, MISSING) < len(n) and n[labels[t]] > 0]
        return self.scale * float(np.mean(terms)) if terms else 1.0


def balanced(samples: Iterable[Sample], weigher: Weigher | None, rng: np.random.Generator) -> Iterator[Sample]:
    """Emit each sample floor(w) times plus once more with probability frac(w), w = weigher(labels)."""
    for sample in samples:
        if weigher is None:
            yield sample
            continue
        w = weigher(sample.labels)
        repeats = int(w) + int(rng.random() < w - int(w))
        for _ in range(repeats):
            yield sample


def shuffled(items: Iterable[T], size: int, rng: np.random.Generator) -> Iterator[T]:
    """Streaming shuffle through a buffer of `size` items; drains the buffer at the end."""
    buffer: list[T] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        j = int(rng.integers(size))
        yield buffer[j]
        buffer[j] = item
    for j in rng.permutation(len(buffer)):
        yield buffer[j]


def collate(keys: list[str], images: list[torch.Tensor], labels: list[Mapping[str, int]],
            tasks: Sequence[str], aug: list[torch.Tensor] | None = None,
            buffers: tuple[Any, int] | None = None) -> dict:
    """The batch dict: image uint8 (B, 3, H, W) in channels_last layout (stacked HWC images),
    labels {task: LongTensor (B,)}, key list, and for training "aug" (B, AUG_SIZE) parameters.

    `buffers` = (`data.buffers.BatchBuffers`, reader): the images go into a reusable slot
    and the batch names it under "buffer" (see `data.buffers.release_batch`)."""
    handle = None
    if buffers is None:
        pixels = stack(images)
    else:
        pixels, handle = buffers[0].stack(images, buffers[1])
    batch = {
        "image": pixels.permute(0, 3, 1, 2),
        "labels": {t: torch.tensor([lab.get(t, MISSING) for lab in labels], dtype=torch.long)
                   for t in tasks},
        "key": keys,
    }
    if aug is not None:
        batch["aug"] = torch.stack(aug)  # small: sent by value (data.buffers.send_small_tensors_inline)
    if handle is not None:
        batch["buffer"] = handle
    return batch


def stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    """torch.stack; in a DataLoader worker straight into shared memory (as PyTorch's own
    default_collate does), so sending the batch to the training process copies nothing more."""
    if get_worker_info() is None:
        return torch.stack(tensors)
    first = tensors[0]
    storage = first._typed_storage()._new_shared(len(tensors) * first.numel(), device=first.device)
    out = first.new(storage).resize_(len(tensors), *first.shape)
    return torch.stack(tensors, out=out)
