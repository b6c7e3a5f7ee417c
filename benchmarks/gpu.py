"""One-GPU throughput at 384 px: the model step alone vs the full pipeline from shards.

(a) model step alone: the same CNN-RNN (ResNet50 by default) with the GPU fast paths - bf16
    autocast, channels_last, fused AdamW, torch.compile (--no-compile to skip) - on normalised
    float batches that already sit on the GPU: the ceiling.
(b) full pipeline: `train.py`'s real training path (setup_job, the shard loader, the engine,
    its step hooks; in this process) over one epoch of synthetic shards with a 448-px shorter
    side: loader workers (the default count for this machine), pinned uint8 batches, the
    device stage (jitter, erasing, normalisation), MixUp/CutMix, clipping, logging. Throughput
    is the median images/s that training logs, after the warm-up intervals.

Prints both, their ratio (target >= 0.9) and the MFU estimate: 3 x the forward FLOPs per image
(counted by torch's FlopCounterMode) x images/s / the GPU's peak (--peak-tflops; H200 bf16
dense: 989). A prepared script for a GPU machine; `--device cpu --smoke` runs a tiny version
anywhere (the test suite does, so the script cannot rot unseen).

    python -m benchmarks.gpu [--batch-size 128] [--steps 100] [--no-compile]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from wikiart.config.options import parse_train_config
from wikiart.data.loader import build_train_data
from wikiart.runtime.device import usable_cores
from wikiart.train.engine import train_one_epoch
from wikiart.train.loop import StepHooks, stop_request_for
from wikiart.formats.manifest import load_manifest
from wikiart.prep.synthetic import build_synthetic_shards
from wikiart.train.setup import build_model, compile_model, setup_job

SMOKE = {"steps": 6, "log_every": 1, "warmup": 2, "batch_size": 8, "image_size": 64, "backbone": "resnet18"}


def forward_flops(model: torch.nn.Module, image_size: int, device: torch.device) -> float:
    """FLOPs of one image's forward pass (a multiply-add counts 2)."""
    x = torch.randn(2, 3, image_size, image_size, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.eval()(x)
    return counter.get_total_flops() / 2


def model_step_rate(cfg: dict, manifest, args, device: torch.device) -> tuple[float, float]:
    """(images/s, forward FLOPs per image) of the bare step on GPU-resident batches."""
    model = build_model(cfg, manifest, ("genre",)).to(device)
    flops = forward_flops(model, args.image_size, device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    net = compile_model(model) if args.compile else model
    fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device).to(memory_format=fmt)
    y = torch.randint(0, manifest.num_classes("genre"), (args.batch_size,), device=device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
            loss = F.cross_entropy(net(x)["genre"], y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    for _ in range(args.warmup * 3):  # compile + cudnn autotuning
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync(device)
    return args.steps * args.batch_size / (time.perf_counter() - start), flops


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def pipeline_rate(shards: Path, out: Path, args) -> tuple[float, list[float]]:
    """Median logged images/s of the real training path over one epoch of the shards, after
    the warm-up intervals (and every logged rate). `fit` minus the epoch-end validation and
    checkpoint: those are not training throughput, and an eval-mode compile costs a minute."""
    flags = ["--task", "genre", "--shards", str(shards), "--out", str(out), "--backbone", args.backbone,
             "--image-size", str(args.image_size), "--batch-size", str(args.batch_size),
             "--max-steps", str(args.steps + args.warmup * args.log_every), "--epochs", "1",
             "--log-every", str(args.log_every), "--no-progress", "--no-pretrained"]
    if args.compile:
        flags.append("--compile")
    if args.workers is not None:
        flags += ["--workers", str(args.workers)]
    job = setup_job(parse_train_config(flags))
    if job.steps_per_epoch < job.ctx.total_steps:
        raise SystemExit(f"benchmarks.gpu: {job.steps_per_epoch} steps per epoch, {job.ctx.total_steps} wanted: "
                         f"raise --images")
    data = build_train_data(job.manifest, job.cfg.data, rank=0, world_size=1, epoch=0, seed=0)
    with job.logger:
        job.logger.restart_clock(0)
        train_one_epoch(job.ctx, data.loader, job.state, job.steps_per_epoch, StepHooks(job, stop_request_for(job)))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [r["images_per_s"] for r in rows if r["kind"] == "train"]
    return statistics.median(rates[args.warmup:]), rates


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=100, help="timed optimizer steps")
    parser.add_argument("--log-every", type=int, default=10, help="steps per logged rate (pipeline)")
    parser.add_argument("--warmup", type=int, default=2, help="log intervals (pipeline) / steps x3 (model) skipped")
    parser.add_argument("--image-size", type=int, default=384)
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--workers", type=int, default=None, help="loader workers (default: the machine's)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the GPU")
    parser.add_argument("--smoke", action="store_true", help="tiny CPU-sized settings, to check the script runs")
    args = parser.parse_args(argv)
    if args.smoke:
        vars(args).update(SMOKE, compile=False)
    # one epoch of synthetic paintings covers the timed and warm-up steps (+2% validation split)
    args.images = math.ceil((args.steps + args.warmup * args.log_every + 1) * args.batch_size / 0.97)
    return args


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("benchmarks.gpu: no CUDA device here; run it on a GPU machine (or --device cpu --smoke)")
    with tempfile.TemporaryDirectory(prefix="wikiart-gpu-") as tmp:
        shards = Path(tmp) / "shards"
        start = time.perf_counter()
        short = 448 if not args.smoke else 72
        build_synthetic_shards(shards, n=args.images, short_side=short, max_side=short * 3 // 2, val_frac=0.02,
                               workers=usable_cores())
        print(f"built {args.images} synthetic paintings ({short}-px shorter side) in "
              f"{time.perf_counter() - start:.0f} s", flush=True)
        manifest = load_manifest(shards)
        cfg = parse_train_config(["--task", "genre", "--shards", str(shards), "--backbone", args.backbone,
                                  "--image-size", str(args.image_size), "--no-pretrained"])
        step_rate, flops = model_step_rate(cfg, manifest, args, device)
        print(f"(a) model step alone: {step_rate:.0f} images/s", flush=True)
        full_rate, rates = pipeline_rate(shards, Path(tmp) / "run", args)
        print(f"(b) full pipeline, images/s per log interval: {' '.join(f'{r:.0f}' for r in rates)}", flush=True)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    mfu = lambda rate: 3 * flops * rate / (args.peak_tflops * 1e12)  # noqa: E731
    print(f"\n{name}, {args.backbone} CNN-RNN, {args.image_size} px, batch {args.batch_size}, "
          f"compile {'on' if args.compile else 'off'}; {3 * flops / 1e9:.1f} GFLOP per training image")
    print("| measurement | images/s | MFU |\n|---|---|---|")
    print(f"| (a) model step alone | {step_rate:.0f} | {100 * mfu(step_rate):.1f} % |")
    print(f"| (b) full pipeline from shards | {full_rate:.0f} | {100 * mfu(full_rate):.1f} % |")
    print(f"ratio (b)/(a): {full_rate / step_rate:.2f}")
    return {"model_step": step_rate, "pipeline": full_rate, "ratio": full_rate / step_rate,
            "gflop_per_image": 3 * flops / 1e9}


if __name__ == "__main__":
    main()
