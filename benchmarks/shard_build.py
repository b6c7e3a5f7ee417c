"""Shard-build throughput and memory on WikiArt-sized originals.

    python -m benchmarks.shard_build [--images 40] [--scale 10] [--workers 2]

Writes synthetic paintings as 1000-4000 px JPEGs into a temporary ArtGAN-style image tree
(the 10x set links the same files under more names: decode cost is per file, not per
content), then builds shards through the ArtGAN path, each run in a fresh process so
`getrusage` reports that run's peak RSS alone. Prints images/s, images/s per core, and the
peak RSS of the builder process and of its largest worker at 1x and 10x the dataset size.
Default arguments run in well under two minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from wikiart.formats.labels import ARTGAN_GENRES
from wikiart.prep.synthetic import GENRE_NAMES, make_painting


def write_originals(root: Path, count: int, seed: int = 0, min_long_side: int = 1000) -> list[tuple[str, int]]:
    """`count` JPEGs with a long side of `min_long_side`-4000 px; returns (relative path, genre label)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(count):
        painting = make_painting(i, seed=seed, max_side=640)
        long_side = int(rng.uniform(min_long_side, 4000))
        scale = long_side / max(painting.width, painting.height)
        size = (round(painting.width * scale), round(painting.height * scale))
        img = painting.render().resize(size, Image.Resampling.BILINEAR)
        pixels = np.asarray(img).astype(np.int16)
        pixels += rng.integers(-6, 7, size=pixels.shape[:2], dtype=np.int16)[..., None]   # canvas grain
        rel = f"Synthetic/painting-{i:05d}.jpg"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(root / rel, "JPEG", quality=90)
        rows.append((rel, ARTGAN_GENRES.index(GENRE_NAMES[painting.genre])))
    return rows


def write_dataset(root: Path, originals: list[tuple[str, int]], scale: int) -> tuple[Path, Path]:
    """An image tree with every original linked `scale` times, plus genre split files (10 % val)."""
    images, csvs = root / "images", root / "csv"
    csvs.mkdir(parents=True)
    train, val = [], []
    source = root.parent / "originals"
    for copy in range(scale):
        for i, (rel, label) in enumerate(originals):
            name = f"copy{copy:03d}/{Path(rel).name}"
            (images / name).parent.mkdir(parents=True, exist_ok=True)
            os.link(source / rel, images / name)
            (val if (copy * len(originals) + i) % 10 == 0 else train).append(f"{name},{label}\n")
    (csvs / "genre_train.csv").write_text("".join(train))
    (csvs / "genre_val.csv").write_text("".join(val))
    return images, csvs


def peak_rss_mb() -> float:
    """This process's own peak RSS. /proc's VmHWM, because ru_maxrss survives exec: a child
    started from a large parent would report the parent's size."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(images: str, csvs: str, out: str, workers: int, short_side: int) -> None:
    """Child-process mode: build once, print seconds and peak RSS as JSON."""
    from wikiart.prep.build import build_shards, parse_build_config

    start = time.perf_counter()
    manifest = build_shards(parse_build_config(
        ["--out", out, "--images-root", images, "--csv-dir", csvs, "--workers", str(workers),
         "--short-side", str(short_side), "--no-progress"]))
    seconds = time.perf_counter() - start
    total = sum(manifest.num_samples(s) for s in ("train", "val"))
    shard_mb = max(s.bytes for split in manifest.splits.values() for s in split.shards) / 1e6
    print(json.dumps({"images": total, "seconds": seconds, "shard_mb": shard_mb,
                      "main_mb": peak_rss_mb(),
                      "worker_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))


def run(images: Path, csvs: Path, out: Path, workers: int, short_side: int) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.shard_build", "--measure", str(images), str(csvs), str(out),
           "--workers", str(workers), "--short-side", str(short_side)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=80, help="distinct originals (the 1x dataset)")
    parser.add_argument("--scale", type=int, default=10, help="size of the large dataset, in multiples of 1x")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--short-side", type=int, default=448)
    parser.add_argument("--measure", nargs=3, metavar=("IMAGES", "CSVS", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--write-originals", metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        measure(*args.measure, workers=args.workers, short_side=args.short_side)
        return {}
    if args.write_originals:
        print(json.dumps(write_originals(Path(args.write_originals), args.images)))
        return {}
    with tempfile.TemporaryDirectory(prefix="wikiart-bench-") as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        # in a child process, so this (parent) process stays small for the RSS measurements
        proc = subprocess.run([sys.executable, "-m", "benchmarks.shard_build", "--images", str(args.images),
                               "--write-originals", str(root / "originals")], capture_output=True, text=True,
                              check=True)
        originals = [tuple(row) for row in json.loads(proc.stdout.strip().splitlines()[-1])]
        sizes = []
        for rel, _ in originals:
            with Image.open(root / "originals" / rel) as img:
                sizes.append(img.size)
        mb = sum((root / "originals" / rel).stat().st_size for rel, _ in originals) / 1e6
        print(f"wrote {len(originals)} originals ({min(max(s) for s in sizes)}-{max(max(s) for s in sizes)} px, "
              f"{mb / len(originals):.1f} MB each on average) in {time.perf_counter() - start:.0f} s")
        rows = []
        for scale, workers in ((1, 1), (1, args.workers), (args.scale, args.workers)):
            images, csvs = write_dataset(root / f"x{scale}-w{workers}", originals, scale)
            result = run(images, csvs, root / f"out-x{scale}-w{workers}", workers, args.short_side)
            rows.append((f"{scale}x", workers, result))
        print("\n| dataset | images | workers | seconds | images/s | images/s/core | builder RSS MB "
              "| largest worker RSS MB | largest shard MB |")
        print("|---|---|---|---|---|---|---|---|---|")
        for name, workers, r in rows:
            rate = r["images"] / r["seconds"]
            print(f"| {name} | {r['images']} | {workers} | {r['seconds']:.1f} | {rate:.1f} | "
                  f"{rate / max(workers, 1):.1f} | {r['main_mb']:.0f} | {r['worker_mb']:.0f} | {r['shard_mb']:.1f} |")
    small, large = rows[1][2], rows[2][2]
    return {"per_core": small["images"] / small["seconds"] / max(rows[1][1], 1),
            "builder_rss_1x": small["main_mb"], "builder_rss_10x": large["main_mb"],
            "worker_rss_1x": small["worker_mb"], "worker_rss_10x": large["worker_mb"]}


if __name__ == "__main__":
    main()
