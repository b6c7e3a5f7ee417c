"""Where a loader worker's CPU time goes, stage by stage, before and after the loader rework.

"Before" is the previous worker pipeline, reproduced here stage for stage: PIL decode (draft),
PIL crop+resize, PIL flip, colour jitter as one PIL matrix `convert` (+ ImageStat mean),
RandomErasing + normalisation in one numpy float pass, float collation. "After" is the current
one: simplejpeg decode, torch uint8 antialiased crop+resize, flip and parameter draws, uint8
collation into a reused buffer (`wikiart.data.buffers`); jitter, erasing and normalisation run batched on the training device
(`wikiart.data.device`), timed here on the CPU per batch and reported per sample.

The same images are also written into a tar shard, and reading + checking them is timed: before,
webdataset's stream-mode tar iterator and a PIL header check; after, the loader's own
`iter_shard` + `parse_sample`. Those rows are listed apart from the per-image stages' totals
("before" stays the same code from run to run, a yardstick of the machine's speed).

    python -m benchmarks.loader_profile [--images 120] [--image-size 384]
"""

from __future__ import annotations

import argparse
import io
import json
import tarfile
import tempfile
import time
from collections import defaultdict
from typing import Callable

import numpy as np
import torch
from PIL import Image, ImageStat

from wikiart.data.buffers import BatchBuffers, release_batch
from wikiart.config.options import DataConfig
from wikiart.data.stream import collate, decode_image, iter_shard, parse_sample
from wikiart.data.device import DeviceAugment
from wikiart.data.transforms import (IMAGENET_MEAN, IMAGENET_STD, as_chw, build_train_transform, erasing_box,
                                jitter_params, make_generator, resize_uint8, rrc_params, to_hwc)

_SCALE = (1.0 / (255.0 * np.asarray(IMAGENET_STD, dtype=np.float32)))[:, None, None]
_BIAS = (-np.asarray(IMAGENET_MEAN, dtype=np.float32) / np.asarray(IMAGENET_STD, dtype=np.float32))[:, None, None]


class Stopwatch:
    """Accumulates seconds per stage name."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def run(self, stage: str, fn: Callable, *args):
        start = time.perf_counter()
        out = fn(*args)
        self.seconds[stage] += time.perf_counter() - start
        return out


def _pil_jitter(img: Image.Image, factors: list[float]) -> Image.Image:
    """The previous jitter: brightness/contrast/saturation/hue composed into one PIL matrix."""
    b, c, s, theta = factors
    luma = np.asarray([0.299, 0.587, 0.114])
    grey = float(luma @ np.asarray(ImageStat.Stat(img).mean))
    yiq = np.asarray([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    rot = np.asarray([[1, 0, 0], [0, np.cos(theta), -np.sin(theta)], [0, np.sin(theta), np.cos(theta)]])
    sat = s * np.eye(3) + (1 - s) * np.outer(np.ones(3), luma)
    lin = b * c * sat @ np.linalg.inv(yiq) @ rot @ yiq
    affine = np.concatenate([lin, np.full((3, 1), b * (1 - c) * grey)], axis=1)
    return img.convert("RGB", tuple(float(v) for v in affine.reshape(-1)))


def _normalise_erase(img: Image.Image, box, noise_gen: torch.Generator) -> torch.Tensor:
    chw = np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)
    x = np.empty(chw.shape, dtype=np.float32)
    np.multiply(chw, _SCALE, out=x)
    x += _BIAS
    if box is not None:
        top, left, h, w = box
        noise = torch.rand((3, h, w), generator=noise_gen).numpy()
        x[:, top:top + h, left:left + w] = noise * _SCALE * 255 + _BIAS
    return torch.from_numpy(x)


def before(data: list[bytes], cfg: DataConfig) -> Stopwatch:
    sw, t, size, batch = Stopwatch(), build_train_transform(cfg), cfg.image_size, []
    for i, raw in enumerate(data):
        gen = make_generator(i)

        def pil_decode(raw=raw):
            img = Image.open(io.BytesIO(raw))
            img.draft("RGB", (t.decode_size, t.decode_size))
            return img.convert("RGB")
        img = sw.run("decode", pil_decode)
        left, top, w, h = rrc_params(img.width, img.height, t.scale, t.ratio, gen)
        img = sw.run("crop + resize", lambda: img.resize((size, size), Image.BILINEAR,
                                                         box=(left, top, left + w, top + h)))
        if gen.random() < 0.5:
            img = sw.run("flip", img.transpose, Image.FLIP_LEFT_RIGHT)
        factors = jitter_params(t.jitter, gen)
        img = sw.run("colour jitter", _pil_jitter, img, factors)
        box = erasing_box(size, size, t.erasing_p, gen)
        batch.append(sw.run("erase + normalise", _normalise_erase, img, box, torch.Generator().manual_seed(i)))
        if len(batch) == cfg.batch_size:
            sw.run("collate", torch.stack, batch)
            batch = []
    return sw


def after(data: list[bytes], cfg: DataConfig) -> Stopwatch:
    sw, t, size, batch = Stopwatch(), build_train_transform(cfg), cfg.image_size, []
    stage = DeviceAugment.for_recipe(cfg.color_jitter, cfg.erasing_p, IMAGENET_MEAN, IMAGENET_STD)
    buffers = BatchBuffers(readers=1)
    for i, raw in enumerate(data):
        gen = make_generator(i)
        pixels = sw.run("decode", decode_image, raw, t.decode_size)
        left, top, w, h = rrc_params(pixels.shape[1], pixels.shape[0], t.scale, t.ratio, gen)
        x = sw.run("crop + resize", lambda: resize_uint8(as_chw(pixels)[:, :, top:top + h, left:left + w],
                                                         size, size))
        if gen.random() < 0.5:
            x = sw.run("flip", x.flip, -1)
        factors = sw.run("draw jitter + erasing", jitter_params, t.jitter, gen)
        box = erasing_box(size, size, t.erasing_p, gen) or (0, 0, 0, 0)
        batch.append((to_hwc(x), torch.tensor([*factors, *box], dtype=torch.float32)))
        if len(batch) == cfg.batch_size:
            images, augs = zip(*batch)
            collated = sw.run("collate", collate, [""] * len(batch), list(images), [{}] * len(batch), (),
                              list(augs), (buffers, 0))
            sw.run("device stage on CPU (jitter, erase, normalise)", stage, collated, torch.device("cpu"), i)
            release_batch(collated)  # as the training step does: the next batch reuses the buffer
            batch = []
    return sw


def write_shard(data: list[bytes], path: str) -> None:
    """The images as a shard: `NNNNNN.jpg` + `NNNNNN.json` ({"labels": {"genre": ...}}) per sample."""
    with tarfile.open(path, "w") as tar:
        for i, jpg in enumerate(data):
            for ext, payload in (("jpg", jpg), ("json", json.dumps({"labels": {"genre": i % 10}}).encode())):
                info = tarfile.TarInfo(f"{i:06d}.{ext}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))


def _read_before(path: str) -> int:
    """webdataset's stream-mode iterator, json, PIL header check (the previous loader's reading)."""
    from webdataset.tariterators import group_by_keys, tar_file_iterator

    count = 0
    with open(path, "rb") as fh:
        for raw in group_by_keys({**f, "__url__": path} for f in tar_file_iterator(fh)):
            json.loads(raw["json"])
            with Image.open(io.BytesIO(raw["jpg"])) as img:
                assert img.size[0] > 0
            count += 1
    return count


def _read_after(path: str) -> int:
    """The loader's reading: `iter_shard` + `parse_sample` (json, labels, header check)."""
    samples = [parse_sample(raw, {"genre": 10}) for raw in iter_shard(path)]
    return len(samples)


