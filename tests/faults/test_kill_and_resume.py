"""Crash anywhere (issue #8: items 1, 5, 6), with real train.py processes and real signals.

A run is SIGKILLed at a named point (`WIKIART_FAULT`, wikiart.runtime.faults: in a step, halfway
through a checkpoint write, inside a Hub upload) or from outside at a seeded-random moment,
then restarted with `--resume auto` (no fault): it must resume from the checkpoint that was
the newest *complete* one when it died - never a half-written one - and end with weights
bit-identical to the uninterrupted run of the same configuration. Under 2 DDP ranks a dead
rank (SIGKILL) fails the job at once and the job resumes to the uninterrupted weights; a hung
rank (SIGSTOP) fails it after --collective-timeout. Both with a one-line message and nothing
left running. The Hub failing for the rest of a run never stops it. A process whose loader
raises mid-epoch exits instead of waiting forever for its workers.

The two uninterrupted runs start in the background at the first test (the hung-rank test,
which mostly waits), so the whole module takes about 4 minutes on 2 CPU cores.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.support.hub import REPO, double_env
from tests.support.hub_double import RecordingHfApi
from tests.support.training import ROOT, TINY, final_weights, free_port, metrics_rows
from wikiart.formats import checkpoint as ckpt
from wikiart.runtime.faults import ENV as FAULT_ENV

pytestmark = [pytest.mark.faults, pytest.mark.slow]

STEPS, SAVE_EVERY = 12, 4
# 1 rank: 49 steps per epoch, 2 ranks: 24 - the runs end mid-epoch 0 at step 12.
COMMON = ["--task", "genre", "--max-steps", str(STEPS), "--save-every", str(SAVE_EVERY), "--log-every", "1",
          "--workers", "1", "--seed", "7", *TINY]
RESUMING = re.compile(r"resuming from (\S+) at step (\d+)")


# ---------------------------------------------------------------------------------------------
# Helpers: a job whose every process is tagged, so the test can signal and reap them all
# ---------------------------------------------------------------------------------------------
TAG_ENV = "WIKIART_FAULTS_JOB"  # marks every process of a job: torchrun puts ranks in new sessions


class Job:
    """train.py (1 process) or `accelerate launch` (2 gloo ranks). Every process it starts -
    launcher, ranks, loader workers, orphans included - inherits a unique tag in its
    environment, so the test can find and reap exactly those processes."""

    def __init__(self, args: list[str], out: Path, *, ranks: int = 1, fault: str | None = None,
                 env: dict[str, str] | None = None, cmd: list[str] | None = None):
        self.tag = f"{os.getpid()}-{uuid.uuid4().hex}"
        env = {**(env or os.environ), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", TAG_ENV: self.tag}
        env.pop(FAULT_ENV, None)
        if fault:
            env[FAULT_ENV] = fault
        if cmd is None:
            launcher = [sys.executable, str(ROOT / "train.py")] if ranks == 1 else [
                sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                str(ROOT / "accelerate_configs" / "cpu_ddp.yaml"), "--num_processes", str(ranks),
                "--main_process_port", str(free_port()), str(ROOT / "train.py")]
            cmd = [*launcher, *args, "--out", str(out)]
        self.out = out
        log = out.parent / f"{out.name}.{len(list(out.parent.glob(out.name + '.*.stdout')))}"
        self.stdout_path, self.stderr_path = Path(f"{log}.stdout"), Path(f"{log}.stderr")
        with self.stdout_path.open("w") as stdout, self.stderr_path.open("w") as stderr:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=stdout, stderr=stderr,
                                         start_new_session=True)

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text()

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill_all()
            raise AssertionError(f"job still running after {timeout}s\n{self.tail()}") from None

    def wait_for(self, what: str, predicate, timeout: float = 240) -> float:
        """Poll until `predicate()`; the monotonic time it became true. Fails if the job ends first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return time.monotonic()
            if self.proc.poll() is not None:
                raise AssertionError(f"job ended (rc {self.proc.returncode}) before {what}\n{self.tail()}")
            time.sleep(0.05)
        self.kill_all()
        raise AssertionError(f"timed out waiting for {what}\n{self.tail()}")

    def members(self) -> dict[int, str]:
        """pid -> state letter (R, S, T...) of every live process of this job."""
        marker = f"{TAG_ENV}={self.tag}".encode() + b"\0"
        found = {}
        for proc_dir in Path("/proc").glob("[0-9]*"):
            try:
                if marker in (proc_dir / "environ").read_bytes():
                    state = (proc_dir / "stat").read_text().rsplit(")", 1)[1].split()[0]
                    if state not in ("Z", "X"):
                        found[int(proc_dir.name)] = state
            except OSError:  # gone meanwhile
                continue
        return found

    def kill_all(self) -> None:
        """SIGKILL every process of this job (SIGKILL also ends a stopped one) and reap the launcher."""
        for _ in range(50):
            pids = self.members()
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(30)

    def tail(self) -> str:
        return f"--- stdout\n{self.stdout[-3000:]}\n--- stderr\n{self.stderr[-5000:]}"


