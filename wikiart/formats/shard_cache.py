"""`--shard-cache DIR`: remote shards kept on local disk, so later epochs read them in place.

Entries are named by the manifest's sha256 of the shard (`DIR/<sha256>.tar`): content-addressed,
so two datasets or two revisions never collide, and an entry is only ever written whole and
checked (downloaded to a temporary name, size and sha256 verified while streaming, then renamed).
Several ranks and loader workers on one node share the directory: a download takes the entry's
lock (`fcntl.flock` on `DIR/locks/<sha256>`), so one process fetches and the others wait and then
read the finished file. The cache stays under its size bound (`WIKIART_SHARD_CACHE_GB`, default 50):
before a download the least recently used entries are removed. A reader that still has an evicted
file open keeps reading it (POSIX unlink semantics).
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from .location import RemoteShardError, open_remote

DEFAULT_LIMIT_GB = 50.0
COPY_BLOCK = 1 << 20


class ShardCache:
    def __init__(self, directory: str | Path, limit_bytes: int | None = None):
        self.dir = Path(directory)
        if limit_bytes is None:
            limit_bytes = int(float(os.environ.get("WIKIART_SHARD_CACHE_GB", DEFAULT_LIMIT_GB)) * 2**30)
        self.limit = limit_bytes

    def entry(self, sha256: str) -> Path:
        return self.dir / f"{sha256}.tar"

    def fetch(self, shard) -> Path:
        """The local path of `shard` (a formats.shard.ShardSource with a URL), downloaded if absent."""
        if not shard.sha256 or shard.bytes is None:
            raise RemoteShardError(f"{shard.location}: --shard-cache needs the manifest's size and sha256 "
                                   f"of every shard")
        path = self.entry(shard.sha256)
        (self.dir / "locks").mkdir(parents=True, exist_ok=True)
        with open(self.dir / "locks" / shard.sha256, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one download per entry; the others wait for it
            if _complete(path, shard.bytes):
                os.utime(path)  # recently used: evicted last
                return path
            self._make_room(shard.bytes)
            self._download(shard, path)
        return path

    def _download(self, shard, path: Path) -> None:
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        try:
            with open_remote(shard.location, shard.bytes, shard.sha256) as stream, open(tmp, "wb") as out:
                while block := stream.read(COPY_BLOCK):  # the end of the stream checks size and sha256
                    out.write(block)
            os.replace(tmp, path)
        except RemoteShardError:
            tmp.unlink(missing_ok=True)
            raise
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise RemoteShardError(f"--shard-cache {self.dir}: cannot store {shard.location}: {exc}") from exc

    def _make_room(self, incoming: int) -> None:
        entries = sorted(self.dir.glob("*.tar"), key=_last_used)
        total = sum(_size(p) for p in entries)
        while entries and total + incoming > self.limit:
            oldest = entries.pop(0)
            total -= _size(oldest)
            oldest.unlink(missing_ok=True)


def _complete(path: Path, size: int) -> bool:
    return path.is_file() and path.stat().st_size == size


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _last_used(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return time.time()
