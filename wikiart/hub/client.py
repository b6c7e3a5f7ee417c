"""Background pushes to the Hugging Face Hub: retries with backoff, one worker, newest wins.

Generic (no training types): `HubPusher.submit(Snapshot)` returns at once; a single daemon
thread uploads with `upload_folder`, creating the repo at the first push. Network failures
(HfHubHTTPError, ConnectionError, OSError) are retried with exponential backoff and reported,
never raised into the caller. Messages never contain the Hub token (`redact`).
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Callable

from huggingface_hub import constants as hf_constants
from huggingface_hub import errors as hf_errors
from huggingface_hub import get_token

from ..runtime.faults import fault_point

RETRYABLE = (hf_errors.HfHubHTTPError, ConnectionError, TimeoutError, OSError,
             getattr(hf_errors, "HTTPError", OSError))
# Retrying cannot make a missing repo or file appear.
NOT_FOUND = (hf_errors.RepositoryNotFoundError, hf_errors.EntryNotFoundError,
             getattr(hf_errors, "RemoteEntryNotFoundError", hf_errors.EntryNotFoundError),
             hf_errors.RevisionNotFoundError)
# What the client raises when it could not ask the Hub at all (no connection, a 5xx, offline
# mode); LocalEntryNotFoundError is also an EntryNotFoundError, but says nothing of the repo.
UNREACHABLE = (hf_errors.LocalEntryNotFoundError, hf_errors.OfflineModeIsEnabled)


def missing_on_hub(exc: BaseException | None) -> bool:
    """The Hub answered that the repo, revision or file does not exist."""
    return isinstance(exc, NOT_FOUND) and not isinstance(exc, UNREACHABLE)


def offline_mode() -> bool:
    return bool(hf_constants.HF_HUB_OFFLINE)


class HubError(RuntimeError):
    """A Hub call failed for good; `attempts` tries were made, `cause` is the last error."""

    def __init__(self, message: str, attempts: int = 0, cause: BaseException | None = None):
        super().__init__(message)
        self.attempts, self.cause = attempts, cause


class _Superseded(Exception):
    """A newer snapshot arrived while this one waited to be retried."""


def say(message: str) -> None:
    print(message, flush=True)


def redact(text: str) -> str:
    """`text` without the token (or anything shaped like a Hub token)."""
    for secret in {get_token(), os.environ.get("HF_TOKEN"), os.environ.get("HUGGING_FACE_HUB_TOKEN")}:
        if secret:
            text = text.replace(secret, "***")
    return re.sub(r"hf_[A-Za-z0-9]{8,}", "hf_***", text)


def describe(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return redact(f"{type(exc).__name__}: {lines[0] if lines else ''}")[:300]


# ---------------------------------------------------------------------------------------------
# Retries
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class RetryPolicy:
    attempts: int = 6
    base_delay: float = 5.0        # 5, 10, 20, 40, 80 s: outlasts a rate-limit window or a blip
    max_delay: float = 300.0

    def delay(self, failures: int) -> float:
        return min(self.base_delay * 2 ** (failures - 1), self.max_delay)


def _sleep(delay: float) -> bool:
    time.sleep(delay)
    return False


def call_with_retries(fn: Callable[[], Any], policy: RetryPolicy, what: str,
                      echo: Callable[[str], None] = say, wait: Callable[[float], bool] = _sleep) -> tuple[Any, int]:
    """(fn(), attempts) retrying network errors; `wait(delay)` returning True abandons the call."""
    for attempt in range(1, policy.attempts + 1):
        try:
            return fn(), attempt
        except Exception as exc:  # noqa: BLE001 - sorted below; nothing may kill the caller
            offline = isinstance(exc, UNREACHABLE) and offline_mode()  # waiting cannot bring the Hub back
            final = attempt == policy.attempts or missing_on_hub(exc) or offline or not isinstance(exc, RETRYABLE)
            if final:
                hint = "; HF_HUB_OFFLINE is set: unset it to reach the Hub" if offline else ""
                raise HubError(f"{what} failed after {attempt} attempt(s): {describe(exc)}{hint}", attempt,
                               exc) from exc
            delay = policy.delay(attempt)
            echo(f"hub: {what} failed (attempt {attempt}/{policy.attempts}): {describe(exc)}; "
                 f"retrying in {delay:.0f}s")
            if wait(delay):
                raise _Superseded() from exc
    raise AssertionError("unreachable")


def commit_url(info: Any) -> str:
    return str(getattr(info, "commit_url", None) or info)


# ---------------------------------------------------------------------------------------------
# The background pusher
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Snapshot:
    folder: Path            # staged by the caller; the pusher owns (and deletes) it
    step: int
    message: str


@dataclasses.dataclass
class PushOutcome:
    status: str             # pushed | failed | timeout | nothing | superseded
    step: int | None = None
    commit_url: str | None = None
    error: str | None = None
    attempts: int = 0

    def summary(self, repo_id: str) -> str:
        if self.status == "pushed":
            return f"hub: pushed step {self.step} to {repo_id}: {self.commit_url}"
        if self.status == "nothing":
            return f"hub: nothing to push to {repo_id} (no best/ or checkpoint yet)"
        return f"hub: push to {repo_id} {self.status}: {self.error}"


class HubPusher:
    """One worker thread, one waiting slot: `submit` never blocks; the newest snapshot wins."""

    def __init__(self, repo_id: str, api_factory: Callable[[], Any], private: bool = False,
                 policy: RetryPolicy | None = None, echo: Callable[[str], None] = say):
        self.repo_id, self.private = repo_id, private
        self.policy, self.api_factory, self.echo = policy or RetryPolicy(), api_factory, echo
        self._cond = threading.Condition()
        self._pending: Snapshot | None = None
        self._busy = self._closed = self._repo_ready = False
        self._thread: threading.Thread | None = None
        self._api: Any = None
        self.last: PushOutcome | None = None
        self.counts = {"pushed": 0, "failed": 0, "coalesced": 0}

    def submit(self, snapshot: Snapshot) -> None:
        with self._cond:
            if self._closed:
                raise RuntimeError("HubPusher is closed")
            if self._pending is not None:
                shutil.rmtree(self._pending.folder, ignore_errors=True)
                self.counts["coalesced"] += 1
            self._pending = snapshot
            if self._thread is None:
                # daemon: a push still running after the final timeout must not keep the process alive
                self._thread = threading.Thread(target=self._run, name="wikiart-hub-push", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def wait(self, timeout: float) -> PushOutcome:
        """Block until nothing is queued or running (or `timeout` s); the last outcome."""
        with self._cond:
            idle = self._cond.wait_for(lambda: self._pending is None and not self._busy, timeout)
            if not idle:
                return PushOutcome("timeout", error=f"the push did not finish within {timeout:g}s "
                                   "(it goes on in the background until the process exits)")
            return self.last or PushOutcome("nothing")

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending is not None or self._closed)
                if self._pending is None:
                    return
                snapshot, self._pending, self._busy = self._pending, None, True
            try:
                outcome = self._push(snapshot)
            except BaseException as exc:  # noqa: BLE001 - the worker must outlive any bug
                outcome = PushOutcome("failed", snapshot.step, error=describe(exc))
            shutil.rmtree(snapshot.folder, ignore_errors=True)
            with self._cond:
                if outcome.status != "superseded":
                    self.last = outcome
                    self.counts[outcome.status] = self.counts.get(outcome.status, 0) + 1
                self._busy = False
                self._cond.notify_all()

    def _newer_arrived(self, delay: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._pending is not None, timeout=delay)

    def _push(self, snapshot: Snapshot) -> PushOutcome:
        api = self._api = self._api if self._api is not None else self.api_factory()

        def attempt() -> Any:
            if not self._repo_ready:  # created at the first push, never at start
                api.create_repo(self.repo_id, private=self.private, exist_ok=True)
                self._repo_ready = True
            fault_point("hub.upload")  # the crash tests kill the process mid-push here
            return api.upload_folder(repo_id=self.repo_id, folder_path=str(snapshot.folder),
                                     commit_message=snapshot.message)
        try:
            info, attempts = call_with_retries(attempt, self.policy, f"push of step {snapshot.step}",
                                               self.echo, self._newer_arrived)
        except _Superseded:
            self.echo(f"hub: step {snapshot.step} superseded by a newer snapshot")
            return PushOutcome("superseded", snapshot.step)
        except HubError as exc:
            self.echo(f"hub: {exc}; training goes on")
            return PushOutcome("failed", snapshot.step, error=str(exc), attempts=exc.attempts)
        return PushOutcome("pushed", snapshot.step, commit_url(info), attempts=attempts)
