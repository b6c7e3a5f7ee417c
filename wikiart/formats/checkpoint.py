"""Training checkpoints: atomic save, resume from the newest complete one, keep the last K.

Layout under `runs/<name>/`:

    checkpoints/step-00001200/   model.safetensors, optimizer.pt, extra.pt, state.json, COMPLETE
    best/                        save_pretrained form (config.json + model.safetensors)

A checkpoint is written into `step-XXXXXXXX.tmp-<pid>/`, the `COMPLETE` marker is written
last, and only then is the directory renamed into place. A crash at any point leaves either
the previous checkpoints untouched or a `.tmp-*` directory that resume never picks (and the
next save removes). Everything loads without executing code: safetensors for weights,
`torch.load(weights_only=True)` for optimizer and scaler state.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..runtime.errors import UserError
from ..runtime.faults import fault_point
# replace_directory, CHECKPOINT_DIR and COMPLETE_MARKER are also named as checkpoint.* by callers.
from .files import OLD_SUFFIX, fsync_files, replace_directory, write_json  # noqa: F401
from .rundir import CHECKPOINT_DIR, COMPLETE_MARKER, RunDir  # noqa: F401 - re-exported

_STEP_DIR = re.compile(r"^step-(\d{8})$")


class CheckpointError(UserError):
    """A checkpoint could not be written or read; the message names the path."""


@dataclasses.dataclass
class TrainState:
    """Counters that, with the seed, determine everything a resumed run does next."""
    step: int = 0                 # optimizer steps done
    epoch: int = 0                # current epoch
    batch_in_epoch: int = 0       # micro-batches of `epoch` already consumed
    best_metric: float | None = None
    best_step: int | None = None
    freeze_phase: int = 0
    finished: bool = False
    # The layout the counts above are in: ranks, batch size per rank, micro-batches per step, and
    # the loader workers per rank that split the current epoch's data (None: older checkpoints).
    world_size: int | None = None
    batch_size: int | None = None
    grad_accum: int | None = None
    epoch_workers: int | None = None
    # Single-task epochs read only the samples labelled for the task. Checkpoints from before
    # (False) keep the epochs they were counted in: every sample.
    labelled_epochs: bool = False
    # The rows of step `step` (other than Hub pushes) that metrics.jsonl held at the save. A save at
    # an epoch's last step comes before that epoch's validation row: a resume drops the rows logged
    # after it, which it logs again (None: older checkpoints keep every row of their step).
    logged_rows_at_step: int | None = None


def checkpoint_root(run_dir: str | Path) -> Path:
    return RunDir(run_dir).checkpoints


def _recover_swaps(root: Path) -> None:
    """A crash between the two renames of `replace_directory` leaves `step-X.old` (complete)
    without `step-X`: put it back, so a re-save never loses the only copy of a step."""
    for old in root.glob(f"step-*{OLD_SUFFIX}"):
        final = old.with_name(old.name[:-len(OLD_SUFFIX)])
        if final.exists() or not (old / COMPLETE_MARKER).is_file():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(old, final)


def list_complete(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    _recover_swaps(root)
    found = [p for p in root.iterdir()
             if _STEP_DIR.match(p.name) and (p / COMPLETE_MARKER).is_file()]
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    complete = list_complete(run_dir)
    return complete[-1] if complete else None


def _state_dict_for_safetensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses shared or non-contiguous storage; clone makes each tensor its own.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


# What a failed write raises: OSError, or torch.save's / safetensors' wrappers around one.
WRITE_ERRORS = (OSError, RuntimeError, SafetensorError)


def write_failure(what: str, exc: BaseException, intact: str) -> CheckpointError:
    """The one-line error for a write of `what` that failed with `exc` (a WRITE_ERRORS)."""
    reason = getattr(exc, "strerror", None) or " ".join(str(exc).split())
    return CheckpointError(f"could not write {what}: {reason} ({intact})")


def save_checkpoint(run_dir: str | Path, state: TrainState, model_state: dict[str, torch.Tensor],
                    optimizer_state: dict[str, Any], extra: dict[str, Any] | None = None,
                    keep_last: int = 2) -> Path:
    """Write a checkpoint atomically (main process only) and prune old ones."""
    root = checkpoint_root(run_dir)
    final = root / f"step-{state.step:08d}"
    tmp = root / f"{final.name}.tmp-{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        _recover_swaps(root)
        _remove_stale_temporaries(root)
        tmp.mkdir()
        save_file(_state_dict_for_safetensors(model_state), str(tmp / "model.safetensors"))
        fault_point("checkpoint.write")
        torch.save(optimizer_state, tmp / "optimizer.pt")
        torch.save(extra or {}, tmp / "extra.pt")
        write_json(tmp / "state.json", dataclasses.asdict(state), ensure_ascii=True)
        fsync_files(tmp)
        (tmp / COMPLETE_MARKER).write_text("ok\n")
        replace_directory(tmp, final)  # a re-save of the same step keeps the old copy until the swap
    except WRITE_ERRORS as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise write_failure(f"checkpoint {final}", exc, "previous checkpoints are intact") from exc
    prune_checkpoints(run_dir, keep_last)
    return final


def _remove_stale_temporaries(root: Path) -> None:
    for p in root.iterdir():
        if ".tmp-" in p.name:  # left by a crash mid-write
            shutil.rmtree(p, ignore_errors=True)


def prune_checkpoints(run_dir: str | Path, keep_last: int) -> None:
    for old in list_complete(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


def load_state_file(file: Path) -> Any:
    """torch.load(weights_only=True): tensors and plain data only. A pickle that would run code
    is refused with a CheckpointError that names the file and the code it holds - without
    torch's advice to retry with weights_only=False."""
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = f" ({found.group(1)})" if found else ""
        raise CheckpointError(f"{file}: refused to unpickle a file that holds code{what} rather than only "
                              f"tensors and plain data (never loaded unsafely)") from None


def load_checkpoint(path: str | Path) -> tuple[TrainState, dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """Read (state, model_state, optimizer_state, extra); no code is executed while loading."""
    path = Path(path)
    if not (path / COMPLETE_MARKER).is_file():
        raise CheckpointError(f"{path} is not a complete checkpoint (no {COMPLETE_MARKER} marker)")
    try:
        fields = json.loads((path / "state.json").read_text())
        known = {f.name for f in dataclasses.fields(TrainState)}
        state = TrainState(**{k: v for k, v in fields.items() if k in known})
        model_state = load_file(str(path / "model.safetensors"))
        optimizer_state = load_state_file(path / "optimizer.pt")
        extra = load_state_file(path / "extra.pt")
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:  # a file damaged after it was complete
        raise CheckpointError(f"could not read checkpoint {path}: {exc}") from exc
    return state, model_state, optimizer_state, extra


def resolve_resume(resume: str | None, run_dir: str | Path) -> Path | None:
    """`auto` -> newest complete checkpoint in run_dir (None if there is none); else a path."""
    if resume is None:
        return None
    if resume == "auto":
        return latest_checkpoint(run_dir)
    path = Path(resume)
    if path.is_dir() and (path / COMPLETE_MARKER).is_file():
        return path
    if path.is_dir() and latest_checkpoint(path) is not None:
        return latest_checkpoint(path)  # a run directory
    raise CheckpointError(f"--resume {resume}: not a complete checkpoint or a run directory with one")
