"""DDP scaling on the CPU: 2 ranks x 1 thread vs 1 rank x 1 thread, same per-rank batch.

Both runs are the real `train.py` on the same synthetic shards (loader in the main process,
so each rank uses one core); throughput is the median of the images/s that training logs,
skipping the first rows (start-up). The ratio 2-rank / 1-rank is the number to watch
(ideal 2.0 on a machine with 2 free cores).

    python -m benchmarks.ddp_scaling [--steps 40] [--image-size 64]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from wikiart.synthetic import build_synthetic_shards

ROOT = Path(__file__).resolve().parents[1]


def run(ranks: int, shards: Path, out: Path, args: argparse.Namespace) -> float:
    flags = ["--task", "genre", "--shards", str(shards), "--out", str(out), "--backbone", "resnet18",
             "--image-size", str(args.image_size), "--batch-size", str(args.batch_size), "--workers", "0",
             "--max-steps", str(args.steps), "--epochs", "50", "--log-every", "5", "--no-progress",
             "--proj-dim", "64", "--rnn-hidden", "64", "--rnn-layers", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if ranks == 1:
        cmd = [sys.executable, str(ROOT / "train.py"), *flags]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(ROOT / "accelerate_configs" / "cpu_ddp.yaml"), "--num_processes", str(ranks),
               str(ROOT / "train.py"), *flags]
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [r["images_per_s"] for r in rows if r["kind"] == "train"][2:]
    return statistics.median(rates)


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        shards = Path(tmp) / "shards"
        build_synthetic_shards(shards, n=2 * args.batch_size * (args.steps + 2), short_side=64,
                               max_side=96, min_shards=8, workers=0)
        one = run(1, shards, Path(tmp) / "one", args)
        two = run(2, shards, Path(tmp) / "two", args)
    print(f"\nDDP scaling on CPU (gloo), resnet18 CNN-RNN {args.image_size}px, batch {args.batch_size} per rank")
    print(f"{'ranks':8s} {'images/s':>10s}")
    print(f"{'1':8s} {one:10.1f}\n{'2':8s} {two:10.1f}\nratio 2/1: {two / one:.2f}")
    return two / one


if __name__ == "__main__":
    main()