def run_to_end(args: list[str], out: Path, *, ranks: int = 1, env: dict[str, str] | None = None,
               timeout: float = 400) -> Job:
    job = Job(args, out, ranks=ranks, env=env)
    try:
        rc = job.wait(timeout)
        assert rc == 0, f"train failed ({rc})\n{job.tail()}"
    finally:
        job.kill_all()
    return job


def run_killed(args: list[str], out: Path, fault: str, *, env: dict[str, str] | None = None) -> Job:
    """A run that must SIGKILL itself at `fault`."""
    job = Job(args, out, fault=fault, env=env)
    try:
        rc = job.wait(400)
    finally:
        job.kill_all()  # its loader worker would otherwise linger until it notices
    point = fault.split("@")[0]
    assert rc == -signal.SIGKILL, f"expected death by SIGKILL at {fault}, got rc {rc}\n{job.tail()}"
    assert f"[{FAULT_ENV}] rank 0: signal {int(signal.SIGKILL)} at {point}" in job.stdout
    return job


def resume_point(stdout: str) -> tuple[Path, int]:
    found = RESUMING.findall(stdout)
    assert len(found) == 1, f"expected one 'resuming from' line:\n{stdout[-3000:]}"
    return Path(found[0][0]), int(found[0][1])


def last_logged_step(run_dir: Path) -> int:
    """The newest train row of metrics.jsonl while it is being written (a partial line is skipped)."""
    path, steps = run_dir / "metrics.jsonl", [0]
    for line in path.read_text().splitlines() if path.exists() else []:
        with contextlib.suppress(ValueError):
            row = json.loads(line)
            steps += [row["step"]] if row.get("kind") == "train" else []
    return max(steps)


def complete_steps(run_dir: Path) -> list[int]:
    return [int(p.name.split("-")[1]) for p in ckpt.list_complete(run_dir)]


def assert_same_weights(reference: Path, run_dir: Path) -> None:
    a, b = final_weights(reference), final_weights(run_dir)
    assert a.keys() == b.keys()
    differ = [name for name in a if not torch.equal(a[name], b[name])]
    assert not differ, f"{len(differ)}/{len(a)} tensors differ from the uninterrupted run, e.g. {differ[:3]}"


def resume_and_check(args: list[str], out: Path, reference: "Reference", *, ranks: int = 1,
                     env: dict[str, str] | None = None) -> Job:
    """Restart with --resume auto: it must pick the newest complete checkpoint on disk (the one
    that was newest when the job died) and finish with the uninterrupted run's weights."""
    newest = ckpt.latest_checkpoint(out)
    job = run_to_end([*args, "--resume", "auto"], out, ranks=ranks, env=env)
    if newest is None:
        assert "resuming from" not in job.stdout
    else:
        path, step = resume_point(job.stdout)
        assert path == newest and step == int(newest.name.split("-")[1]), (path, newest)
        assert re.fullmatch(r"step-\d{8}", path.name)
        train_steps = [r["step"] for r in metrics_rows(out, "train")]
        assert train_steps[-(STEPS - step):] == list(range(step + 1, STEPS + 1)), train_steps
    assert_same_weights(reference.ready(), out)
    assert not [p for p in ckpt.checkpoint_root(out).iterdir() if ".tmp-" in p.name or p.name.endswith(".old")]
    return job


