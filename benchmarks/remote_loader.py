"""Shards from a local directory vs from an HTTP URL, side by side in one run.

A static web server (`python -m http.server`, a separate process on 127.0.0.1: no range support,
as a plain server may have none) serves the same 448-px shards the loader benchmark builds. Two
measures, each taking turns local / HTTP for `--rounds` rounds, medians printed with their ratio:

- raw read: MB/s of `formats.shard.iter_shard` over every train shard (tar parsing included,
  no decoding): the transport's own cost;
- training loader: augmented 384-px samples/s of `build_train_data` with `--workers` workers, as
  in `benchmarks.loader` (decode, crop, flip, collation), start-up excluded.

    python -m benchmarks.remote_loader [--originals 48] [--workers 1] [--rounds 3]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

from benchmarks.loader import CFG, build_bench_shards, steady_rate
from wikiart.data.buffers import release_batch
from wikiart.data.loader import build_train_data
from wikiart.formats.manifest import load_manifest
from wikiart.formats.shard import iter_shard


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(directory: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                             "--directory", str(directory)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    for _ in range(100):
        try:
            urllib.request.urlopen(url + "manifest.json", timeout=1).read()
            return proc, url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the HTTP server did not start")


def raw_read_mb_s(location: str) -> float:
    manifest = load_manifest(location)
    sources = manifest.shard_sources("train")
    start = time.perf_counter()
    for source in sources:
        for _ in iter_shard(source):
            pass
    return sum(s.bytes for s in sources) / 2**20 / (time.perf_counter() - start)


def loader_rate(location: str, workers: int) -> float:
    info = build_train_data(load_manifest(location), replace(CFG, workers=workers), rank=0, world_size=1,
                            epoch=0, seed=0)
    return steady_rate(info.loader, on_batch=release_batch)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--originals", type=int, default=48)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        _, shards = build_bench_shards(Path(tmp), args.originals)
        server, url = start_server(shards)
        try:
            results = {"raw": {"local": [], "http": []}, "loader": {"local": [], "http": []}}
            for _ in range(args.rounds):
                for name, where in (("local", str(shards)), ("http", url)):
                    results["raw"][name].append(raw_read_mb_s(where))
                    results["loader"][name].append(loader_rate(where, args.workers))
        finally:
            server.kill()
    out = {}
    print(f"{'measure':<34} {'local':>10} {'HTTP':>10} {'HTTP/local':>11}")
    for measure, unit in (("raw", "MB/s"), ("loader", "samples/s")):
        local, http = (statistics.median(results[measure][k]) for k in ("local", "http"))
        out[measure] = http / local
        print(f"{measure + ' (' + unit + ')':<34} {local:>10.1f} {http:>10.1f} {http / local:>11.2f}")
    return out


if __name__ == "__main__":
    main()
