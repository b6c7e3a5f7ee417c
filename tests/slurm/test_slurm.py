"""The slurm/ batch scripts on a real SLURM: a throwaway cluster of two one-CPU nodes on this
machine (tests/slurm/cluster.sh) runs the shard array + merge, two-node training, preemption with
requeue and resume, failing jobs, and evaluation.

Needs the Debian packages slurmctld, slurmd, slurm-client and munge, and root (`.ci/slurm.sh`
installs them). Without them these tests skip, except under CI (CI=true), where they fail.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.support.training import ROOT, TINY
from wikiart.formats import checkpoint as ckpt
from wikiart.data.loader import train_samples_for
from wikiart.formats.manifest import load_manifest

CLUSTER = ROOT / "tests" / "slurm" / "cluster.sh"
BINARIES = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "srun", "scontrol", "scancel", "squeue")
# The tiny model (tests/support/training.py), one loader worker per rank (as real runs have: SLURM
# signals every process of a step, workers included), a log row and a stop check every step or two.
RUN = ["--task", "genre", "--epochs", "1", "--seed", "3", "--log-every", "1", "--stop-check-every", "2", *TINY,
       "--workers", "1"]
BATCH, RANKS = 8, 2
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def _free_ports(count: int) -> int:
    """The first of `count` consecutive free TCP ports (two test sessions may share the host)."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + count > 65535:
            continue
        try:
            for port in range(base, base + count):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise RuntimeError("no block of free ports")