# ---------------------------------------------------------------------------------------------
# The uninterrupted runs, one per configuration
# ---------------------------------------------------------------------------------------------
class Reference:
    """An uninterrupted run started in the background; `ready()` waits for it to finish."""

    def __init__(self, job: Job):
        self.job, self.finished = job, False

    def ready(self) -> Path:
        if not self.finished:
            rc = self.job.wait(600)
            assert rc == 0, f"the reference run failed ({rc})\n{self.job.tail()}"
            assert complete_steps(self.job.out)[-1] == STEPS
            self.finished = True
        return self.job.out


@pytest.fixture(scope="module")
def references(synthetic_shards: Path, tmp_path_factory: pytest.TempPathFactory):
    """(args, {ranks: Reference}). Both references start at once, in the background, when the
    first test asks - the hung-rank test, which leaves the CPUs idle while it waits out the
    collective timeout and the launcher's grace period."""
    args = ["--shards", str(synthetic_shards), *COMMON]
    root = tmp_path_factory.mktemp("faults")
    refs = {ranks: Reference(Job(args, root / f"reference-{ranks}rank", ranks=ranks)) for ranks in (1, 2)}
    yield args, refs
    for ref in refs.values():
        ref.job.kill_all()


# ---------------------------------------------------------------------------------------------
# Two DDP ranks: a dead rank and a hung rank
# ---------------------------------------------------------------------------------------------
def fault_seen(job: Job, rank: int, sig: int) -> bool:
    return f"[{FAULT_ENV}] rank {rank}: signal {int(sig)} at train.step" in job.stdout


def assert_rank0_exited_by_itself(stderr: str) -> None:
    """torchrun's failure summary: rank 0 ended with exit status 1 (train.py's error exit),
    not -9 (what the launcher's SIGKILL leaves when a rank does not end by itself)."""
    assert re.search(r"rank\s*: 0 \(local_rank: 0\)\s*exitcode\s*: 1 ", stderr), stderr[-3000:]
    assert ("train.py: error: rank 0 of 2: a collective with the other ranks failed - another rank died "
            "or hung") in stderr
    assert "[rank0]: Traceback" not in stderr  # a message, not a stack trace


def test_a_hung_rank_fails_the_job_after_the_collective_timeout(references, tmp_path):
    """Rank 1 is SIGSTOPped in step 6: rank 0 waits --collective-timeout 10 s in its next
    collective, then exits 1 with a message; the launcher SIGKILLs the stopped rank after its
    grace period. Nothing of the job is left, stopped or otherwise."""
    args, _ = references  # (started here: they run while this test waits)
    out = tmp_path / "ddp"
    job = Job([*args, "--collective-timeout", "10"], out, ranks=2, fault="train.step@6@rank1:stop")
    try:
        stopped_at = job.wait_for("the fault", lambda: fault_seen(job, 1, signal.SIGSTOP))
        job.wait_for("rank 1 to stop", lambda: "T" in job.members().values(), 10)
        failed_at = job.wait_for("rank 0's error", lambda: "train.py: error: rank 0 of 2" in job.stderr, 120)
        rc = job.wait(200)
        elapsed = time.monotonic() - stopped_at
        deadline = time.monotonic() + 20  # an orphaned loader worker notices within ~5 s
        while job.members() and time.monotonic() < deadline:
            time.sleep(0.2)
        left = job.members()
    finally:
        job.kill_all()
    assert rc != 0, job.tail()
    assert 9 <= failed_at - stopped_at < 60, failed_at - stopped_at  # rank 0 waited ~10 s, not 30 min
    assert elapsed < 120, elapsed  # + the launcher's 30 s grace before it SIGKILLs the stopped rank
    assert not left, f"processes left behind: {left}"
    assert_rank0_exited_by_itself(job.stderr)
    assert "(no collective waits longer than --collective-timeout 10s)" in job.stderr
    assert "Timed out waiting 10000ms" in job.stderr  # the flag reached the process group
    assert complete_steps(out) == [4]


