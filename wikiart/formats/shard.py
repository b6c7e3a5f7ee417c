"""The shard tar, read: the one reader of the member format `prep.write.ShardWriter` writes
(`KEY.jpg` + `KEY.json` per sample, see `formats.manifest`). The loader, the census, verify and
the outlier contact sheet all read shards through here.

Members are grouped into samples as webdataset's `group_by_keys` does (consecutive members
sharing the base name up to its first dot; a repeated extension in one sample is damage), in
plain tarfile and without webdataset, whose import loads torch: prep and verify must not.
Reading is in place: a seek and one read per member, where webdataset's own iterator opens the
tar in stream mode and gathers each member from 10 KiB blocks (55-80 us more per sample of a
448-px shard on the development VM). A local shard file can always seek.
"""

from __future__ import annotations

import collections
import json
import logging
import lzma
import re
import tarfile
import zlib
from pathlib import Path
from typing import Iterable, Iterator

log = logging.getLogger("wikiart.formats.shard")
META_FILE = re.compile(r"__[^/]*__($|/)")  # webdataset's skip_meta
_KEY_AND_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's base_plus_ext
# What reading a damaged tar can raise (a compressed shard's decompressor raises its own errors).
SHARD_READ_ERRORS = (tarfile.TarError, ValueError, OSError, EOFError, zlib.error, lzma.LZMAError)


def iter_shard(path: str | Path) -> Iterator[dict]:
    """Raw samples {"__key__", "__url__", "jpg", "json", ...} of one tar shard in file order.

    A missing file raises FileNotFoundError naming it; a tar that breaks part-way (truncated,
    garbage) is logged and ends early, keeping the samples read before the damage.
    """
    with open(path, "rb") as fh:
        try:
            with tarfile.open(fileobj=fh, mode="r:*") as tar:
                yield from _group_by_key(_members(tar, str(path)))
        except SHARD_READ_ERRORS as exc:
            # A compressed shard's decompressor raises its own errors (tarfile's stream mode
            # wrapped them in ReadError; random access does not).
            log.warning("shard %s is damaged, skipping the rest of it: %s", path, exc)


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


def iter_shard_json(path: str | Path, limit: int) -> Iterator[tuple[str, bytes]]:
    """(key, json bytes) of the first `limit` samples of one shard, reading no image byte (tar
    headers are walked with seeks: a whole split's labels in seconds). Damage ends the shard,
    logged, keeping what was read before it, as `iter_shard` does; a missing file raises."""
    with open(path, "rb") as fh:
        try:
            with tarfile.open(fileobj=fh, mode="r:*") as tar:
                while limit > 0 and (info := tar.next()) is not None:
                    match = _KEY_AND_EXT.match(info.name)
                    if info.isreg() and match and match.group(2).lower() == "json":
                        limit -= 1
                        yield match.group(1), tar.extractfile(info).read()
                    tar.members.clear()
        except SHARD_READ_ERRORS as exc:
            log.warning("shard %s is damaged, skipping the rest of it: %s", path, exc)


def iter_shard_samples(paths: Iterable[str | Path]) -> Iterator[tuple[str, bytes, dict]]:
    """(key, jpg bytes, json dict) of every complete sample in the given tars (tools, tests)."""
    for path in paths:
        for raw in iter_shard(path):
            if "jpg" in raw and "json" in raw:
                yield raw["__key__"], raw["jpg"], json.loads(raw["json"])


def count_samples(path: str | Path) -> tuple[int, list[str]]:
    """Samples in a shard tar and the keys that lack a jpg or json member (verify); a damaged
    tar raises, so verify reports it."""
    members: dict[str, set[str]] = collections.defaultdict(set)
    with tarfile.open(path) as tar:
        for info in tar:
            match = _KEY_AND_EXT.match(info.name)
            if match and info.isreg() and not META_FILE.match(info.name):
                members[match.group(1)].add(match.group(2).lower())
    return len(members), sorted(k for k, exts in members.items() if not {"jpg", "json"} <= exts)
