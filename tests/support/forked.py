"""train.py and evaluate.py as real processes forked from a server that has already imported them.

A new interpreter spends ~4 s of CPU importing torch, torchvision and Accelerate before a tiny
test run trains for a second; the suite starts hundreds of them. Here each run is a child of
multiprocessing's fork server, which imports the two commands once per test worker: the child
has its own pid, environment, working directory, signal handlers, stdout/stderr files and exit
code, and runs exactly what `python train.py ARGS` runs (`wikiart.cli.train.main(ARGS)`, then the
interpreter's exit hooks) - only the imports are already done.

What a fork cannot give: environment variables that a library reads once at import time (they
are the server's). ForkedRun refuses those (`check_env`), and run_train launches a new `python
train.py` for a run that sets one. `accelerate launch` (several ranks) always starts new
interpreters.
"""

from __future__ import annotations

import atexit
import io
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

COMMANDS = {"train.py": "wikiart.cli.train", "evaluate.py": "wikiart.cli.evaluate"}
# Read when a run reads them, not when a module is imported: a forked run may set these.
# (PYTHONPATH: the child puts its entries on sys.path, as a new interpreter does.)
CALL_TIME_ENV = {"OMP_NUM_THREADS", "PYTHONUNBUFFERED", "PYTHONPATH", "TORCH_HOME", "HF_TOKEN",
                 "WIKIART_HUB_API", "WIKIART_HUB_DOUBLE_DIR", "WIKIART_HUB_DOUBLE_FAIL", "WIKIART_HUB_TIMEOUT",
                 "WIKIART_SHARD_CACHE_GB", "WIKIART_REMOTE_RETRIES", "WIKIART_REMOTE_BACKOFF"}

_context: multiprocessing.context.ForkServerContext | None = None


def fork_context() -> multiprocessing.context.ForkServerContext:
    """The fork server, started on first use with both commands imported (single-threaded torch:
    the thread count a test run gets from OMP_NUM_THREADS=1)."""
    global _context
    if _context is None:
        os.environ["OMP_NUM_THREADS"] = "1"
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload([*COMMANDS.values(), "timm", __name__])  # a missing one is skipped
    return _context


def import_time_env(env: dict[str, str]) -> set[str]:
    """The variables `env` changes (from this process's) that a forked child would not see: those
    some module reads when it is imported, which the server did with its own environment."""
    changed = {k for k in env.keys() | os.environ.keys() if env.get(k) != os.environ.get(k)}
    return changed - CALL_TIME_ENV


def check_env(env: dict[str, str]) -> None:
    refused = import_time_env(env)
    if refused:
        raise ValueError(f"a forked run cannot take {sorted(refused)} (read at import time): launch a new "
                         "interpreter for it")


def _run_command(module: str, argv: list[str], env: dict[str, str], cwd: str, stdout: str, stderr: str) -> None:
    """In the child: become `python SCRIPT ARGV` with `env`, then exit as the interpreter would."""
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    sys.path[1:1] = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path]
    for fd, path in ((1, stdout), (2, stderr)):
        opened = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(opened, fd)
        os.close(opened)
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), write_through=True)
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), write_through=True)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    import torch
    torch.set_num_threads(int(env.get("OMP_NUM_THREADS", "1")))
    try:
        code = sys.modules[module].main(argv)
    finally:
        atexit._run_exitfuncs()  # multiprocessing's children skip them; an interpreter runs them
    sys.exit(code)


class ForkedRun:
    """A running command, with the parts of subprocess.Popen the tests use."""

    def __init__(self, script: str, argv: list[str], env: dict[str, str], cwd: Path):
        check_env(env)
        logs = Path(tempfile.mkdtemp(prefix="forked-run-"))
        self.stdout_path, self.stderr_path = logs / "stdout", logs / "stderr"
        self.output: tuple[str, str] | None = None  # read once the run has ended; the files go then
        self.process = fork_context().Process(
            target=_run_command, args=(COMMANDS[script], list(argv), dict(env), str(cwd), str(self.stdout_path),
                                       str(self.stderr_path)))
        self.process.start()
        self.pid, self.args = self.process.pid, [script, *argv]

    @property
    def returncode(self) -> int | None:
        return self.process.exitcode

    def poll(self) -> int | None:
        return self.process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self.process.join(timeout)
        if self.process.exitcode is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self.process.exitcode

    def send_signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def kill(self) -> None:
        self.process.kill()

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        """Wait for the end (killed after `timeout`, as subprocess.run does); (stdout, stderr)."""
        try:
            self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            self.process.join()
            raise
        finally:
            if self.process.exitcode is not None and self.output is None:
                self.output = self.stdout_path.read_text(), self.stderr_path.read_text()
                shutil.rmtree(self.stdout_path.parent)
        return self.output

    def completed(self, timeout: float | None = None) -> subprocess.CompletedProcess:
        stdout, stderr = self.communicate(timeout)
        return subprocess.CompletedProcess(self.args, self.returncode, stdout, stderr)