def test_a_dead_rank_fails_the_job_promptly_and_the_job_resumes(references, tmp_path):
    """Rank 1 is SIGKILLed in step 6. Rank 0 must not wait for it (the explicit collective
    timeout is far longer than the bound here): the launcher exits non-zero naming the dead
    rank, rank 0 says why it stopped, and --resume auto ends with the uninterrupted weights."""
    args, refs = references
    out = tmp_path / "ddp"
    job = Job([*args, "--collective-timeout", "300"], out, ranks=2, fault="train.step@6@rank1")
    try:
        killed_at = job.wait_for("the fault", lambda: fault_seen(job, 1, signal.SIGKILL))
        rc = job.wait(200)
        elapsed = time.monotonic() - killed_at
    finally:
        job.kill_all()
    assert rc != 0 and elapsed < 60, (rc, elapsed)
    assert re.search(r"rank\s*: 1 \(local_rank: 1\)\s*exitcode\s*: -9 ", job.stderr), job.stderr[-3000:]
    assert_rank0_exited_by_itself(job.stderr)
    assert complete_steps(out) == [4]
    resumed = resume_and_check(args, out, refs[2], ranks=2)
    assert resume_point(resumed.stdout)[1] == 4


# ---------------------------------------------------------------------------------------------
# One process: kills at named points and at a random moment
# ---------------------------------------------------------------------------------------------
def test_killed_during_a_step_resumes_from_the_checkpoint_before(references, tmp_path):
    args, refs = references
    out = tmp_path / "run"
    run_killed(args, out, "train.step@6")  # step 6 computed its gradients, no optimizer step
    assert complete_steps(out) == [4]
    resume_and_check(args, out, refs[1])


def test_checkpoint_written_halfway_is_never_picked(references, tmp_path):
    args, refs = references
    out = tmp_path / "run"
    killed = run_killed(args, out, "checkpoint.write@2")  # the save of step 8: weights only
    half = ckpt.checkpoint_root(out) / f"step-00000008.tmp-{killed.proc.pid}"
    assert half.is_dir() and (half / "model.safetensors").is_file(), sorted(ckpt.checkpoint_root(out).iterdir())
    assert not (half / ckpt.COMPLETE_MARKER).exists() and not (half / "optimizer.pt").exists()
    assert not (ckpt.checkpoint_root(out) / "step-00000008").exists()
    assert complete_steps(out) == [4]
    resumed = resume_and_check(args, out, refs[1])
    assert resume_point(resumed.stdout)[1] == 4
    assert not half.exists()  # the next save removed the leftover


def test_killed_during_a_hub_push_resumes_and_trains_on_through_a_hub_outage(references, tmp_path):
    """Killed inside the background upload of step 4; the restarted run then meets a Hub that
    fails every call until the end: it must still finish with the uninterrupted weights."""
    args, refs = references
    hub_args = [*args, "--push-to-hub", REPO, "--hub-every", str(SAVE_EVERY)]
    out, store = tmp_path / "run", tmp_path / "hub"
    run_killed(hub_args, out, "hub.upload@1", env=double_env(store))
    api = RecordingHfApi(store, fail_times=0)
    assert [c["call"] for c in api.calls()] == ["create_repo"]  # died before the upload itself
    assert complete_steps(out)[-1] >= 4

    outage = {**double_env(store, fail=10**6), "WIKIART_HUB_TIMEOUT": "1"}
    resumed = resume_and_check(hub_args, out, refs[1], env=outage)
    failed = api.calls()[1:]
    assert failed and all(c["call"] == "create_repo" for c in failed)  # every attempt failed
    (row,) = metrics_rows(out, "hub")
    assert row["status"] in ("failed", "timeout") and row["pushes"] == 0, row
    assert "hub: push to" in resumed.stdout and not (api.remote(REPO) / "training_state").exists()


