"""Running training the way a user does (train.py, or `accelerate launch` for several CPU ranks)
and reading what a run wrote. TINY is the one tiny model every training test uses: a random
resnet18 at 32 px, 16-wide projection and GRU, batch 8 per rank."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from tests.support.forked import COMMANDS, ForkedRun, import_time_env
from wikiart.formats import checkpoint as ckpt

ROOT = Path(__file__).resolve().parents[2]  # the repository: train.py, evaluate.py, accelerate_configs/
SUPPORT = Path(__file__).resolve().parent   # the probes launched in place of train.py live here
ACCELERATE_CONFIGS = ROOT / "accelerate_configs"
CPU_DDP = ACCELERATE_CONFIGS / "cpu_ddp.yaml"
TINY = ["--backbone", "resnet18", "--image-size", "32", "--batch-size", "8", "--proj-dim", "16",
        "--rnn-hidden", "16", "--rnn-layers", "1", "--shuffle-buffer", "50", "--no-progress",
        "--balance", "none", "--no-pretrained", "--batch-scaling", "per-rank"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_command(script: Path, ranks: int = 1, port: int | None = None) -> list[str]:
    """`python SCRIPT`, or `accelerate launch` of SCRIPT on `ranks` CPU processes (gloo)."""
    if ranks == 1:
        return [sys.executable, str(script)]
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CPU_DDP),
            "--num_processes", str(ranks), "--main_process_port", str(port or free_port()), str(script)]


def run_train(args: list[str], *, ranks: int = 1, check: bool = True, timeout: int = 600,
              env: dict[str, str] | None = None, script: Path = ROOT / "train.py",
              interpreter: bool = False) -> subprocess.CompletedProcess:
    """train.py (or a probe standing in for it) as a real process; raises with its output unless
    it succeeded or `check` is off. One rank of train.py is forked from the pre-imported server
    (tests/support/forked.py), unless `interpreter` asks for a new `python train.py` or `env` sets
    a variable read at import time (WIKIART_FAULT: the fault points are parsed on import)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    if ranks == 1 and script.parent == ROOT and script.name in COMMANDS and not interpreter \
            and not import_time_env(env):
        proc = ForkedRun(script.name, args, env, ROOT).completed(timeout)
    else:
        proc = subprocess.run([*launch_command(script, ranks), *args], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"train failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def run_evaluate(args: list[str], *, check: bool = True, timeout: int = 600,
                 env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """evaluate.py as a real process, as run_train runs one rank of train.py."""
    return run_train(args, check=check, timeout=timeout, env=env, script=ROOT / "evaluate.py")


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(ckpt.latest_checkpoint(run_dir) / "model.safetensors"))


def metrics_rows(run_dir: Path, kind: str) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == kind]


def all_finite(tensors: dict[str, torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in tensors.values() if v.is_floating_point())


# ----------------------------------------------------------------------------------------------
# fp16 with a NaN batch: on the CPU through support/fp16_cpu_probe.py (tests/faults), with
# Accelerate's own scaler on a GPU (tests/gpu)
# ----------------------------------------------------------------------------------------------
def train_fp16_with_a_nan_batch(shards: Path, out: Path, steps: int, nan_step: int, script: Path = ROOT / "train.py",
                                env: dict | None = None) -> subprocess.CompletedProcess:
    """An fp16 run (EMA on, validation mid-run) whose `nan_step`-th batch holds a NaN image."""
    return run_train(["--shards", str(shards), "--out", str(out), "--task", "genre", "--max-steps", str(steps),
                      "--log-every", "1", "--eval-every", str(nan_step), "--ema-decay", "0.5", "--workers", "0",
                      "--mixed-precision", "fp16", *TINY],
                     env={"WIKIART_FAULT": f"train.batch@{nan_step}:nan", **(env or {})}, script=script)


def check_the_scaler_skipped_the_nan_step(proc: subprocess.CompletedProcess, out: Path, steps: int,
                                          nan_step: int) -> None:
    """Training went on; the NaN step (and any fp16 overflow step) changed nothing."""
    assert f"fp16 loss scaler skipped optimizer step(s) {nan_step}:" in proc.stdout, proc.stdout[-3000:]
    rows = {r["step"]: r for r in metrics_rows(out, "train")}
    assert sorted(rows) == list(range(1, steps + 1))
    assert rows[nan_step]["skipped_steps"] == [nan_step] and rows[nan_step]["loss"] == "nan"
    skipped = sum(len(r["skipped_steps"]) for r in rows.values())
    state, model, optimizer, extra = ckpt.load_checkpoint(ckpt.latest_checkpoint(out))
    assert state.step == steps
    # AdamW counted only the other steps, the scale backed off once per skip, the EMA took no
    # update, and the BatchNorm statistics the NaN forward pass had spoiled were put back.
    assert {int(s["step"]) for s in optimizer["state"].values()} == {steps - skipped}
    assert extra["scaler"]["scale"] == 65536.0 * 0.5 ** skipped
    assert extra["ema"]["num_updates"] == steps - skipped
    assert all_finite(model) and all_finite(extra["ema"]["shadow"])
    assert all_finite(load_file(str(out / "best" / "model.safetensors")))
    val = metrics_rows(out, "val")
    assert val and all(isinstance(r["genre/top1"], float) for r in val)
    assert all(isinstance(r["loss"], float) for r in val)  # a spoilt BatchNorm gives "nan"
