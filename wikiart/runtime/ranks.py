"""Failures every rank must share.

Some work runs on the main process alone (writing a checkpoint or `best/`, looking at `--out`,
downloading from the Hub). If it fails there and only there, the other ranks walk on to their
next collective and wait for a peer that has already left - until --collective-timeout, which
on a cluster is many minutes of a job doing nothing. `raise_on_every_rank` hands the main
process's error to every rank, so all of them stop at once with the same message.
"""

from __future__ import annotations

from typing import Any


def raise_on_every_rank(accelerator: Any, error: BaseException | None) -> None:
    """Every rank calls this with what the main process saw (None: nothing went wrong; what
    the other ranks pass is ignored); all of them raise the main process's error, or none."""
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list
        error = broadcast_object_list([error if accelerator.is_main_process else None])[0]
    if error is not None:
        raise error


def raise_any_on_every_rank(accelerator: Any, error: BaseException | None) -> None:
    """For work done on several ranks (one per node): every rank raises the first error that any
    rank saw, or none does. A collective, so also the barrier after that work."""
    if accelerator.num_processes > 1:
        from accelerate.utils import gather_object
        errors = [e for e in gather_object([error]) if e is not None]
        error = errors[0] if errors else None
    if error is not None:
        raise error
