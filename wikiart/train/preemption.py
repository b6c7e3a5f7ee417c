"""Stop requests: SIGUSR1/SIGTERM or a stop file ask a run to save its state and exit.

SLURM sends the batch shell a warning signal before the time limit (`--signal=B:USR1@N`) and
SIGTERM on a real preemption. The batch shell touches the stop file; the ranks receive
SIGTERM from the launcher. Every `check_every` steps all ranks all-reduce their flag, so they
agree on the same step to stop at, save one consistent checkpoint, and exit with
`EXIT_PREEMPTED` (75, EX_TEMPFAIL: "stopped, resumable") for the batch script to requeue.
Launchers such as torchrun turn any non-zero rank exit into their own exit 1, so the main
process also writes `OUT/STOPPED` (JSON: step, reason); a new run removes it at start.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import torch
from accelerate import Accelerator

from ..formats.files import write_json
from ..formats.rundir import RunDir

EXIT_PREEMPTED = 75


class StopRequest:
    def __init__(self, accelerator: Accelerator, stop_file: Path, check_every: int):
        self.accelerator = accelerator
        self.stop_file = stop_file
        self.check_every = check_every
        self.reason: str | None = None
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGUSR1, signal.SIGTERM):
                signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame) -> None:  # noqa: ANN001 - signal handler signature
        self.reason = signal.Signals(signum).name

    def _local_request(self) -> bool:
        # Only the main process watches the file (shared storage may be slow to agree); the
        # all-reduce in `agreed` carries its answer to every rank.
        if self.reason is None and self.accelerator.is_main_process and self.stop_file.exists():
            self.reason = f"stop file {self.stop_file}"
        return self.reason is not None

    def agreed(self, step: int, force_check: bool = False) -> bool:
        """True on every rank at the same step once any rank was asked to stop."""
        if not force_check and step % self.check_every:
            return False
        if self.accelerator.num_processes == 1:
            return self._local_request()  # no device tensor: no host sync in a 1-GPU loop
        flag = torch.tensor(float(self._local_request()), device=self.accelerator.device)
        flag = self.accelerator.reduce(flag, reduction="sum")
        if float(flag) > 0 and self.reason is None:
            self.reason = "another rank was asked to stop"
        return float(flag) > 0

    def acknowledge(self, run_dir: Path, step: int) -> None:
        """After the state is saved: leave the STOPPED marker for the batch script and remove the
        stop file so the resumed run does not stop at once."""
        if self.accelerator.is_main_process:
            marker = {"step": step, "reason": self.reason or "--stop-at-step"}
            write_json(RunDir(run_dir).stopped, marker, indent=None, ensure_ascii=True)
            self.stop_file.unlink(missing_ok=True)