@dataclass
class Slurm:
    """The running test cluster and helpers to submit to it and watch jobs."""
    conf: Path

    def env(self, **extra: str) -> dict[str, str]:
        # sbatch passes this environment on to the job (--export=ALL is the default).
        return {**os.environ, "SLURM_CONF": str(self.conf), "OMP_NUM_THREADS": "1",
                "WIKIART_MAIN_PORT": str(_free_ports(1)), **extra}

    def run(self, *cmd: str, env: dict[str, str] | None = None) -> str:
        proc = subprocess.run(list(cmd), cwd=ROOT, env=env or self.env(), capture_output=True, text=True,
                              timeout=60)
        if proc.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stdout}{proc.stderr}")
        return proc.stdout

    def sbatch(self, *args: str, env: dict[str, str] | None = None) -> str:
        return self.run("sbatch", "--parsable", *args, env=env).strip().split(";")[0]

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job` as a dict (JobState, Restarts, ExitCode, BeginTime, ...)."""
        fields: dict[str, str] = {}
        for line in self.run("scontrol", "show", "job", job_id).splitlines():
            for token in line.split():
                key, sep, value = token.partition("=")
                if sep:
                    fields.setdefault(key, value)
        return fields

    def wait_for_state(self, job_id: str, states: set[str], log: Path, timeout: float) -> dict[str, str]:
        """Poll until the job is in one of `states`; on timeout, fail with the job and its log."""
        return wait_until(lambda: (lambda job: job if job["JobState"] in states else None)(self.job(job_id)),
                          timeout, f"job {job_id} to reach {sorted(states)}",
                          lambda: f"{self.job(job_id)}\n{tail(log)}")


def wait_until(probe: Callable[[], object], timeout: float, what: str,
               explain: Callable[[], str] = lambda: "") -> object:
    """Poll `probe` (every 0.5 s) until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = probe()
        if result:
            return result
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{explain()}")


def tail(path: Path, chars: int = 6000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else f"(no {path})"


def train_steps(run_dir: Path) -> list[int]:
    """Steps of the train rows of metrics.jsonl so far (a half-written last line is skipped)."""
    path = run_dir / "metrics.jsonl"
    steps = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row.get("kind") == "train":
            steps.append(row["step"])
    return steps


def n_train(shards: Path) -> int:
    """Training samples of a genre epoch: those with a genre label."""
    return train_samples_for(load_manifest(shards), "genre")


@pytest.fixture(scope="session")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slurm]:
    missing = [b for b in BINARIES if shutil.which(b) is None]
    reason = (f"SLURM is not installed (missing {', '.join(missing)}): run .ci/slurm.sh --install-only"
              if missing else None)
    if reason is None and os.geteuid() != 0:
        reason = "the test SLURM cluster needs root (slurmd runs job steps as the submitting user)"
    if reason:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(reason)
        pytest.skip(reason)
    directory = tmp_path_factory.mktemp("slurm")
    env = {**os.environ, "WIKIART_SLURM_DIR": str(directory), "WIKIART_SLURM_PORT": str(_free_ports(3))}
    up = subprocess.run([str(CLUSTER), "up"], env=env, capture_output=True, text=True, timeout=120)
    if up.returncode != 0:
        subprocess.run([str(CLUSTER), "down"], env=env, capture_output=True, timeout=120)
        pytest.fail(f"tests/slurm/cluster.sh up failed:\n{up.stdout}{up.stderr}")
    try:
        yield Slurm(conf=directory / "slurm.conf")
    finally:
        subprocess.run([str(CLUSTER), "down"], env=env, capture_output=True, timeout=120)


# ----------------------------------------------------------------------------------------------
# Shards: an array of two parts plus the dependent merge equal one build
# ----------------------------------------------------------------------------------------------
def test_build_shards_array_and_merge_equal_a_single_build(slurm: Slurm, tmp_path: Path) -> None:
    args = ["--synthetic", "60", "--synthetic-max-side", "48", "--short-side", "32", "--min-shards", "4",
            "--min-val-shards", "2", "--val-frac", "0.2"]
    single, parts, logs = tmp_path / "single", tmp_path / "parts", tmp_path / "logs"
    subprocess.run([sys.executable, "-m", "wikiart.cli.build_shards", "--out", str(single), "--workers", "0",
                    "--no-progress", *args], cwd=ROOT, check=True, capture_output=True, timeout=120)

    out = slurm.run(str(ROOT / "slurm" / "submit_build_shards.sh"), "2", "--", "--out", str(parts), *args,
                    env=slurm.env(WIKIART_LOG_DIR=str(logs)))
    array_id, merge_id = out.split()
    merge_log = logs / f"wikiart-shards-merge-{merge_id}.out"
    merged = slurm.wait_for_state(merge_id, ENDED, merge_log, timeout=180)
    assert merged["JobState"] == "COMPLETED", tail(merge_log)
    for task in (0, 1):
        log = logs / f"wikiart-shards-{array_id}_{task}.out"
        assert f"building part {task}: python -m wikiart.cli.build_shards --num-parts 2 --part {task}" in log.read_text()
    assert "verify " in merge_log.read_text() and ": OK" in merge_log.read_text()

    def shard_hashes(directory: Path) -> dict[str, str]:
        manifest = json.loads((directory / "manifest.json").read_text())
        return {s["name"]: s["sha256"] for split in manifest["splits"].values() for s in split["shards"]}

    assert shard_hashes(parts) == shard_hashes(single) and len(shard_hashes(single)) == 6
    assert json.loads((parts / "manifest.json").read_text()) == json.loads((single / "manifest.json").read_text())
    for tar in sorted(single.glob("*.tar")):
        assert (parts / tar.name).read_bytes() == tar.read_bytes(), tar.name


# ----------------------------------------------------------------------------------------------
# Training on two nodes
# ----------------------------------------------------------------------------------------------
@dataclass
class Run:
    job_id: str
    out: Path
    log: Path


def submit_training(slurm: Slurm, shards: Path, out: Path, *extra: str, nodes: int = RANKS,
                    env: dict[str, str] | None = None) -> Run:
    log = out.parent / f"{out.name}.log"
    job_id = slurm.sbatch(f"--nodes={nodes}", f"--output={log}", "--job-name=wikiart-test",
                          str(ROOT / "slurm" / "train.sbatch"),
                          "--shards", str(shards), "--out", str(out), *RUN, *extra, env=env)
    return Run(job_id, out, log)


@pytest.fixture(scope="module")
def two_node_run(slurm: Slurm, synthetic_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """One uninterrupted 2-node x 1-rank run. It goes through tests/support/ddp_weights_probe.py
    (setup_job and fit, as train.py) so that each rank also saves the weights it ended with."""
    out = tmp_path_factory.mktemp("two_node") / "run"
    run = submit_training(slurm, synthetic_shards, out,
                          env=slurm.env(WIKIART_TRAIN_SCRIPT="tests/support/ddp_weights_probe.py"))
    job = slurm.wait_for_state(run.job_id, ENDED, run.log, timeout=240)
    assert job["JobState"] == "COMPLETED", tail(run.log)
    return run


def test_two_node_training_forms_one_group_and_ends_with_identical_weights(
        slurm: Slurm, two_node_run: Run, synthetic_shards: Path) -> None:
    run = two_node_run
    job = slurm.job(run.job_id)
    assert job["ExitCode"] == "0:0" and job["Restarts"] == "0" and job["NodeList"] == "n[1-2]"
    log = run.log.read_text()
    assert "2 node(s) x 1 rank(s) = 2" in log and "accelerate_configs/cpu_ddp.yaml" in log
    assert "world size 2" in log and "training finished" in log
    state = ckpt.load_checkpoint(ckpt.latest_checkpoint(run.out))[0]
    assert state.finished and state.step == n_train(synthetic_shards) // (RANKS * BATCH)
    assert (run.out / "best" / "model.safetensors").is_file()
    # Rank 0 ran on n1 and rank 1 on n2, synchronised over gloo: the same weights at the end,
    # and the same as the checkpoint rank 0 wrote.
    rank0 = torch.load(run.out / "rank0_weights.pt", weights_only=True)["final"]
    rank1 = torch.load(run.out / "rank1_weights.pt", weights_only=True)["final"]
    saved = load_file(str(ckpt.latest_checkpoint(run.out) / "model.safetensors"))
    assert rank0.keys() == rank1.keys() == saved.keys()
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
        assert torch.equal(rank0[name], saved[name]), name


def test_preempted_job_saves_requeues_resumes_and_matches_the_uninterrupted_run(
        slurm: Slurm, two_node_run: Run, synthetic_shards: Path, tmp_path: Path) -> None:
    """The warning signal (USR1 to the batch shell, as --signal=B:USR1@N sends before the time
    limit), then SIGTERM to the job steps (what preemption sends at the start of its grace time):
    each time all ranks stop at the same step, save, and the job requeues itself and resumes.
    The reference is the uninterrupted run above: same nodes, world size, flags and seed."""
    run = submit_training(slurm, synthetic_shards, tmp_path / "run")
    total = n_train(synthetic_shards) // (RANKS * BATCH)

    def restarts() -> int:
        """How often the job was requeued; fails at once if it ended (it must not end yet)."""
        job = slurm.job(run.job_id)
        if job["JobState"] in ENDED:
            raise AssertionError(f"job ended early ({job['JobState']}):\n{tail(run.log)}")
        return int(job["Restarts"])

    def signal_after(step: int, how: list[str], start: int) -> int:
        """Once start `start` of the job has trained `step`, signal it; wait for the requeue and
        return the step it stopped at."""
        wait_until(lambda: restarts() == start and max(train_steps(run.out), default=0) >= step,
                   180, f"step {step} in start {start}", lambda: tail(run.log))
        slurm.run("scancel", *how, run.job_id)
        wait_until(lambda: restarts() == start + 1, 180,
                   f"the job to requeue itself after scancel {' '.join(how)}", lambda: tail(run.log))
        return max(train_steps(run.out))

    first = signal_after(2, ["--signal=USR1", "--batch"], start=0)
    second = signal_after(first + 2, ["--signal=TERM"], start=1)
    job = slurm.wait_for_state(run.job_id, ENDED, run.log, timeout=240)
    log = run.log.read_text()
    assert job["JobState"] == "COMPLETED" and job["Restarts"] == "2", log[-6000:]
    assert 2 <= first < second < total

    assert "got SIGUSR1" in log
    assert f"stopped at step {first} (stop file" in log and f"stopped at step {second} (SIGTERM)" in log
    assert log.count("requeueing job") == 2 and "restart 1 on" in log and "restart 2 on" in log
    assert f"at step {first} (epoch" in log and f"at step {second} (epoch" in log      # "resuming from ..."
    assert "training finished" in log
    # Every step trained exactly once across the three starts.
    assert train_steps(run.out) == list(range(1, total + 1))
    state = ckpt.load_checkpoint(ckpt.latest_checkpoint(run.out))[0]
    assert state.finished and state.step == total
    resumed = load_file(str(ckpt.latest_checkpoint(run.out) / "model.safetensors"))
    straight = load_file(str(ckpt.latest_checkpoint(two_node_run.out) / "model.safetensors"))
    assert resumed.keys() == straight.keys()
    for name in straight:
        assert torch.equal(resumed[name], straight[name]), name


@pytest.mark.parametrize("extra, needle", [
    (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),          # refused before srun
    (["--shards", "/nonexistent/shards"], "shards directory not found"),     # every rank fails
], ids=["bad-flag", "missing-shards"])
def test_failing_training_fails_the_job_without_requeue(
        slurm: Slurm, synthetic_shards: Path, tmp_path: Path, extra: list[str], needle: str) -> None:
    run = submit_training(slurm, synthetic_shards, tmp_path / "run", *extra)
    job = slurm.wait_for_state(run.job_id, ENDED, run.log, timeout=180)
    log = run.log.read_text()
    assert job["JobState"] == "FAILED" and job["ExitCode"] != "0:0", log
    assert needle in log and "requeueing" not in log
    # Still failed, not back in the queue, a few scheduling passes later.
    time.sleep(5)
    job = slurm.job(run.job_id)
    assert job["JobState"] == "FAILED" and job["Restarts"] == "0"


def test_evaluate_sbatch_scores_every_sample_once_on_two_nodes(
        slurm: Slurm, two_node_run: Run, synthetic_shards: Path, tmp_path: Path) -> None:
    if not (ROOT / "evaluate.py").is_file():
        pytest.skip("evaluate.py is not there yet")
    out, log = tmp_path / "eval", tmp_path / "eval.log"
    job_id = slurm.sbatch("--nodes=2", f"--output={log}", str(ROOT / "slurm" / "evaluate.sbatch"),
                          "--checkpoint", str(two_node_run.out), "--shards", str(synthetic_shards),
                          "--out", str(out), "--workers", "1", "--batch-size", "16")
    job = slurm.wait_for_state(job_id, ENDED, log, timeout=240)
    assert job["JobState"] == "COMPLETED", tail(log)
    metrics = json.loads((out / "metrics.json").read_text())
    manifest = json.loads((synthetic_shards / "manifest.json").read_text())
    n_val = sum(s["num_samples"] for s in manifest["splits"]["val"]["shards"])
    assert metrics["world_size"] == 2 and metrics["num_samples"] == n_val
    assert metrics["tasks"]["genre"]["scored"] + metrics["tasks"]["genre"]["missing"] == n_val
