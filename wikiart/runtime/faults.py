"""Fault injection for the crash tests: real signals at named points of a real run.

`WIKIART_FAULT=POINT@N` makes the process SIGKILL itself the N-th time it reaches
`fault_point(POINT)`; `POINT@N@rankR` only on global rank R; `...:stop` sends SIGSTOP instead
(a hung rank, for the collective-timeout test); `...:nan` sends no signal but makes
`fault_point` return True, and the caller corrupts its data (the non-finite loss tests).
Several faults are separated by commas. Unset - always, outside the fault suite - a fault point
is one `if` on a module constant.

Points: `train.step` (after backward, before the optimizer step), `checkpoint.write` (model
weights written, the rest of the checkpoint not), `hub.upload` (inside the background push),
`train.batch` (each micro-batch after the device stage; with `:nan` one image becomes NaN).

What a surviving rank does when another rank dies or hangs is here too: `collective_failures`
turns the backend's error for a collective that failed or outlived --collective-timeout into a
one-line `CollectiveError` (train.py: exit 1), so a job never hangs on a lost rank.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
from typing import Iterator

ENV = "WIKIART_FAULT"


@dataclasses.dataclass
class Fault:
    point: str
    nth: int
    rank: int | None
    sig: int | None   # None: no signal, the point reports the hit (`:nan`)


_ACTIONS = {"": signal.SIGKILL, "kill": signal.SIGKILL, "stop": signal.SIGSTOP, "nan": None}


def parse_faults(spec: str) -> list[Fault]:
    """`point@n[@rankR][:stop|:kill|:nan]`, comma separated; ValueError names a malformed entry."""
    faults = []
    for entry in filter(None, (e.strip() for e in spec.split(","))):
        body, _, action = entry.partition(":")
        parts = body.split("@")
        try:
            if len(parts) not in (2, 3) or action not in _ACTIONS:
                raise ValueError
            rank = int(parts[2].removeprefix("rank")) if len(parts) == 3 else None
            faults.append(Fault(parts[0], int(parts[1]), rank, _ACTIONS[action]))
        except ValueError:
            raise ValueError(f"{ENV}: bad entry {entry!r}; expected POINT@N[@rankR][:kill|:stop|:nan]") from None
    return faults


_FAULTS = parse_faults(os.environ.get(ENV, ""))
_REACHED: dict[str, int] = {}


def fault_point(point: str) -> bool:
    """Deliver the configured signal here if this is the chosen visit on the chosen rank;
    True when a `:nan` fault is due here (the caller corrupts its data)."""
    if not _FAULTS:
        return False
    _REACHED[point] = _REACHED.get(point, 0) + 1
    rank = int(os.environ.get("RANK", "0"))
    due = False
    for fault in _FAULTS:
        if fault.point == point and fault.nth == _REACHED[point] and fault.rank in (None, rank):
            what = "NaN" if fault.sig is None else f"signal {fault.sig}"
            print(f"[{ENV}] rank {rank}: {what} at {point} #{fault.nth}", flush=True)
            if fault.sig is None:
                due = True
            else:
                os.kill(os.getpid(), fault.sig)
    return due


class CollectiveError(RuntimeError):
    """A collective with the other ranks failed or timed out: a rank died or hangs."""


# What gloo / NCCL / the c10d store say when a peer is gone or too slow.
_LOST_PEER = ("timed out waiting", "connection closed by peer", "connection reset by peer",
              "nccl communicator was aborted", "watchdog caught collective operation timeout")


def is_collective_failure(exc: BaseException) -> bool:
    """A c10d error of a multi-rank run (torch.distributed.DistError, or gloo's RuntimeError)
    that says a peer vanished or a collective outlived its timeout."""
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return False
    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(sign in text for sign in _LOST_PEER)


@contextlib.contextmanager
def collective_failures(timeout_s: float) -> Iterator[None]:
    """Re-raise a lost-peer collective failure as a CollectiveError with a message that says
    what happened and what to do; anything else passes through unchanged."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - only lost-peer failures are translated
        if not is_collective_failure(exc):
            raise
        import torch.distributed as dist
        rank, world = dist.get_rank(), dist.get_world_size()
        detail = " ".join(str(exc).split())[:300]
        raise CollectiveError(
            f"rank {rank} of {world}: a collective with the other ranks failed - another rank died "
            f"or hung (no collective waits longer than --collective-timeout {timeout_s:g}s): "
            f"{type(exc).__name__}: {detail}. The newest complete checkpoint is intact; "
            f"restart the job with --resume auto") from None
