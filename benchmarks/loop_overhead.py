"""Training-loop overhead: our engine vs a bare PyTorch loop, same model, same in-memory batches.

Our side is the real training path: `setup_job` (Accelerate, AdamW groups, freezing, mixer,
device stage), `train_one_epoch` with the real `StepHooks` (logging to metrics.jsonl, guards,
stop checks). The bare side is `normalise -> model(x) -> cross-entropy -> backward -> clip ->
AdamW.step`. Both run on the same uint8 batches (what the loader delivers). The loops take
turns step by step: on a shared VM the time of one identical step drifts by +-20% over seconds,
and rounds of 30 steps per loop gave ratios from 0.89 to 1.22 for the same code; turns of one
step put every loop under the same conditions. The ratio of their total times (ours / bare),
with the spread of the per-turn ratios, is the number to watch (target >= 0.95 with mixing and
device augmentation off; those are extra work the bare loop does not do, so they are reported
separately).

    python -m benchmarks.loop_overhead [--chunk 1] [--rounds 64] [--image-size 64]
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from wikiart.config.options import parse_train_config
from wikiart.data.device import Normalizer
from wikiart.train.engine import train_one_epoch
from wikiart.train.loop import StepHooks, stop_request_for
from wikiart.prep.synthetic import build_synthetic_shards
from wikiart.train.setup import build_model, setup_job


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


class BareLoop:
    """normalise -> model -> cross-entropy -> backward -> clip -> AdamW.step, nothing else.
    `forward`: what runs the model (default the model itself; `bare_ddp` passes its DDP wrapper)."""

    def __init__(self, model: torch.nn.Module, forward: torch.nn.Module | None = None):
        self.model = model.train()
        self.forward = forward if forward is not None else model
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)
        self.normalize = Normalizer(model.mean, model.std)

    def run(self, batches: list[dict]) -> None:
        for batch in batches:
            logits = self.forward(self.normalize(batch["image"].contiguous().float()))["genre"]
            loss = F.cross_entropy(logits, batch["labels"]["genre"], label_smoothing=0.03)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.opt.step()


class EngineLoop:
    """The real path: `train_one_epoch` with the real `StepHooks` (logging every 10 steps)."""

    def __init__(self, job, total_steps: int):
        self.job = job
        job.state.step, job.state.epoch, job.state.batch_in_epoch = 0, 0, 0
        job.ctx.total_steps = total_steps + 1   # never "done": no end-of-run work inside a chunk
        job.logger.total_steps = job.ctx.total_steps  # the log lines say "step k/N" of this N
        self.hooks = StepHooks(job, stop_request_for(job))
        job.logger.restart_clock(0)

    def run(self, batches: list[dict]) -> None:
        self.job.state.batch_in_epoch = 0       # each chunk is a fresh "epoch" of len(batches)
        train_one_epoch(self.job.ctx, batches, self.job.state, len(batches), self.hooks)


def interleaved_seconds(loops: dict[str, "BareLoop | EngineLoop"], batches: list[dict], chunk: int,
                        rounds: int) -> dict[str, list[float]]:
    """Seconds per chunk of `chunk` steps, for each loop, the loops taking turns chunk by chunk
    (the order rotating every round): machine noise, which lasts seconds, hits all of them."""
    names = list(loops)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds + 1):                 # round 0 warms every loop up and is dropped
        for name in names[r % len(names):] + names[:r % len(names)]:
            part = batches[(r * chunk) % len(batches):][:chunk]
            start = time.perf_counter()
            loops[name].run(part)
            if r:
                seconds[name].append(time.perf_counter() - start)
    return seconds


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunk", type=int, default=1, help="steps per turn")
    parser.add_argument("--rounds", type=int, default=64, help="turns per loop (after one warm-up turn)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        shards = Path(tmp) / "shards"
        manifest = build_synthetic_shards(shards, n=120, short_side=64, max_side=96, workers=0)
        batches = make_batches(args.chunk * 4, args.batch_size, args.image_size, manifest.num_classes("genre"))
        common = ["--task", "genre", "--shards", str(shards), "--backbone", "resnet18", "--image-size",
                  str(args.image_size), "--batch-size", str(args.batch_size), "--no-progress",
                  "--log-every", "10", "--proj-dim", "64", "--rnn-hidden", "64", "--rnn-layers", "1",
                  "--no-pretrained"]
        no_mix = ["--mixup-p", "0", "--cutmix-p", "0"]
        plain = setup_job(parse_train_config([*common, "--out", f"{tmp}/a", *no_mix, "--erasing-p", "0",
                                              "--color-jitter", "0", "0", "0", "0"]))
        augmented = setup_job(parse_train_config([*common, "--out", f"{tmp}/c", *no_mix]))
        mixed = setup_job(parse_train_config([*common, "--out", f"{tmp}/b"]))
        total = (args.rounds + 1) * args.chunk
        loops = {"bare": BareLoop(build_model(plain.cfg, manifest, ("genre",))),
                 "engine (no mixing)": EngineLoop(plain, total),
                 "engine (+ device augment)": EngineLoop(augmented, total),
                 "engine (+ augment + mixing)": EngineLoop(mixed, total)}
        seconds = interleaved_seconds(loops, batches, args.chunk, args.rounds)
    bare = sum(seconds["bare"])
    print(f"\nloop overhead: resnet18 CNN-RNN, {args.image_size}px, batch {args.batch_size}, 1 thread; "
          f"{args.rounds} turns of {args.chunk} steps per loop, taking turns")
    print(f"{'loop':30s} {'steps/s':>9s} {'ratio vs bare':>14s} {'per-turn ratio, mean +- 2 s.e.':>32s}")
    ratios = {}
    for name, values in seconds.items():
        ratios[name] = bare / sum(values)
        turns = [b / v for b, v in zip(seconds["bare"], values)]
        spread = 2 * statistics.stdev(turns) / math.sqrt(len(turns)) if len(turns) > 1 else float("nan")
        print(f"{name:30s} {len(values) * args.chunk / sum(values):9.2f} {ratios[name]:14.3f} "
              f"{statistics.mean(turns):24.3f} +- {spread:.3f}")
    return ratios


if __name__ == "__main__":
    main()
