"""`make demo` (`wikiart-demo`): the whole pipeline on the embedded synthetic mini-WikiArt, on the CPU.

Builds synthetic shards, trains the genre classifier for a few minutes, evaluates the best
model (reports, confusion matrix, outliers), and prints the headline metrics next to the
majority-class baseline with the paths of the files written.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Sequence

import torch
from rich.console import Console
from rich.table import Table

from ..config.options import parse_eval_config, parse_train_config
from ..evaluate.run import run_evaluation
from ..train.loop import train
from ..formats.manifest import Manifest
from ..formats.rundir import RunDir
from ..prep.synthetic import build_synthetic_shards


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="wikiart-demo", description=__doc__)
    parser.add_argument("--out", default="runs/demo", help="demo directory (shards/, genre/)")
    parser.add_argument("--samples", type=int, default=1200, help="synthetic paintings to generate")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs")
    parser.add_argument("--image-size", type=int, default=48, help="training crop size")
    parser.add_argument("--workers", type=int, default=1, help="loader workers")
    return parser.parse_args(argv)


def build_demo_shards(out: Path, samples: int) -> Manifest:
    # Re-running reuses finished shards (the builder verifies them instead of rebuilding).
    return build_synthetic_shards(out, n=samples, short_side=64, max_side=112, seed=0,
                                  val_frac=0.2, min_shards=4, min_val_shards=2, workers=2)


def train_genre(shards: Path, run_dir: Path, args: argparse.Namespace) -> dict:
    argv = ["--task", "genre", "--shards", str(shards), "--out", str(run_dir), "--overwrite",
            "--backbone", "resnet18", "--image-size", str(args.image_size), "--batch-size", "16",
            "--epochs", str(args.epochs), "--workers", str(args.workers), "--proj-dim", "64",
            "--rnn-hidden", "64", "--rnn-layers", "1", "--shuffle-buffer", "300", "--log-every", "20",
            "--no-pretrained"]  # runs offline in minutes: synthetic paintings gain nothing from ImageNet
    return train(parse_train_config(argv))


def evaluate_best(shards: Path, run_dir: Path, out: Path, workers: int) -> dict:
    argv = ["--checkpoint", str(RunDir(run_dir).best), "--shards", str(shards), "--out", str(out),
            "--workers", str(workers), "--outliers", "--batch-size", "32"]
    return run_evaluation(parse_eval_config(argv))


def majority_baseline(manifest: Manifest, task: str) -> float:
    counts = manifest.class_counts("val", task)
    return max(counts) / max(sum(counts), 1)


def print_summary(results: dict, baseline: float, run_dir: Path, eval_dir: Path, seconds: float) -> None:
    genre = results["tasks"]["genre"]
    table = Table(title="demo: genre on synthetic mini-WikiArt (validation, evaluate.py)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("top1", "top5", "macro_f1", "weighted_f1", "loss", "scored"):
        value = genre[key]
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    table.add_row("majority baseline (top1)", f"{baseline:.4f}")
    console = Console()
    console.print(table)
    console.print(f"best model:   {RunDir(run_dir).best}\ntraining log: {RunDir(run_dir).metrics}")
    for name in ("metrics.json", "classification_report_genre.txt", "per_class_recall_genre.csv",
                 "confusion_genre.png", "outliers_genre.csv", "outliers_genre.png"):
        console.print(f"report:       {eval_dir / name}")
    console.print(f"demo finished in {seconds / 60:.1f} min")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # Leave a core to the loader workers: oversubscribed OpenMP threads slow small CPUs badly.
    torch.set_num_threads(max(1, (os.cpu_count() or 2) - args.workers))
    out = Path(args.out)
    start = time.perf_counter()
    manifest = build_demo_shards(out / "shards", args.samples)
    train_genre(out / "shards", out / "genre", args)
    results = evaluate_best(out / "shards", out / "genre", out / "eval", args.workers)
    print_summary(results, majority_baseline(manifest, "genre"), out / "genre", out / "eval",
                  time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
