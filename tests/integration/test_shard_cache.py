"""--shard-cache (wikiart.formats.shard_cache): three processes fetching one shard download it once
from a real HTTP server on 127.0.0.1; the cache keeps to its size bound, least recently used first."""

from __future__ import annotations

import multiprocessing

from tests.support.shard_server import serve
from wikiart.formats.manifest import load_manifest
from wikiart.formats.shard import ShardSource, iter_shard
from wikiart.formats.shard_cache import ShardCache


def samples(source) -> list[tuple[str, bytes, bytes]]:
    return [(raw["__key__"], raw["jpg"], raw["json"]) for raw in iter_shard(source)]


def _fetch(cache_dir: str, source: ShardSource, queue) -> None:
    queue.put(str(ShardCache(cache_dir).fetch(source)))


def test_the_shard_cache_downloads_once_for_every_process_and_stays_in_bounds(synthetic_shards, tmp_path):
    manifest = load_manifest(synthetic_shards)
    shards = manifest.split("train").shards[:3]
    with serve(synthetic_shards) as (url, faults):
        sources = [ShardSource(url + s.name, s.bytes, s.sha256, str(tmp_path / "cache")) for s in shards]
        ctx = multiprocessing.get_context("spawn")
        queue = ctx.Queue()
        procs = [ctx.Process(target=_fetch, args=(str(tmp_path / "cache"), sources[0], queue)) for _ in range(3)]
        for p in procs:
            p.start()
        paths = {queue.get(timeout=60) for _ in procs}
        for p in procs:
            p.join(60)
        assert paths == {str(tmp_path / "cache" / f"{shards[0].sha256}.tar")}
        assert faults.requests[shards[0].name] == 1  # three processes, one download
        assert samples(sources[0]) == samples(synthetic_shards / shards[0].name)  # read from the cache
        assert faults.requests[shards[0].name] == 1
        # Room for two shards: the least recently used one goes.
        small = ShardCache(tmp_path / "cache", limit_bytes=shards[0].bytes + shards[1].bytes + shards[2].bytes - 1)
        small.fetch(sources[1])
        small.fetch(sources[0])  # used again: now the most recent
        small.fetch(sources[2])
        left = sorted(p.name for p in (tmp_path / "cache").glob("*.tar"))
        assert left == sorted(f"{s.sha256}.tar" for s in (shards[0], shards[2]))
