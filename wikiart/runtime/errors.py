"""Shared command-line plumbing: turn the project's known errors into one-line messages."""

from __future__ import annotations

import atexit
import gc
import re
import multiprocessing
import multiprocessing.util  # registers its exit hook now, so ours (registered later) runs first
import sys
from typing import Callable

from ..config.options import ConfigError


class UserError(RuntimeError):
    """Base of the errors whose message says what is wrong and with which input (a checkpoint
    that cannot be read, ...): a command prints it as one line. ValueError subclasses (ConfigError,
    ManifestError) count as such too."""


# Errors whose message already says what is wrong and with which input: no traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, UserError, FileNotFoundError, ValueError)


def _kill_loader_workers() -> None:
    """Loader workers ignore SIGTERM (wikiart.data.loader: SLURM signals every process), so when a
    process leaves with a loader still open - an error raised mid-epoch - multiprocessing's own
    exit hook would SIGTERM them in vain and then wait for them forever. Kill them instead."""
    for child in multiprocessing.active_children():
        if child.daemon:
            child.kill()


def run_cli(prog: str, main: Callable[[], int | None], extra_errors: tuple[type[BaseException], ...] = ()) -> int:
    """Call `main`; a known error prints `prog: error: message` and exits 1.

    Everything imported so far (torch, torchvision and the ~2,300 modules they load) is moved to
    the collector's permanent generation first: full collections, the interpreter's exit and
    forked loader workers (copy-on-write) no longer walk those objects. A training process
    starts and ends ~1 s sooner (benchmarks/process_overhead.py)."""
    gc.freeze()
    atexit.unregister(_kill_loader_workers)
    atexit.register(_kill_loader_workers)
    try:
        return int(main() or 0)
    except USER_ERRORS + extra_errors as exc:
        # One write with the newline: ranks sharing a pipe cannot splice their lines together.
        sys.stderr.write(f"{prog}: error: {one_line(exc)}\n")
        sys.stderr.flush()
        return 1


def one_line(exc: BaseException) -> str:
    """The error's message as one line. An error re-raised from a DataLoader worker carries the
    worker's traceback in its message: its own message is the traceback's last line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if len(lines) > 2 and lines[1].startswith("Original Traceback"):
        match = re.match(r"^[\w.]+: (.*)$", lines[-1])
        return match.group(1) if match else lines[-1]
    return " ".join(lines)
