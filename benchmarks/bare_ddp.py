"""The machine's own DDP ceiling: a bare PyTorch DDP loop over gloo, 1 process vs 2.

No Accelerate, no loader, no engine: the same CNN-RNN (resnet18, 64 px) on in-memory batches,
`DistributedDataParallel` -> cross-entropy -> backward -> clip -> AdamW, each process on one
thread. `benchmarks.ddp_scaling` prints its 2/1 ratio beside ours, so a shortfall of ours can
be told apart from what gloo on this machine allows. With `connected=False` the processes
train the same loop side by side without a process group or DDP: no communication at all,
the most any 2-process run can get from the machine's cores at that moment.

    python -m benchmarks.bare_ddp
"""

from __future__ import annotations

import os
import socket
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

STEPS, WARMUP = 40, 5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, shards: str, batch_size: int, image_size: int, connected: bool,
          start_together, results) -> None:
    from benchmarks.loop_overhead import BareLoop, make_batches
    from wikiart.config.options import parse_train_config
    from wikiart.formats.manifest import load_manifest
    from wikiart.train.setup import build_model

    torch.set_num_threads(1)
    distributed = world > 1 and connected
    if distributed:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
    manifest = load_manifest(shards)
    cfg = parse_train_config(["--task", "genre", "--shards", shards, "--backbone", "resnet18", "--image-size",
                              str(image_size), "--proj-dim", "64", "--rnn-hidden", "64", "--rnn-layers", "1",
                              "--no-pretrained"])
    torch.manual_seed(0)
    model = build_model(cfg, manifest, ("genre",))
    net = torch.nn.parallel.DistributedDataParallel(model, gradient_as_bucket_view=True) if distributed else model
    loop = BareLoop(model, forward=net)
    batches = make_batches(10, batch_size, image_size, manifest.num_classes("genre"))
    seconds = []
    start_together.wait()  # without DDP nothing else lines the processes' steps up
    for i in range(STEPS + WARMUP):
        start = time.perf_counter()
        loop.run([batches[i % len(batches)]])
        seconds.append(time.perf_counter() - start)
    results.put(batch_size / statistics.median(seconds[WARMUP:]))
    if distributed:
        dist.destroy_process_group()


def bare_ddp_rate(world: int, shards: Path, batch_size: int = 16, image_size: int = 64,
                  connected: bool = True) -> float:
    """Total images/s of `world` bare DDP processes (median step time per process); with
    `connected=False`, of `world` processes training alone side by side."""
    ctx = mp.get_context("spawn")
    results, start_together = ctx.Queue(), ctx.Barrier(world)
    port = _free_port()
    procs = [ctx.Process(target=_rank, args=(r, world, port, str(shards), batch_size, image_size, connected,
                                             start_together, results)) for r in range(world)]
    for p in procs:
        p.start()
    rates = [results.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    return sum(rates)


def main(argv: list[str] | None = None) -> float:
    import tempfile

    from wikiart.prep.synthetic import build_synthetic_shards

    with tempfile.TemporaryDirectory() as tmp:
        build_synthetic_shards(Path(tmp) / "s", n=100, short_side=64, max_side=96, workers=0)
        one, two = bare_ddp_rate(1, Path(tmp) / "s"), bare_ddp_rate(2, Path(tmp) / "s")
    print(f"bare PyTorch DDP (gloo): 1 process {one:.1f} images/s, 2 processes {two:.1f}: ratio {two / one:.2f}")
    return two / one


if __name__ == "__main__":
    sys.exit(main() and 0)
