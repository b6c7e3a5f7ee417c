"""Run logging: rich progress and tables on the main process, `metrics.jsonl`, Accelerate trackers.

Only the main process prints or writes; the other ranks get a logger whose methods do nothing.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from ..formats.rundir import RunDir


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


UNCOUNTED = "hub"  # rows of the background pusher: a resume does not log them again


def _row_step_and_kind(line: str) -> tuple[int, str]:
    try:
        row = json.loads(line)
        return int(row["step"]), str(row["kind"])
    except (ValueError, KeyError, TypeError):  # a line cut by the kill: dropped
        return sys.maxsize, ""


class RunLogger:
    def __init__(self, run_dir: str | Path, accelerator, total_steps: int, show_progress: bool = True):
        self.accelerator = accelerator
        self.enabled = accelerator.is_main_process
        self.path = RunDir(run_dir).metrics
        self.console = Console(stderr=False, highlight=False)
        self.total_steps = total_steps
        self._progress: Progress | None = None
        self._task = None
        self._show = show_progress and self.enabled and sys.stdout.isatty()
        self._last_time = time.perf_counter()
        self._last_step = 0
        self._rows_at = (0, 0)  # (step, rows of that step but the uncounted ones) written so far

    def __enter__(self) -> "RunLogger":
        if self._show:
            self._progress = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                                      TextColumn("{task.fields[info]}"), TimeRemainingColumn(),
                                      console=self.console, transient=False)
            self._progress.start()
            self._task = self._progress.add_task("train", total=self.total_steps, info="")
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()

    def record(self, kind: str, values: dict[str, Any], step: int) -> None:
        """Append one line to metrics.jsonl and send the numbers to the trackers."""
        if not self.enabled:
            return
        row = {"kind": kind, "step": step, "time": time.time(),
               **{k: _clean(v) for k, v in values.items()}}
        with self.path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        if kind != UNCOUNTED:
            self._rows_at = (step, self.rows_at(step) + 1)
        numeric = {f"{kind}/{k}": v for k, v in values.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if numeric:
            self.accelerator.log(numeric, step=step)

    def rows_at(self, step: int) -> int:
        """How many rows of `step` (Hub pushes aside) this run's log holds: what a checkpoint of
        `step` records, so that its resume keeps exactly those."""
        return self._rows_at[1] if self._rows_at[0] == step else 0

    def forget_after(self, step: int, rows_at_step: int | None = None) -> None:
        """Drop the rows logged after the checkpoint of `step`: those of later steps, and of `step`
        itself beyond the first `rows_at_step` (Hub pushes aside; None: keep them all). A run
        killed after its last checkpoint logged steps - or its epoch's validation - that the
        resumed run logs again."""
        if not self.enabled or not self.path.is_file():
            return
        lines = self.path.read_text().splitlines(keepends=True)
        kept, at_step = [], 0
        for line in lines:
            row_step, kind = _row_step_and_kind(line)
            if row_step > step:
                continue
            if row_step == step and kind != UNCOUNTED:
                if rows_at_step is not None and at_step >= rows_at_step:
                    continue  # logged after the checkpoint: the resumed run logs it again
                at_step += 1
            kept.append(line)
        self._rows_at = (step, at_step)
        if len(kept) < len(lines) or (kept and not kept[-1].endswith("\n")):
            tmp = self.path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(line if line.endswith("\n") else line + "\n" for line in kept))
            os.replace(tmp, self.path)

    def restart_clock(self, step: int) -> None:
        """Measure throughput from `step` on (after a resume or a pause such as validation)."""
        self._last_time, self._last_step = time.perf_counter(), step

    def images_per_second(self, step: int, images_per_step: int) -> float:
        now = time.perf_counter()
        rate = (step - self._last_step) * images_per_step / max(now - self._last_time, 1e-9)
        self._last_time, self._last_step = now, step
        return rate

    def progress(self, step: int, loss: float, lr: float, rate: float) -> None:
        info = f"loss {loss:.4f}  lr {lr:.2e}  {rate:.1f} img/s"
        if self._progress is not None:
            self._progress.update(self._task, completed=step, info=info)
        elif self.enabled:
            self.console.print(f"step {step}/{self.total_steps}  {info}")

    def print(self, *args: Any) -> None:
        if self.enabled:
            self.console.print(*args)

    def epoch_table(self, epoch: int, train: dict[str, float], val: dict[str, float]) -> None:
        if self.enabled:
            self.console.print(epoch_table(epoch, train, val))


def _pct(value: Any) -> str:
    return f"{100 * value:.2f}%" if isinstance(value, (int, float)) and math.isfinite(value) else "n/a"


def _loss(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) and math.isfinite(value) else "n/a"


def epoch_table(epoch: int, train: dict[str, float], val: dict[str, Any]) -> Table:
    """The numbers the seed notebooks print after each epoch, one row per head: train loss (in
    the title), val loss, top-1, top-5, macro and weighted F1. Several heads add a `joint` row
    (the summed loss and the mean metrics over the paintings labelled for every head) and the
    joint exact match in the caption. Metrics are fractions; shown as percentages like the seed."""
    tasks = [key[:-len("/top1")] for key in val if key.endswith("/top1")]
    table = Table(title=f"epoch {epoch}: train loss {_loss(train.get('loss'))}", title_justify="left")
    for name in ("head", "val loss", "top-1", "top-5", "macro F1", "weighted F1", "scored"):
        table.add_column(name, justify="left" if name == "head" else "right")
    for t in tasks:
        table.add_row(t, _loss(val.get(f"{t}/loss")), *(_pct(val.get(f"{t}/{k}")) for k in
                      ("top1", "top5", "macro_f1", "weighted_f1")), str(val.get(f"{t}/scored", "")))
    if "joint_exact_match" in val:
        table.add_row("joint", _loss(val.get("loss")), *(_pct(val.get(f"mean_{k}")) for k in
                      ("top1", "top5", "macro_f1", "weighted_f1")), str(val.get("joint_scored", "")))
        table.caption = (f"joint exact match {_pct(val['joint_exact_match'])} (joint: summed loss and means "
                         f"over the paintings with every label)")
        table.caption_justify = "left"
    return table
