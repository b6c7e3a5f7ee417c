"""Hugging Face Hub: flag checks at start, background pushes of `best/`, resume from the Hub.

    train.py --push-to-hub USER/REPO [--hub-private] [--hub-every best|epoch|N] [--resume hub]

Only the main process talks to the Hub, and never from the training loop itself: the loop
stages a snapshot (hard links of `best/` and of the newest checkpoint under `training_state/`,
plus a fresh model card) and hands it to `HubPusher`, whose single worker thread uploads it
with retries and exponential backoff. A snapshot that arrives while another waits replaces it
(only the newest is pushed). At the end of training the last push is awaited with a timeout
and its outcome is printed and written to `metrics.jsonl` (kind "hub"). The token is never
read by this module except to check it exists and to redact it from messages.

The Hub client itself (and its test double hook) is `wikiart.hub`; this module is the only one
that knows both a training `Job` and the Hub.
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config.options import RunConfig
from ..formats import checkpoint as ckpt
from ..formats.files import link_tree, replace_directory
from ..formats.rundir import HUB_STAGING, HUB_STATE, MODEL_CONFIG, RunDir
from ..hub.card import write_card
from ..hub.client import (HubError, HubPusher, PushOutcome, RetryPolicy, Snapshot, call_with_retries, describe,
                          missing_on_hub, redact, say)
# Re-exported: the Hub names a training run uses (the test double is wired in wikiart.hub.repo).
from ..hub.repo import HubConfigError, check_repo_id, check_token, make_api, push_eval_card  # noqa: F401
from ..runtime.ranks import raise_on_every_rank

if TYPE_CHECKING:
    from .setup import Job

TIMEOUT_ENV = "WIKIART_HUB_TIMEOUT"
DEFAULT_FINAL_TIMEOUT = 600.0
STAGING_DIR = HUB_STAGING
STATE_SUBFOLDER = HUB_STATE

__all__ = ["HubConfigError", "HubError", "HubPusher", "HubSync", "PushOutcome", "RetryPolicy",
           "Snapshot", "check_hub_config", "download_training_state", "link_tree", "push_eval_card", "redact",
           "resolve_hub_resume"]


# ---------------------------------------------------------------------------------------------
# Checks at start (no network)
# ---------------------------------------------------------------------------------------------
def parse_every(text: str) -> str | int:
    """'best' | 'epoch' | a positive number of optimizer steps."""
    if text in ("best", "epoch"):
        return text
    if text.isdigit() and int(text) > 0:
        return int(text)
    raise HubConfigError(f"--hub-every: expected 'best', 'epoch' or a number of steps, got {text!r}")


def check_hub_config(cfg: RunConfig) -> None:
    """Reject bad Hub flags and a missing token before anything is trained or written."""
    hub, resume = cfg.hub, cfg.train.resume
    if hub.push_to_hub is None:
        if resume == "hub":
            raise HubConfigError("--resume hub: also pass --push-to-hub REPO_ID (the repo to resume from)")
        return
    check_repo_id(hub.push_to_hub)
    parse_every(hub.hub_every)
    check_token()


# ---------------------------------------------------------------------------------------------
# The training loop's side
# ---------------------------------------------------------------------------------------------
def write_run_card(job: "Job", folder: Path, repo_id: str | None = None) -> None:
    """The run's model card into the saved model `folder`: for the Hub repo `repo_id`, or (None)
    for best/ on disk, loaded by its path and named after the run (not the mixin's placeholder)."""
    write_card(folder, repo_id or str(RunDir(job.run_dir).best), title=None if repo_id else job.run_dir.name,
               run_config=job.cfg.to_dict(), manifest=job.manifest, split="val",
               world_size=job.accelerator.num_processes, steps=job.ctx.total_steps)


class HubSync:
    """When to push (`--hub-every`), staging, and the final awaited push; main process only.

    `wikiart.train.setup` calls `on_best` when best/ was replaced and `on_checkpoint` after every
    training checkpoint (past its barrier, so a wait here never holds the other ranks), and the
    loop calls `after_step` once a step's validation and checkpoint are done:

    - best: push whenever best/ improves;
    - epoch: push at each epoch-end checkpoint;
    - N: push at the first checkpoint, or validation that improves best/, at least N optimizer
      steps after the last push.

    Every push holds best/ (with the card) and the newest checkpoint under `training_state/`.
    The finished run's last checkpoint triggers `finish`; a run that stops early (signal,
    stop file, --stop-at-step) is finished at interpreter exit.
    """

    def __init__(self, job: "Job"):
        hub = job.cfg.hub
        self.job, self.repo_id, self.every = job, hub.push_to_hub, parse_every(hub.hub_every)
        self.staging = RunDir(job.run_dir).hub_staging
        shutil.rmtree(self.staging, ignore_errors=True)  # left by a crashed run
        self.pusher = HubPusher(self.repo_id, make_api, private=hub.hub_private)
        self._pushed_step, self._pushed_epoch = job.state.step, job.state.epoch
        self._submitted: tuple[Any, ...] | None = None
        self._best_due = False  # best/ improved and waits for this step's checkpoint, if any
        self._seq = 0
        self.outcome: PushOutcome | None = None
        atexit.register(self._at_exit)

    @classmethod
    def for_job(cls, job: "Job") -> "HubSync | None":
        if job.cfg.hub.push_to_hub is None or not job.accelerator.is_main_process:
            return None
        return cls(job)

    def _steps_due(self) -> bool:
        return isinstance(self.every, int) and self.job.state.step - self._pushed_step >= self.every

    def on_best(self, job: "Job") -> None:
        """best/ improved. The push waits for the checkpoint of this step, when one follows (at
        an epoch end, --save-every), so that it carries that training state, not the last one."""
        if self.every == "best" or self._steps_due():
            self._best_due = True

    def on_checkpoint(self, job: "Job") -> None:
        state = job.state
        if state.finished:
            self.finish(job)
        elif self._best_due or self._steps_due() or \
                (self.every == "epoch" and state.batch_in_epoch == 0 and state.epoch != self._pushed_epoch):
            self.submit(job)

    def after_step(self, job: "Job") -> None:
        """A step's validation and saving are done: a better best/ that no checkpoint took goes now."""
        if self._best_due:
            self.submit(job)

    def submit(self, job: "Job") -> bool:
        """Stage best/ + the newest checkpoint + card and enqueue them; False if nothing new."""
        self._best_due = False
        best, latest = RunDir(job.run_dir).best, ckpt.latest_checkpoint(job.run_dir)
        key = (job.state.best_step, latest.name if latest else None)
        if key == self._submitted or (not best.is_dir() and latest is None):
            return False
        self._seq += 1
        folder = self.staging / f"{self._seq:05d}-step-{job.state.step:08d}"
        parts = []
        if best.is_dir():
            link_tree(best, folder, skip=("README.md",))  # the card is written fresh, never into a link
            write_run_card(job, folder, self.repo_id)
            score = job.state.best_metric
            parts.append(f"best model (step {job.state.best_step}"
                         + (f", val score {score:.4f})" if score is not None else ")"))
        if latest is not None:
            link_tree(latest, folder / STATE_SUBFOLDER)
            parts.append(f"training state {latest.name}")
        self.pusher.submit(Snapshot(folder, job.state.step, "wikiart: " + " + ".join(parts)))
        self._submitted, self._pushed_step, self._pushed_epoch = key, job.state.step, job.state.epoch
        return True

    def finish(self, job: "Job", timeout: float | None = None, final: bool = True) -> PushOutcome:
        """Push the final state (`final`), await all pushes (bounded), print and record the outcome."""
        if self.outcome is not None:
            return self.outcome
        if final:
            self.submit(job)
        if timeout is None:
            timeout = float(os.environ.get(TIMEOUT_ENV, DEFAULT_FINAL_TIMEOUT))
        say(f"hub: waiting up to {timeout:g}s for the last push to {self.repo_id}")
        self.outcome = outcome = self.pusher.wait(timeout)
        self.pusher.close()
        atexit.unregister(self._at_exit)
        say(outcome.summary(self.repo_id))
        values = {**dataclasses.asdict(outcome), "pushed_step": outcome.step}
        values.pop("step")  # the row's own step is the training step
        counts = self.pusher.counts
        values.update(pushes=counts["pushed"], failures=counts["failed"], coalesced=counts["coalesced"])
        job.logger.record("hub", {"repo_id": self.repo_id, **values}, job.state.step)
        if outcome.status != "timeout":
            shutil.rmtree(self.staging, ignore_errors=True)
        return outcome

    def _at_exit(self) -> None:
        # A clean stop (STOPPED marker) pushes its state; a crash only awaits what was queued.
        stopped = RunDir(self.job.run_dir).stopped.is_file()
        if stopped or self._submitted is not None:
            try:
                self.finish(self.job, final=stopped)
            except Exception as exc:  # noqa: BLE001 - never mask the exit status
                say(f"hub: final push at exit failed: {describe(exc)}")


# ---------------------------------------------------------------------------------------------
# --resume hub
# ---------------------------------------------------------------------------------------------
BEST_PATTERNS = (MODEL_CONFIG, "model.safetensors", "metrics.json", "README.md")


def download_training_state(repo_id: str, run_dir: Path, api: Any = None,
                            policy: RetryPolicy | None = None) -> Path | None:
    """Fetch `training_state/` of `repo_id` into `run_dir/checkpoints/step-N` (and the pushed
    model into `run_dir/best/` when the run has none); None if the Hub has no training state."""
    api = api if api is not None else make_api()
    tmp = RunDir(run_dir).hub_download
    patterns = [f"{STATE_SUBFOLDER}/*", *BEST_PATTERNS]

    def download() -> str:
        # Emptied before every attempt: offline, snapshot_download returns a non-empty local_dir
        # (a failed attempt's files) as if it had downloaded it.
        shutil.rmtree(tmp, ignore_errors=True)
        return api.snapshot_download(repo_id=repo_id, allow_patterns=patterns, local_dir=str(tmp))

    try:
        call_with_retries(download, policy or RetryPolicy(), f"download of {repo_id}/{STATE_SUBFOLDER}")
        src = tmp / STATE_SUBFOLDER
        if not (src / ckpt.COMPLETE_MARKER).is_file():
            say(f"hub: {repo_id} has no complete {STATE_SUBFOLDER}/; nothing to resume from the Hub")
            return None
        step = int(json.loads((src / "state.json").read_text())["step"])
        dest = ckpt.checkpoint_root(run_dir) / f"step-{step:08d}"
        if not (dest / ckpt.COMPLETE_MARKER).is_file():
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(dest, ignore_errors=True)
            os.replace(src, dest)
        _adopt_best(tmp, RunDir(run_dir))
        say(f"hub: fetched the training state of step {step} from {repo_id}")
        return dest
    except HubError as exc:
        if missing_on_hub(exc.cause):
            say(f"hub: {repo_id} not found on the Hub; nothing to resume from the Hub")
            return None
        raise ckpt.CheckpointError(f"--resume hub: {exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _adopt_best(downloaded: Path, run: RunDir) -> None:
    """The pushed best model becomes best/ of a run that has none (a fresh machine)."""
    best, tmp = run.best, run.best_tmp
    if best.exists() or not all((downloaded / name).is_file() for name in BEST_PATTERNS[:2]):
        return
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for name in BEST_PATTERNS:
        if (downloaded / name).is_file():
            os.replace(downloaded / name, tmp / name)
    replace_directory(tmp, best)


def resolve_hub_resume(cfg: RunConfig, run_dir: Path, accelerator: Any) -> str | None:
    """`--resume hub` -> the main process fetches the Hub's state, then every rank resumes as `auto`."""
    resume = cfg.train.resume
    if resume != "hub":
        return resume
    error = None
    if accelerator.is_main_process:
        try:
            download_training_state(cfg.hub.push_to_hub, run_dir)
        except Exception as exc:  # noqa: BLE001 - reported on every rank below
            error = exc if isinstance(exc, ckpt.CheckpointError) else \
                ckpt.CheckpointError(f"--resume hub: {describe(exc)}")
    raise_on_every_rank(accelerator, error)  # every rank fails alike, none waits at a barrier
    return "auto"
