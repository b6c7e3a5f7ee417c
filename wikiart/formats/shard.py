"""The shard tar, read: the one reader of the member format `prep.write.ShardWriter` writes
(`KEY.jpg` + `KEY.json` per sample, see `formats.manifest`). The loader, the census, verify and
the outlier contact sheet all read shards through here.

Members are grouped into samples as webdataset's `group_by_keys` does (consecutive members
sharing the base name up to its first dot; a repeated extension in one sample is damage), in
plain tarfile and without webdataset, whose import loads torch: prep and verify must not.
Reading is in place: a seek and one read per member, where webdataset's own iterator opens the
tar in stream mode and gathers each member from 10 KiB blocks (55-80 us more per sample of a
448-px shard on the development VM). A local shard file can always seek. A remote shard (`ShardSource` with a URL, see
`formats.location`) is read as a stream, once, front to back; with a shard cache it is first
downloaded whole into the cache and then read in place like a local one.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import logging
import lzma
import re
import tarfile
import zlib
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

from .location import RemoteShardError, is_remote, open_remote

log = logging.getLogger("wikiart.formats.shard")
META_FILE = re.compile(r"__[^/]*__($|/)")  # webdataset's skip_meta
_KEY_AND_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's base_plus_ext
# What reading a damaged tar can raise (a compressed shard's decompressor raises its own errors).
SHARD_READ_ERRORS = (tarfile.TarError, ValueError, OSError, EOFError, zlib.error, lzma.LZMAError)


@dataclasses.dataclass(frozen=True)
class ShardSource:
    """One shard of a manifest: where it is (a path or a URL), what the manifest says of its bytes,
    and the shard cache directory that remote reads go through (None: stream every time)."""
    location: str
    bytes: int | None = None
    sha256: str | None = None
    cache: str | None = None

    def __str__(self) -> str:
        return self.location


def _source(shard: str | Path | ShardSource) -> ShardSource:
    return shard if isinstance(shard, ShardSource) else ShardSource(str(shard))


@contextlib.contextmanager
def _opened(shard: ShardSource) -> Iterator[tuple[BinaryIO, str]]:
    """(file object, tarfile mode): local files and cached shards seek, remote ones stream."""
    location = shard.location
    if is_remote(location) and shard.cache:
        from .shard_cache import ShardCache
        location = str(ShardCache(shard.cache).fetch(shard))
    if is_remote(location):
        with open_remote(location, shard.bytes, shard.sha256) as stream:
            yield stream, "r|*"
            while stream.read(1 << 20):  # to the end: the size and sha256 check of a whole shard
                pass
    else:
        with open(location, "rb") as fh:
            yield fh, "r:*"


def iter_shard(shard: str | Path | ShardSource) -> Iterator[dict]:
    """Raw samples {"__key__", "__url__", "jpg", "json", ...} of one tar shard in file order.

    A missing file raises FileNotFoundError naming it; a tar that breaks part-way (truncated,
    garbage) is logged and ends early, keeping the samples read before the damage. A remote shard
    that cannot be read after the retries, or differs from the manifest, raises RemoteShardError.
    """
    shard = _source(shard)
    with _opened(shard) as (fh, mode):
        try:
            with tarfile.open(fileobj=fh, mode=mode) as tar:
                yield from _group_by_key(_members(tar, shard.location))
        except RemoteShardError:
            raise
        except SHARD_READ_ERRORS as exc:
            # A compressed shard's decompressor raises its own errors (tarfile's stream mode
            # wrapped them in ReadError; random access does not).
            log.warning("shard %s is damaged, skipping the rest of it: %s", shard, exc)


def _members(tar: tarfile.TarFile, path: str) -> Iterator[tuple[str, bytes, str]]:
    """(name, bytes, path) of a shard's regular files, `__meta__` files skipped."""
    while (info := tar.next()) is not None:
        if info.isreg() and not META_FILE.match(info.name):
            yield info.name, tar.extractfile(info).read(), path
        tar.members.clear()  # nothing to look up later: a long shard keeps memory flat


def _group_by_key(members: Iterable[tuple[str, bytes, str]]) -> Iterator[dict]:
    sample: dict | None = None
    for name, data, path in members:
        match = _KEY_AND_EXT.match(name)
        if not match:
            continue
        key, ext = match.group(1), match.group(2).lower()
        if sample is None or key != sample["__key__"]:
            if sample is not None:
                yield sample
            sample = {"__key__": key, "__url__": path}
        if ext in sample:
            raise ValueError(f"{name}: duplicate file name in tar file {ext} {sample.keys()}")
        sample[ext] = data
    if sample is not None:
        yield sample


def iter_shard_json(shard: str | Path | ShardSource, limit: int) -> Iterator[tuple[str, bytes]]:
    """(key, json bytes) of the first `limit` samples of one shard, reading no image byte of a
    local shard (tar headers are walked with seeks: a whole split's labels in seconds; a remote
    one is streamed through). Damage ends the shard, logged, keeping what was read before it, as
    `iter_shard` does; a missing file raises."""
    shard = _source(shard)
    with _opened(shard) as (fh, mode):
        try:
            with tarfile.open(fileobj=fh, mode=mode) as tar:
                while limit > 0 and (info := tar.next()) is not None:
                    match = _KEY_AND_EXT.match(info.name)
                    if info.isreg() and match and match.group(2).lower() == "json":
                        limit -= 1
                        yield match.group(1), tar.extractfile(info).read()
                    tar.members.clear()
        except RemoteShardError:
            raise
        except SHARD_READ_ERRORS as exc:
            log.warning("shard %s is damaged, skipping the rest of it: %s", shard, exc)


def iter_shard_samples(paths: Iterable[str | Path | ShardSource]) -> Iterator[tuple[str, bytes, dict]]:
    """(key, jpg bytes, json dict) of every complete sample in the given tars (tools, tests)."""
    for path in paths:
        for raw in iter_shard(path):
            if "jpg" in raw and "json" in raw:
                yield raw["__key__"], raw["jpg"], json.loads(raw["json"])


def count_samples(shard: str | Path | ShardSource) -> tuple[int, list[str]]:
    """Samples in a shard tar and the keys that lack a jpg or json member (verify); a damaged
    tar raises, so verify reports it (a remote one read to its end is checked against the
    manifest's size and sha256 too)."""
    members: dict[str, set[str]] = collections.defaultdict(set)
    with _opened(_source(shard)) as (fh, mode), tarfile.open(fileobj=fh, mode=mode) as tar:
        for info in tar:
            match = _KEY_AND_EXT.match(info.name)
            if match and info.isreg() and not META_FILE.match(info.name):
                members[match.group(1)].add(match.group(2).lower())
    return len(members), sorted(k for k, exts in members.items() if not {"jpg", "json"} <= exts)
