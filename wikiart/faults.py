"""Fault injection for the crash tests: real signals at named points of a real run.

`WIKIART_FAULT=POINT@N` makes the process SIGKILL itself the N-th time it reaches
`fault_point(POINT)`; `POINT@N@rankR` only on global rank R; `...:stop` sends SIGSTOP instead
(a hung rank, for the collective-timeout test). Several faults are separated by commas.
Unset - always, outside the fault suite - a fault point is one `if` on a module constant.

Points: `train.step` (after backward, before the optimizer step), `checkpoint.write` (model
weights written, the rest of the checkpoint not), `hub.upload` (inside the background push).
"""

from __future__ import annotations

import dataclasses
import os
import signal

ENV = "WIKIART_FAULT"


@dataclasses.dataclass
class Fault:
    point: str
    nth: int
    rank: int | None
    sig: int


def parse_faults(spec: str) -> list[Fault]:
    """`point@n[@rankR][:stop|:kill]`, comma separated; ValueError names a malformed entry."""
    faults = []
    for entry in filter(None, (e.strip() for e in spec.split(","))):
        body, _, action = entry.partition(":")
        parts = body.split("@")
        try:
            if len(parts) not in (2, 3) or action not in ("", "kill", "stop"):
                raise ValueError
            rank = int(parts[2].removeprefix("rank")) if len(parts) == 3 else None
            faults.append(Fault(parts[0], int(parts[1]), rank,
                                signal.SIGSTOP if action == "stop" else signal.SIGKILL))
        except ValueError:
            raise ValueError(f"{ENV}: bad entry {entry!r}; expected POINT@N[@rankR][:kill|:stop]") from None
    return faults


_FAULTS = parse_faults(os.environ.get(ENV, ""))
_REACHED: dict[str, int] = {}


def fault_point(point: str) -> None:
    """Deliver the configured signal here if this is the chosen visit on the chosen rank."""
    if not _FAULTS:
        return
    _REACHED[point] = _REACHED.get(point, 0) + 1
    rank = int(os.environ.get("RANK", "0"))
    for fault in _FAULTS:
        if fault.point == point and fault.nth == _REACHED[point] and fault.rank in (None, rank):
            print(f"[{ENV}] rank {rank}: signal {fault.sig} at {point} #{fault.nth}", flush=True)
            os.kill(os.getpid(), fault.sig)