@pytest.mark.parametrize("seed", [9])  # step 8 + 0.18 s: around the checkpoint save of step 8
def test_sigkill_at_a_random_moment_resumes_to_the_same_weights(seed, references, tmp_path):
    """Unplanned points: killed from outside at a seeded-random moment - a short random delay
    after the log line of a random step (what follows a log line: the checkpoint save and
    pruning on save steps, the next step's data and compute), wherever that lands."""
    args, refs = references
    out = tmp_path / "run"
    rng = random.Random(seed)
    step, delay = rng.randint(5, STEPS - 1), rng.uniform(0.0, 0.3)
    job = Job(args, out)
    try:
        job.wait_for(f"step {step}", lambda: last_logged_step(out) >= step)
        time.sleep(delay)
        job.proc.send_signal(signal.SIGKILL)  # the loader worker is orphaned, as after the OOM killer
        rc = job.wait(60)
    finally:
        job.kill_all()
    assert rc == -signal.SIGKILL, f"the run was not running {delay:.2f}s after step {step}\n{job.tail()}"
    assert complete_steps(out)[-1] < STEPS
    resume_and_check(args, out, refs[1])


# ---------------------------------------------------------------------------------------------
# A process that fails mid-epoch exits; its loader workers do not keep it alive
# ---------------------------------------------------------------------------------------------
LOADER_BUG = '''
import signal, sys, torch
from torch.utils.data import DataLoader, IterableDataset
from wikiart.runtime.errors import run_cli

class Stream(IterableDataset):
    def __iter__(self):
        yield torch.zeros(1)
        raise KeyError("a bug in the loader")

def ignore_stop_signals(_worker_id):  # as wikiart.data.loader's workers do (SLURM signals every process)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

def main():
    for _ in DataLoader(Stream(), batch_size=None, num_workers=1, worker_init_fn=ignore_stop_signals):
        pass

sys.exit(run_cli("probe", main))
'''


def test_an_error_raised_in_a_loader_worker_ends_the_process(tmp_path):
    """The error reaches the main process with the loader still open; at exit multiprocessing
    SIGTERMs the worker - which ignores SIGTERM - and used to wait for it forever (a rank that
    never exits keeps the whole job hanging). run_cli's exit hook kills the workers instead."""
    job = Job([], tmp_path / "probe", cmd=[sys.executable, "-c", LOADER_BUG])
    try:
        rc = job.wait(90)
        left = job.members()
    finally:
        job.kill_all()
    assert rc == 1 and "KeyError: 'a bug in the loader'" in job.stderr, job.tail()
    assert not left, left


# ---------------------------------------------------------------------------------------------
# A full disk during a checkpoint save: real write errors from the OS, not a patched function
# ---------------------------------------------------------------------------------------------
LIMITED = ("import os, resource, signal, sys; limit = int(sys.argv[1]); "
           "resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)); "
           "signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "  # ignored across exec: EFBIG, not death
           "os.execv(sys.executable, [sys.executable, *sys.argv[2:]])")


