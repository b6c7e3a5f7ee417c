"""Training-loader throughput: augmented 384-px samples per second per worker.

Writes ~300 JPEGs with a 448-px shorter side (the production shard size) into temporary
shards, then times decoding alone, decoding + the training augmentation in one process
(= one worker), the real DataLoader (2 workers by default), and the eval transform.

    python -m benchmarks.loader [--images 300] [--workers 1 2]
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from PIL import Image

from wikiart.config import DataConfig
from wikiart.data import build_train_data
from wikiart.data_stream import decode_image
from wikiart.manifest import Manifest, ShardInfo, SplitInfo, load_manifest, sha256_file
from wikiart.transforms import build_eval_transform, build_train_transform, make_generator


def painting(rng: np.random.Generator, w: int, h: int, grain: np.ndarray) -> bytes:
    """A smooth random 'painting' with brush-like texture: JPEG sizes like real scans at 448 px."""
    small = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    img = np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC), dtype=np.float32)
    top, left = rng.integers(0, grain.shape[0] - h + 1), rng.integers(0, grain.shape[1] - w + 1)
    img += grain[top:top + h, left:left + w]
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def write_shards(root: Path, count: int, per_shard: int = 100) -> Manifest:
    """`count` paintings, half portrait and half landscape, in shards of `per_shard`."""
    rng = np.random.default_rng(0)
    grain = rng.normal(0, 12, size=(800, 800, 3)).astype(np.float32)  # sliced per image: cheap
    split = SplitInfo(class_counts={"genre": [0] * 10})
    for shard_no, start in enumerate(range(0, count, per_shard)):
        name = f"train-{shard_no:06d}.tar"
        with wds.TarWriter(str(root / name), encoder=False) as sink:
            for i in range(start, min(count, start + per_shard)):
                long_side = int(rng.integers(448, 680))
                w, h = (448, long_side) if i % 2 else (long_side, 448)
                genre = int(rng.integers(10))
                split.class_counts["genre"][genre] += 1
                meta = {"key": f"p{i:05d}", "labels": {"genre": genre}, "source": "bench", "orig_size": [w, h]}
                sink.write({"__key__": f"p{i:05d}", "jpg": painting(rng, w, h, grain),
                            "json": json.dumps(meta).encode()})
        split.shards.append(ShardInfo(name, min(per_shard, count - start), (root / name).stat().st_size,
                                      sha256_file(root / name)))
    Manifest(classes={"genre": [f"g{i}" for i in range(10)]}, splits={"train": split}).save(root)
    return load_manifest(root)


def raw_images(manifest: Manifest) -> list[bytes]:
    out = []
    for path in manifest.shard_paths("train"):
        out += [s["jpg"] for s in wds.WebDataset(path, shardshuffle=False)]
    return out


def rate(fn, items) -> float:
    start = time.perf_counter()
    for i, item in enumerate(items):
        fn(i, item)
    return len(items) / (time.perf_counter() - start)


def loader_rate(manifest: Manifest, cfg: DataConfig) -> float:
    info = build_train_data(manifest, cfg, rank=0, world_size=1, epoch=0, seed=0)
    start = time.perf_counter()
    n = sum(len(batch["key"]) for batch in info.loader)
    return n / (time.perf_counter() - start)


def measure(manifest: Manifest, workers: list[int]) -> list[tuple[str, int, float]]:
    """(stage, workers, samples/s) rows."""
    cfg = DataConfig(image_size=384, batch_size=16, shuffle_buffer=100)
    train_t, eval_t = build_train_transform(cfg), build_eval_transform(cfg)
    data = raw_images(manifest)
    rows = [
        ("decode only", 1, rate(lambda i, d: decode_image(d, train_t.decode_size), data)),
        ("decode + train augment (384)", 1,
         rate(lambda i, d: train_t(decode_image(d, train_t.decode_size), make_generator(i)), data)),
        ("decode + eval transform (384)", 1,
         rate(lambda i, d: eval_t(decode_image(d, eval_t.decode_size)), data)),
    ]
    for n in workers:
        rows.append(("DataLoader train stream", n, loader_rate(manifest, replace(cfg, workers=n))))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--workers", type=int, nargs="+", default=[2])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # as in a DataLoader worker
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        manifest = write_shards(Path(tmp), args.images)
        print(f"wrote {args.images} JPEGs with a 448-px shorter side in {time.perf_counter() - start:.1f} s")
        rows = measure(manifest, args.workers)
    print(f"\n{'stage':32s} {'workers':>7s} {'samples/s':>10s} {'per worker':>11s} {'ms/sample':>10s}")
    for name, workers, value in rows:
        per = value / workers
        print(f"{name:32s} {workers:7d} {value:10.1f} {per:11.1f} {1000 / per:10.1f}")


if __name__ == "__main__":
    main()
