"""Shard writing for the builder: encode in worker processes, write tars atomically, verify.

A shard is written to `NAME.tmp` and renamed only when complete, then a small record of it
(`OUT/.build/NAME.json`: size, sha256, sample and class counts, skipped inputs) is saved; a
re-run reuses a shard only when both exist and the sha256 still matches.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import contextlib
import dataclasses
import io
import json
import multiprocessing
import os
import tarfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from ..formats.files import write_json
from ..formats.images import ImageDecodeError, decode_image, encode_jpeg, jpeg_without_trailer, resize_short_side
from ..formats.location import RemoteShardError, is_remote
from ..formats.manifest import ManifestError, ShardInfo, load_manifest, sha256_file
from ..formats.shard import ShardSource, count_samples
from .sources import Record, Source

STATE_DIR = ".build"


@dataclasses.dataclass
class ShardPlan:
    split: str
    index: int
    records: list[Record]

    @property
    def name(self) -> str:
        return f"{self.split}-{self.index:06d}.tar"


@dataclasses.dataclass
class ShardResult:
    name: str
    split: str
    num_samples: int
    bytes: int
    sha256: str
    class_counts: dict[str, list[int]]
    skipped: list[dict[str, str]]
    fingerprint: str = ""


@dataclasses.dataclass(frozen=True)
class EncodeParams:
    short_side: int
    max_side: int | None
    quality: int


def encode_sample(image: Any, params: EncodeParams) -> tuple[bytes, tuple[int, int], tuple[int, int]]:
    """Image ref (path, bytes, synthetic spec) -> (JPEG bytes, original size, stored size)."""
    if hasattr(image, "render"):
        img, orig, plain = image.render(), None, False
    else:
        decoded = decode_image(image, min_side=params.short_side or None)
        img, orig, plain = decoded.image, decoded.orig_size, decoded.plain_jpeg
    orig = orig or img.size
    if params.short_side == 0 and plain and not params.max_side:
        # --short-side 0 keeps originals: a plain RGB JPEG is stored byte for byte, up to its end
        # marker (else the loader would take it for truncated); one without is re-encoded below
        data = jpeg_without_trailer(bytes(image if isinstance(image, (bytes, bytearray)) else Path(image).read_bytes()))
        if data is not None:
            return data, orig, orig
    img = resize_short_side(img, params.short_side, params.max_side)
    return encode_jpeg(img, params.quality), orig, img.size


def _work(image: Any, params: EncodeParams) -> tuple[str, Any]:
    """Runs in a worker: never raises, a bad input becomes ("skip", reason)."""
    try:
        return "ok", encode_sample(image, params)
    except ImageDecodeError as exc:
        return "skip", str(exc)[:300]
    except Exception as exc:  # noqa: BLE001 - any failure of one image skips that image only
        first_line = (str(exc).splitlines() or [""])[0]
        return "skip", f"{type(exc).__name__}: {first_line}"[:300]


class ShardWriter:
    """One shard being written: deterministic tar members, temp name until complete."""

    def __init__(self, out: Path, plan: ShardPlan, classes: dict[str, list[str]]):
        self.plan, self.path = plan, out / plan.name
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self.tar = tarfile.open(self.tmp, "w", format=tarfile.PAX_FORMAT)
        self.remaining = len(plan.records)
        self.num_samples = 0
        self.counts = {t: [0] * len(names) for t, names in classes.items()}
        self.skipped: list[dict[str, str]] = []

    def _add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 0, 0o444
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        self.tar.addfile(info, io.BytesIO(data))

    def write(self, rec: Record, jpg: bytes, orig: tuple[int, int], size: tuple[int, int]) -> None:
        meta = {"key": rec.key, "labels": rec.labels, "source": rec.source, "split": rec.split,
                "orig_size": list(orig), "size": list(size)}
        if rec.label_splits and set(rec.label_splits.values()) != {rec.split}:  # only where they differ
            meta["label_splits"] = rec.label_splits
        self._add(f"{rec.key}.jpg", jpg)
        self._add(f"{rec.key}.json", json.dumps(meta, sort_keys=True, ensure_ascii=False).encode("utf-8"))
        for task, label in rec.labels.items():
            if label >= 0:
                self.counts[task][label] += 1
        self.num_samples += 1

    def skip(self, rec: Record, reason: str) -> None:
        self.skipped.append({"key": rec.key, "source": rec.source, "split": rec.split, "reason": reason})

    def finish(self, state: Path, fingerprint: str) -> ShardResult:
        self.tar.close()
        with open(self.tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(self.tmp, self.path)
        result = ShardResult(name=self.plan.name, split=self.plan.split, num_samples=self.num_samples,
                             bytes=self.path.stat().st_size, sha256=sha256_file(self.path),
                             class_counts=self.counts, skipped=self.skipped, fingerprint=fingerprint)
        atomic_write_json(state / f"{self.plan.name}.json", dataclasses.asdict(result))
        return result

    def abort(self) -> None:
        self.tar.close()
        self.tmp.unlink(missing_ok=True)


def atomic_write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)  # the state directory of a first shard
    write_json(path, data)


def completed_shard(out: Path, name: str, fingerprint: str) -> ShardResult | None:
    """The recorded result of a finished shard, if its file is still intact."""
    state, path = out / STATE_DIR / f"{name}.json", out / name
    if not state.is_file() or not path.is_file():
        return None
    try:
        result = ShardResult(**json.loads(state.read_text()))
    except (json.JSONDecodeError, TypeError):
        return None
    if result.fingerprint != fingerprint or path.stat().st_size != result.bytes:
        return None
    return result if sha256_file(path) == result.sha256 else None


@contextlib.contextmanager
def worker_pool(workers: int) -> Iterator[cf.ProcessPoolExecutor | None]:
    """Encoding processes, started at once (before any progress-bar thread exists).

    fork where available: it needs no `if __name__ == "__main__"` guard in the caller's
    script, and the workers only run numpy/Pillow code, which is safe to fork into.
    """
    if workers <= 0:
        yield None
        return
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    pool = cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method))
    try:
        for future in [pool.submit(int) for _ in range(workers)]:
            future.result()
        yield pool
    finally:
        pool.shutdown(cancel_futures=True)


def write_shards(source: Source, plans: Sequence[ShardPlan], classes: dict[str, list[str]], out: Path,
                 params: EncodeParams, pool: cf.ProcessPoolExecutor | None, fingerprint: str,
                 on_result: Callable[[bool], None] = lambda ok: None, in_flight: int = 8,
                 on_shard: Callable[[ShardResult], None] = lambda result: None) -> list[ShardResult]:
    """Encode and write the planned shards, with at most `in_flight` images in memory; `on_shard`
    hears of each shard once it is complete on disk (the Hub push uploads it meanwhile)."""
    if source.sequential:   # a stream is read once, in source order, into all its open shards
        feed = sorted((r for p in plans for r in p.records), key=lambda r: r.pos)
    else:
        feed = [r for p in plans for r in p.records]
    sink = _Sink(plans, classes, out, fingerprint, on_result, on_shard)
    window: collections.deque = collections.deque()
    try:
        for rec in source.iter_images(feed):
            window.append((rec, pool.submit(_work, rec.image, params) if pool else _work(rec.image, params)))
            while len(window) > in_flight:
                sink.deliver(*window.popleft())
        while window:
            sink.deliver(*window.popleft())
    finally:
        sink.abort()
    missing = [p.name for p in plans if p.name not in sink.results]
    if missing:
        raise RuntimeError(f"the source ended before shards {missing[:5]} were complete (did the dataset change?)")
    return [sink.results[p.name] for p in plans]


class _Sink:
    """Routes encoded images to their shard writers in feed order; finishes full shards."""

    def __init__(self, plans: Sequence[ShardPlan], classes: dict[str, list[str]], out: Path, fingerprint: str,
                 on_result: Callable[[bool], None], on_shard: Callable[[ShardResult], None]):
        self.owner = {rec.key: plan for plan in plans for rec in plan.records}
        self.classes, self.out, self.fingerprint, self.on_result = classes, out, fingerprint, on_result
        self.on_shard = on_shard
        self.writers: dict[str, ShardWriter] = {}
        self.results: dict[str, ShardResult] = {}

    def deliver(self, rec: Record, outcome: Any) -> None:
        status, value = outcome.result() if isinstance(outcome, cf.Future) else outcome
        plan = self.owner[rec.key]
        if plan.name not in self.writers:
            self.writers[plan.name] = ShardWriter(self.out, plan, self.classes)
        writer = self.writers[plan.name]
        if status == "ok":
            writer.write(rec, *value)
        else:
            writer.skip(rec, value)
        self.on_result(status == "ok")
        writer.remaining -= 1
        if writer.remaining == 0:
            self.results[plan.name] = self.writers.pop(plan.name).finish(self.out / STATE_DIR, self.fingerprint)
            self.on_shard(self.results[plan.name])

    def abort(self) -> None:
        for writer in self.writers.values():
            writer.abort()
        self.writers.clear()


def verify_shards(directory: str | Path) -> list[str]:
    """Check every shard against the manifest; returns problems, each naming its shard."""
    try:
        manifest = load_manifest(directory)
    except ManifestError as exc:
        return [str(exc)]
    problems = []
    for split, info in manifest.splits.items():
        for shard, source in zip(info.shards, manifest.shard_sources(split)):
            if is_remote(source.location):
                problems += _remote_shard_problems(shard, source)
                continue
            path = Path(source.location)
            if not path.is_file():
                problems.append(f"{shard.name}: missing")
                continue
            if path.stat().st_size != shard.bytes:
                problems.append(f"{shard.name}: size {path.stat().st_size} != manifest {shard.bytes}")
            elif sha256_file(path) != shard.sha256:
                problems.append(f"{shard.name}: sha256 differs from the manifest (corrupt or replaced)")
            try:
                count, incomplete = count_samples(path)
            except (tarfile.TarError, OSError) as exc:
                problems.append(f"{shard.name}: unreadable tar: {exc}")
                continue
            if count != shard.num_samples:
                problems.append(f"{shard.name}: {count} samples != manifest {shard.num_samples}")
            if incomplete:
                problems.append(f"{shard.name}: samples without jpg/json: {incomplete[:3]}")
    return problems


def _remote_shard_problems(shard: ShardInfo, source: ShardSource) -> list[str]:
    """A remote shard streamed once: its size and sha256 (checked at its end), then its samples."""
    try:
        count, incomplete = count_samples(source)
    except RemoteShardError as exc:
        return [f"{shard.name}: {exc}"]
    except (tarfile.TarError, OSError) as exc:
        return [f"{shard.name}: unreadable tar: {exc}"]
    problems = [f"{shard.name}: {count} samples != manifest {shard.num_samples}"] if count != shard.num_samples else []
    return problems + ([f"{shard.name}: samples without jpg/json: {incomplete[:3]}"] if incomplete else [])


class Throughput:
    """Counts processed images for the summary line."""

    def __init__(self) -> None:
        self.start, self.ok, self.skipped = time.perf_counter(), 0, 0

    def __call__(self, ok: bool) -> None:
        if ok:
            self.ok += 1
        else:
            self.skipped += 1

    @property
    def rate(self) -> float:
        return (self.ok + self.skipped) / max(time.perf_counter() - self.start, 1e-9)
