"""Training-loop overhead: our engine vs a bare PyTorch loop, same model, same in-memory batches.

Our side is the real training path: `setup_job` (Accelerate, AdamW groups, freezing, mixer,
device stage), `train_one_epoch` with the real `StepHooks` (logging to metrics.jsonl, guards,
stop checks). The bare side is `normalise -> model(x) -> cross-entropy -> backward -> clip ->
AdamW.step`. Both run on the same uint8 batches (what the loader delivers), alternating rounds
so machine noise hits both alike; the ratio of steps/s (ours / bare) is the number to watch
(target >= 0.95 with mixing and device augmentation off; those are extra work the bare loop
does not do, so they are reported separately).

    python -m benchmarks.loop_overhead [--steps 30] [--rounds 3] [--image-size 64]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from wikiart.config import parse_train_config
from wikiart.device_augment import Normalizer
from wikiart.engine import train_one_epoch
from wikiart.loop import StepHooks, stop_request_for
from wikiart.synthetic import build_synthetic_shards
from wikiart.training import build_model, setup_job


def make_batches(n: int, batch: int, size: int, num_classes: int) -> list[dict]:
    """Loader-shaped batches: uint8 NHWC-strided images, per-sample augmentation parameters."""
    gen = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        images = torch.randint(0, 256, (batch, size, size, 3), generator=gen, dtype=torch.uint8)
        aug = torch.tensor([[1.1, 0.9, 1.05, 0.05, 4, 4, size // 4, size // 5]] * batch)
        aug[::2, 6] = 0  # half the images without an erasing box
        out.append({"image": images.permute(0, 3, 1, 2), "aug": aug, "key": [f"k{i}_{j}" for j in range(batch)],
                    "labels": {"genre": torch.randint(0, num_classes, (batch,), generator=gen)}})
    return out


def bare_loop(model: torch.nn.Module, batches: list[dict]) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)
    normalize = Normalizer(model.mean, model.std)
    model.train()
    start = time.perf_counter()
    for batch in batches:
        logits = model(normalize(batch["image"].contiguous().float()))["genre"]
        loss = F.cross_entropy(logits, batch["labels"]["genre"], label_smoothing=0.03)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return len(batches) / (time.perf_counter() - start)


def engine_loop(job, batches: list[dict]) -> float:
    job.state.step, job.state.epoch, job.state.batch_in_epoch = 0, 0, 0
    job.ctx.total_steps = len(batches)
    hooks = StepHooks(job, stop_request_for(job))
    job.logger.restart_clock(0)
    start = time.perf_counter()
    train_one_epoch(job.ctx, batches, job.state, len(batches), hooks)
    return len(batches) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results: dict[str, list[float]] = {"bare": [], "engine (no mixing)": [], "engine (+ device augment)": [],
                                       "engine (+ augment + mixing)": []}
    with tempfile.TemporaryDirectory() as tmp:
        shards = Path(tmp) / "shards"
        manifest = build_synthetic_shards(shards, n=120, short_side=64, max_side=96, workers=0)
        batches = make_batches(args.steps, args.batch_size, args.image_size, manifest.num_classes("genre"))
        common = ["--task", "genre", "--shards", str(shards), "--backbone", "resnet18", "--image-size",
                  str(args.image_size), "--batch-size", str(args.batch_size), "--no-progress",
                  "--log-every", "10", "--proj-dim", "64", "--rnn-hidden", "64", "--rnn-layers", "1"]
        no_mix = ["--mixup-p", "0", "--cutmix-p", "0"]
        plain = setup_job(parse_train_config([*common, "--out", f"{tmp}/a", *no_mix, "--erasing-p", "0",
                                              "--color-jitter", "0", "0", "0", "0"]))
        augmented = setup_job(parse_train_config([*common, "--out", f"{tmp}/c", *no_mix]))
        mixed = setup_job(parse_train_config([*common, "--out", f"{tmp}/b"]))
        bare_model = build_model(plain.cfg, manifest, ("genre",))
        for _ in range(args.rounds):
            results["bare"].append(bare_loop(bare_model, batches))
            results["engine (no mixing)"].append(engine_loop(plain, batches))
            results["engine (+ device augment)"].append(engine_loop(augmented, batches))
            results["engine (+ augment + mixing)"].append(engine_loop(mixed, batches))
    medians = {k: statistics.median(v) for k, v in results.items()}
    print(f"\nloop overhead: resnet18 CNN-RNN, {args.image_size}px, batch {args.batch_size}, "
          f"{args.steps} steps x {args.rounds} alternating rounds, 1 thread")
    print(f"{'loop':30s} {'steps/s':>9s} {'ratio vs bare':>14s}")
    for name, value in medians.items():
        print(f"{name:30s} {value:9.2f} {value / medians['bare']:14.3f}")
    return {k: v / medians["bare"] for k, v in medians.items()}


if __name__ == "__main__":
    main()
