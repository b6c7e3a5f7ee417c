"""`make bench`: every CPU benchmark in one go (each prints its own table; ~5-8 minutes).

    python -m benchmarks.run_all
"""

from __future__ import annotations

import time

from benchmarks import ddp_scaling, loader, loop_overhead, shard_build


def main() -> None:
    start = time.perf_counter()
    for name, fn in (("shard build", shard_build.main), ("loader", loader.main),
                     ("loop overhead", loop_overhead.main), ("DDP scaling", ddp_scaling.main)):
        print(f"\n=== {name} ===", flush=True)
        fn([])
    print(f"\nall benchmarks: {(time.perf_counter() - start) / 60:.1f} min")


if __name__ == "__main__":
    main()