def read_rows(data: list[bytes], rounds: int = 5) -> tuple[float, float]:
    """(ms/sample before, after) to read and check the samples of one shard; rounds alternate."""
    sw = Stopwatch()
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/shard.tar"
        write_shard(data, path)
        for _ in range(rounds):
            assert sw.run("before", _read_before, path) == sw.run("after", _read_after, path) == len(data)
    return tuple(1000 * sw.seconds[k] / (rounds * len(data)) for k in ("before", "after"))


def profile(data: list[bytes], cfg: DataConfig) -> list[tuple[str, float, float]]:
    """(stage, ms/sample before, ms/sample after); NaN where a stage does not exist."""
    old, new = before(data, cfg), after(data, cfg)
    n = len(data)
    stages = list(dict.fromkeys([*old.seconds, *new.seconds]))
    rows = [(s, 1000 * old.seconds.get(s, float("nan")) / n, 1000 * new.seconds.get(s, float("nan")) / n)
            for s in stages]
    worker_old = sum(old.seconds.values())
    worker_new = sum(v for k, v in new.seconds.items() if not k.startswith("device"))
    rows.append(("worker total", 1000 * worker_old / n, 1000 * worker_new / n))
    rows.append(("all stages on one CPU", 1000 * worker_old / n, 1000 * sum(new.seconds.values()) / n))
    rows.append(("read + check from a shard (not in the totals)", *read_rows(data)))
    return rows


def print_profile(rows: list[tuple[str, float, float]]) -> None:
    print("\n| stage | before ms/sample | after ms/sample |\n|---|---|---|")
    for stage, old, new in rows:
        fmt = lambda v: "-" if np.isnan(v) else f"{v:.2f}"  # noqa: E731
        print(f"| {stage} | {fmt(old)} | {fmt(new)} |")


def main(argv: list[str] | None = None) -> list[tuple[str, float, float]]:
    from benchmarks.loader import bench_shard_images  # the 448-px shard JPEGs of the loader benchmark

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=120)
    parser.add_argument("--image-size", type=int, default=384)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # as in a DataLoader worker
    data = bench_shard_images(args.images)
    rows = profile(data, DataConfig(image_size=args.image_size, batch_size=16))
    print_profile(rows)
    return rows


if __name__ == "__main__":
    main()
