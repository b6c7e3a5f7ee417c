"""What a command costs before and after its work: starting Python with the training imports and
leaving it, plain vs with `gc.freeze()` after the imports (what wikiart.runtime.errors.run_cli
does). Every train.py rank, evaluate.py and wikiart-predict process pays this once; the test
suite starts ~240 of them. The two take turns; prints medians and the difference.

    python -m benchmarks.process_overhead [--rounds 8]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

# The trainer's imports, and its optimizer (building one imports the rest of torch's compiler stack).
IMPORTS = ("import torch, wikiart.cli.train; "
           "torch.optim.AdamW([torch.zeros(1, requires_grad=True)])")
VARIANTS = {"plain": IMPORTS, "gc.freeze() after the imports": IMPORTS + "; import gc; gc.freeze()"}


def seconds(code: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    rounds = parser.parse_args(argv).rounds
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(rounds):
        for name, code in VARIANTS.items():
            times[name].append(seconds(code))
    medians = {name: statistics.median(v) for name, v in times.items()}
    for name, value in medians.items():
        print(f"{name:32s} {value:6.2f} s  (start, imports, exit; median of {rounds})")
    plain, frozen = medians.values()
    print(f"saved per process: {plain - frozen:.2f} s ({frozen / plain:.2f} of plain)")
    return medians


if __name__ == "__main__":
    main()
