"""Training loader vs the seed's way, and loader memory as the dataset grows 10x.

The seed's way: a map-style `Dataset` that opens WikiArt-sized originals (generated JPEGs with a
long side of 1500-4000 px) with PIL and applies torchvision's RandomResizedCrop, flip,
ColorJitter, ToTensor, RandomErasing and Normalize (the same recipe). Ours: `build_train_data`
over shards built from the same originals by the real shard builder (448-px shorter side).
Both through a DataLoader with the same number of workers (default 1: "per core"), batch 16,
384 px; rates count samples after the first batch (worker start-up excluded for both).
Our loader hands uint8 batches to the device stage (jitter, erasing, normalisation); on a
CPU-only machine that runs in the main process, so a row with it included is shown too.
Ours is consumed as the training step consumes it: each batch handed back once used, so the
worker reuses its buffers (`wikiart.data.buffers`); a row with every batch kept instead (a
fresh shared-memory buffer per batch) shows what that saves, the two taking turns.

Memory: peak RSS of a loader worker reading the shards once (1x) and ten times (10x: the
same shard files listed 10 times in the manifest).

    python -m benchmarks.loader [--originals 24] [--workers 1] [--rounds 4]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from benchmarks.shard_build import write_dataset, write_originals
from wikiart.data.buffers import release_batch
from wikiart.config.options import DataConfig
from wikiart.data.loader import build_train_data
from wikiart.data.device import DeviceAugment
from wikiart.formats.manifest import load_manifest
from wikiart.prep.build import build_shards, parse_build_config
from wikiart.data.transforms import ERASING_RATIO, ERASING_SCALE, IMAGENET_MEAN, IMAGENET_STD

CFG = DataConfig(task="genre", image_size=384, batch_size=16, shuffle_buffer=64, balance="none")


def bench_shard_images(count: int, seed: int = 0) -> list[bytes]:
    """`count` smooth, grainy 'paintings' as JPEGs with a 448-px shorter side (shard-sized)."""
    rng = np.random.default_rng(seed)
    grain = rng.normal(0, 12, size=(800, 800, 3)).astype(np.float32)
    out = []
    for i in range(count):
        long_side = int(rng.integers(448, 680))
        w, h = (448, long_side) if i % 2 else (long_side, 448)
        small = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
        img = np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC), dtype=np.float32)
        img += grain[:h, :w]
        buf = io.BytesIO()
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


class SeedDataset(Dataset):
    """The seed's loader: decode the original with PIL, torchvision transforms per sample."""

    def __init__(self, paths: list[Path], cfg: DataConfig):
        self.paths = paths
        self.transform = T.Compose([
            T.RandomResizedCrop(cfg.image_size, scale=tuple(cfg.rrc_scale), ratio=tuple(cfg.rrc_ratio)),
            T.RandomHorizontalFlip(), T.ColorJitter(*cfg.color_jitter), T.ToTensor(),
            T.RandomErasing(p=cfg.erasing_p, scale=ERASING_SCALE, ratio=ERASING_RATIO, value="random"),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        with Image.open(self.paths[i]) as img:
            return self.transform(img.convert("RGB")), 0


def steady_rate(batches, on_batch=None) -> float:
    """Samples/s after the first batch (start-up excluded)."""
    start, n = None, 0
    for batch in batches:
        images = batch[0] if isinstance(batch, (list, tuple)) else batch["image"]
        if on_batch is not None:
            on_batch(batch)
        if start is None:
            start = time.perf_counter()
        else:
            n += len(images)
    return n / (time.perf_counter() - start)


def build_bench_shards(root: Path, count: int) -> tuple[list[Path], Path]:
    """Originals + shards built from them by the real builder; returns (original paths, shard dir)."""
    originals = write_originals(root / "originals", count, min_long_side=1500)
    images, csvs = write_dataset(root / "dataset", originals, 1)
    shards = root / "shards"
    build_shards(parse_build_config(["--out", str(shards), "--images-root", str(images), "--csv-dir", str(csvs),
                                     "--workers", "0", "--no-progress", "--min-shards", "2",
                                     "--min-val-shards", "1"]))
    return [root / "originals" / rel for rel, _ in originals], shards


def repeated_manifest(shards: Path, out: Path, times: int) -> Path:
    """A manifest listing every train shard `times` times (hard links): a dataset `times` larger."""
    out.mkdir()
    data = json.loads((shards / "manifest.json").read_text())
    entries = []
    for copy in range(times):
        for shard in data["splits"]["train"]["shards"]:
            name = f"c{copy:02d}-{shard['name']}"
            os.link(shards / shard["name"], out / name)
            entries.append({**shard, "name": name})
    data["splits"]["train"]["shards"] = entries
    counts = data["splits"]["train"]["class_counts"]
    data["splits"]["train"]["class_counts"] = {t: [c * times for c in v] for t, v in counts.items()}
    for shard in data["splits"].get("val", {}).get("shards", []):
        os.link(shards / shard["name"], out / shard["name"])
    (out / "manifest.json").write_text(json.dumps(data))
    return out


def worker_peak_rss_mb(shards: Path, cfg: DataConfig) -> float:
    """Peak RSS (VmHWM) of the single loader worker after it has streamed one epoch."""
    info = build_train_data(load_manifest(shards), replace(cfg, workers=1), rank=0, world_size=1, epoch=0, seed=0)
    it = iter(info.loader)
    pid = it._workers[0].pid  # noqa: SLF001 - the worker process to measure
    peak = 0.0
    for _ in range(info.num_batches):
        release_batch(next(it))  # as the training step does
        status = Path(f"/proc/{pid}/status").read_text()
        peak = max(peak, int(next(l for l in status.splitlines() if l.startswith("VmHWM:")).split()[1]) / 1024)
    del it
    return peak


def compare(originals: list[Path], shards: Path, workers: int, rounds: int) -> dict[str, float]:
    """Samples/s of the seed's way and of ours; ours with batches handed back as the training step
    does (reused buffers) and without (a fresh shared-memory buffer per batch, PyTorch's way),
    taking turns for `rounds` epochs each (the VM drifts), the median of each reported."""
    seed_loader = DataLoader(SeedDataset(originals, CFG), batch_size=CFG.batch_size, shuffle=True,
                             num_workers=workers, generator=torch.Generator().manual_seed(0))
    seed = steady_rate(seed_loader)
    cfg = replace(CFG, workers=workers)
    manifest = load_manifest(shards)

    def epoch(index: int, on_batch) -> float:
        return steady_rate(build_train_data(manifest, cfg, rank=0, world_size=1, epoch=index, seed=0).loader,
                           on_batch)

    reused, fresh = [], []
    for index in range(rounds):
        reused.append(epoch(index, release_batch))
        fresh.append(epoch(index, None))
    stage = DeviceAugment.for_recipe(cfg.color_jitter, cfg.erasing_p, IMAGENET_MEAN, IMAGENET_STD)

    def device_stage(batch: dict) -> None:
        stage(batch, torch.device("cpu"), 0)
        release_batch(batch)

    return {"seed": seed, "ours": float(np.median(reused)), "ours_fresh_buffers": float(np.median(fresh)),
            "reuse_gain": float(np.median(np.divide(reused, fresh))),  # per round: turns side by side
            "ours_with_device_stage_on_cpu": epoch(rounds, device_stage)}


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--originals", type=int, default=24, help="distinct WikiArt-sized originals")
    parser.add_argument("--repeat", type=int, default=24, help="shard-loader epochs are this many times the originals")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=4, help="epochs of each of our two variants, taking turns")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="wikiart-loader-") as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        originals, shards = build_bench_shards(root, args.originals)
        print(f"wrote {len(originals)} originals and their shards in {time.perf_counter() - start:.0f} s")
        big = repeated_manifest(shards, root / "repeat", args.repeat)  # enough batches for a steady rate
        # Memory first: a forked worker's RSS also counts the pages it shares with the main
        # process, and the rate rounds below grow the main process.
        small_rss = worker_peak_rss_mb(big, CFG)
        large_rss = worker_peak_rss_mb(repeated_manifest(shards, root / "x10", args.repeat * 10), CFG)
        rates = compare(originals * 2, big, args.workers, args.rounds)
    w = args.workers
    print(f"\n| loader (384 px, batch 16, {w} worker) | samples/s | per worker | vs seed |\n|---|---|---|---|")
    for name, key in (("seed: originals + PIL + torchvision", "seed"),
                      ("ours: shards, uint8 batches in reused buffers", "ours"),
                      ("ours, a fresh shared-memory buffer per batch", "ours_fresh_buffers"),
                      ("ours + device stage on this CPU", "ours_with_device_stage_on_cpu")):
        print(f"| {name} | {rates[key]:.1f} | {rates[key] / w:.1f} | {rates[key] / rates['seed']:.1f}x |")
    print(f"\nreused / fresh buffers, median of the {args.rounds} rounds' ratios: {rates['reuse_gain']:.2f}")
    print(f"loader worker peak RSS: {small_rss:.0f} MB at 1x, {large_rss:.0f} MB at 10x the dataset")
    return {**rates, "speedup": rates["ours"] / rates["seed"], "per_worker": rates["ours"] / w,
            "worker_rss_1x": small_rss, "worker_rss_10x": large_rss}


if __name__ == "__main__":
    main()
