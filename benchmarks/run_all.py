"""`make bench`: every CPU benchmark in one go, then one summary table (~9 minutes on 2 cores).

Each benchmark prints its own detailed table as it goes; the summary lists the headline ratios
against the targets of the performance issue. The GPU benchmark (`benchmarks.gpu`) needs a GPU
machine and is not part of this run.

    python -m benchmarks.run_all
"""

from __future__ import annotations

import time

from benchmarks import ddp_scaling, loader, loader_profile, loop_overhead, shard_build


def summary_rows(results: dict) -> list[tuple[str, str, str]]:
    """(measurement, value, target) rows for the summary table."""
    ld, sb, lo, prof = results["loader"], results["shard build"], results["loop overhead"], results["profile"]
    worker_before, worker_after = next((b, a) for s, b, a in prof if s == "worker total")
    return [
        ("loader vs seed's way (samples/s, 1 worker each)", f"{ld['speedup']:.1f}x", ">= 8x"),
        ("loader samples/s per worker (384 px, from shards)", f"{ld['per_worker']:.0f}", ">= 250"),
        ("  reused / fresh batch buffers, same rounds", f"{ld['reuse_gain']:.2f}", "-"),
        ("loader worker CPU ms/sample, before -> after", f"{worker_before:.1f} -> {worker_after:.1f}", "lower"),
        ("loop overhead: engine / bare (no mixing, no augment)", f"{lo['engine (no mixing)']:.2f}", ">= 0.95"),
        ("DDP scaling: 2 ranks / 1 rank (1 thread each)", f"{results['DDP scaling']['ours']:.2f}", ">= 1.8"),
        ("  bare PyTorch DDP on this machine, same measure", f"{results['DDP scaling']['bare']:.2f}", "-"),
        ("  2 bare processes without communication / 1", f"{results['DDP scaling']['apart']:.2f}", "-"),
        ("loader worker peak RSS MB, 1x -> 10x data", f"{ld['worker_rss_1x']:.0f} -> {ld['worker_rss_10x']:.0f}", "flat"),
        ("shard builder peak RSS MB, 1x -> 10x data", f"{sb['builder_rss_1x']:.0f} -> {sb['builder_rss_10x']:.0f}", "flat"),
        ("shard build images/s per core", f"{sb['per_core']:.1f}", "-"),
    ]


def main() -> None:
    start = time.perf_counter()
    results = {}
    for name, fn in (("shard build", shard_build.main), ("loader", loader.main),
                     ("profile", loader_profile.main), ("loop overhead", loop_overhead.main),
                     ("DDP scaling", ddp_scaling.main)):
        print(f"\n=== {name} ===", flush=True)
        section = time.perf_counter()
        results[name] = fn([])
        print(f"({name}: {time.perf_counter() - section:.0f} s)", flush=True)
    print(f"\n=== summary ({(time.perf_counter() - start) / 60:.1f} min) ===")
    print("| measurement | value | target |\n|---|---|---|")
    for row in summary_rows(results):
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
