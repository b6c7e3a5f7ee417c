"""Shared command-line plumbing: turn the project's known errors into one-line messages."""

from __future__ import annotations

import sys
from typing import Callable

from .checkpoint import CheckpointError
from .config import ConfigError
from .manifest import ManifestError

# Errors whose message already says what is wrong and with which input: no traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, ManifestError, CheckpointError,
                                                FileNotFoundError, ValueError)


def run_cli(prog: str, main: Callable[[], int | None], extra_errors: tuple[type[BaseException], ...] = ()) -> int:
    """Call `main`; a known error prints `prog: error: message` and exits 1."""
    try:
        return int(main() or 0)
    except USER_ERRORS + extra_errors as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr, flush=True)
        return 1