@contextlib.contextmanager
def small_tmpfs(path: Path, size: int):
    """A real filesystem of `size` bytes at `path` (needs root, as CI has); skips otherwise."""
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture(scope="module")
def stopped_at_the_first_save(synthetic_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run stopped right after its first checkpoint (step SAVE_EVERY): each full-disk test
    resumes a copy of it into a disk without room for the next save."""
    first = Job(["--shards", str(synthetic_shards), *COMMON, "--stop-at-step", str(SAVE_EVERY)],
                tmp_path_factory.mktemp("full-disk") / "first")
    try:
        assert first.wait(300) == 75, first.tail()
    finally:
        first.kill_all()
    return first.out


@pytest.mark.parametrize("how", ["file-size-limit", "full-filesystem"])
def test_a_full_disk_during_a_save_keeps_the_previous_checkpoint(how, synthetic_shards, stopped_at_the_first_save,
                                                                 tmp_path):
    args = ["--shards", str(synthetic_shards), *COMMON]
    first = stopped_at_the_first_save
    saved = ckpt.latest_checkpoint(first)
    weights_size = (saved / "model.safetensors").stat().st_size
    run_size = sum(p.stat().st_size for p in first.rglob("*") if p.is_file())
    with contextlib.ExitStack() as stack:
        if how == "file-size-limit":  # any file larger than half the weights fails with EFBIG
            out = tmp_path / "run"
            limit = weights_size // 2
            cmd = [sys.executable, "-c", LIMITED, str(limit), str(ROOT / "train.py"), *args,
                   "--resume", "auto", "--out", str(out)]
            error = "File too large"
        else:  # room for the run so far and half the next weights file: the save hits ENOSPC
            # The run directory is the mount point: the job's logs (beside it) stay writable.
            out = stack.enter_context(small_tmpfs(tmp_path / "run", run_size + weights_size // 2))
            cmd, error = None, "No space left on device"
        shutil.copytree(first, out, dirs_exist_ok=True)
        job = Job([*args, "--resume", "auto"], out, cmd=cmd)
        try:
            rc = job.wait(300)
        finally:
            job.kill_all()
        assert rc == 1, job.tail()
        errors = [line for line in job.stderr.splitlines() if "error" in line]
        assert "Traceback" not in job.stderr and len(errors) == 1, job.stderr[-3000:]
        assert f"could not write checkpoint {out}/checkpoints/step-{2 * SAVE_EVERY:08d}" in errors[0]
        assert error in errors[0] and "previous checkpoints are intact" in errors[0]
        assert complete_steps(out) == [SAVE_EVERY]          # nothing half-written looks complete
        assert [p.name for p in ckpt.checkpoint_root(out).iterdir()] == [saved.name]  # no tmp left
        state, weights, _, _ = ckpt.load_checkpoint(ckpt.latest_checkpoint(out))
        assert state.step == SAVE_EVERY
        assert all(torch.equal(w, load_file(str(saved / "model.safetensors"))[k]) for k, w in weights.items())


def test_a_full_disk_under_two_ranks_stops_every_rank_at_once(synthetic_shards, tmp_path):
    """Only rank 0 writes checkpoints. When its save fails (a file-size limit: EFBIG), rank 1
    must stop at once with the same one-line error. Before, rank 1 walked on to its next
    collective: here gloo noticed the closed socket and rank 1 blamed a lost peer; where a
    backend does not notice, it waited out --collective-timeout (600 s here)."""
    out = tmp_path / "ddp"
    launch = ["-m", "accelerate.commands.launch", "--config_file", str(ROOT / "accelerate_configs" / "cpu_ddp.yaml"),
              "--num_processes", "2", "--main_process_port", str(free_port()), str(ROOT / "train.py")]
    cmd = [sys.executable, "-c", LIMITED, str(1_000_000), *launch, "--shards", str(synthetic_shards), *COMMON,
           "--collective-timeout", "600", "--out", str(out)]
    job = Job([], out, cmd=cmd)
    try:
        rc = job.wait(240)
    finally:
        job.kill_all()
    assert rc != 0, job.tail()
    errors = [line for line in job.stderr.splitlines() if line.startswith("train.py: error:")]
    expected = f"could not write checkpoint {out}/checkpoints/step-{SAVE_EVERY:08d}: "
    assert len(errors) == 2 and errors[0] == errors[1], job.stderr[-3000:]
    assert expected in errors[0] and "File too large" in errors[0], errors[0]
    assert "rank 0 of 2" not in job.stderr  # no rank reports a lost peer: they stopped together
    assert complete_steps(out) == [] and not list(ckpt.checkpoint_root(out).iterdir())
