"""DDP scaling on the CPU: 2 ranks x 1 thread vs 1 rank x 1 thread, same per-rank batch.

Both runs are the real `train.py` on the same synthetic shards (loader in the main process,
so each rank uses one core); throughput is the median of the images/s that training logs,
skipping the first rows (start-up). The 1-rank and 2-rank runs take turns for a few rounds
(this VM's speed drifts by +-20% over seconds to minutes); the ratio of the medians, 2-rank /
1-rank, is the number to watch (ideal 2.0 on a machine with 2 free cores). Beside it, in the
same rounds, the same ratio of a bare PyTorch DDP loop (benchmarks/bare_ddp.py): what gloo
allows on this machine at the time of the run; and of two bare processes training side by side
with no communication at all ("apart"): what the machine's two cores give any 2-process run.

    python -m benchmarks.ddp_scaling [--steps 40] [--rounds 2] [--image-size 64]
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

from benchmarks.bare_ddp import bare_ddp_rate
from wikiart.prep.synthetic import build_synthetic_shards

ROOT = Path(__file__).resolve().parents[1]


def run(ranks: int, shards: Path, out: Path, args: argparse.Namespace) -> float:
    flags = ["--task", "genre", "--shards", str(shards), "--out", str(out), "--backbone", "resnet18",
             "--image-size", str(args.image_size), "--batch-size", str(args.batch_size), "--workers", "0",
             "--max-steps", str(args.steps), "--epochs", "50", "--log-every", "5", "--no-progress",
             "--proj-dim", "64", "--rnn-hidden", "64", "--rnn-layers", "1", "--no-pretrained",
             "--batch-scaling", "per-rank"]  # the same per-rank batch at every world size
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


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=2, help="1-rank and 2-rank runs, taking turns")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args(argv)
    rates: dict[str, list[float]] = {"ours 1": [], "ours 2": [], "bare 1": [], "bare 2": [], "apart 2": []}
    with tempfile.TemporaryDirectory() as tmp:
        shards = Path(tmp) / "shards"
        build_synthetic_shards(shards, n=2 * args.batch_size * (args.steps + 2), short_side=64,
                               max_side=96, min_shards=8, workers=0)
        for r in range(args.rounds):
            for ranks in ((1, 2) if r % 2 == 0 else (2, 1)):
                rates[f"ours {ranks}"].append(run(ranks, shards, Path(tmp) / f"r{r}-{ranks}", args))
                rates[f"bare {ranks}"].append(bare_ddp_rate(ranks, shards, args.batch_size, args.image_size))
            rates["apart 2"].append(bare_ddp_rate(2, shards, args.batch_size, args.image_size, connected=False))
    medians = {k: statistics.median(v) for k, v in rates.items()}
    print(f"\nDDP scaling on CPU (gloo), resnet18 CNN-RNN {args.image_size}px, batch {args.batch_size} per rank, "
          f"{args.rounds} rounds taking turns. ours: train.py (loader in the main process); bare: a "
          f"PyTorch DDP loop on in-memory batches (benchmarks/bare_ddp.py), gloo's ceiling here; apart: "
          f"that loop in 2 processes without communication, the cores' ceiling")
    print(f"{'run':8s} {'images/s (median)':>18s}   per round")
    for name, value in medians.items():
        print(f"{name:8s} {value:18.1f}   {' '.join(f'{v:.1f}' for v in rates[name])}")
    ours, bare = medians["ours 2"] / medians["ours 1"], medians["bare 2"] / medians["bare 1"]
    apart = medians["apart 2"] / medians["bare 1"]
    print(f"ratio 2/1: ours {ours:.2f}, bare PyTorch DDP {bare:.2f}, 2 processes apart {apart:.2f}")
    return {"ours": ours, "bare": bare, "apart": apart}


if __name__ == "__main__":
    main()
