"""A training run's directory (`train.py --out`): every name in it, owned here.

    runs/<name>/
        config.json      the resolved training config, written at start (what a resume checks)
        metrics.jsonl    one JSON row per event: train, val, epoch, hub
        best/            the best model so far in save_pretrained form (+ metrics.json, README.md);
                         its config.json records which weights it holds (`record_weights_kind`)
        best.tmp/        best/ being written, renamed over best/ once complete
        checkpoints/     training checkpoints: step-XXXXXXXX/, each complete with its COMPLETE
                         marker (the layout inside is `wikiart.formats.checkpoint`'s)
        STOP             created to ask the run to save its state and exit (SLURM's batch script)
        STOPPED          written by a run that stopped so (JSON: step, reason)
        .hub_staging/    snapshots (best/ + training_state/) waiting for a Hub push

`slurm/train.sbatch` names STOP and STOPPED too. No torch here: anything may ask a run
directory what it holds.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .files import write_json

CONFIG = "config.json"
METRICS = "metrics.jsonl"
BEST = "best"
BEST_TMP = "best.tmp"
CHECKPOINT_DIR = "checkpoints"
COMPLETE_MARKER = "COMPLETE"  # in a checkpoint directory: written last, so it vouches for the rest
STOP_FILE = "STOP"
STOPPED_MARKER = "STOPPED"
HUB_STAGING = ".hub_staging"
HUB_STATE = "training_state"  # in a staged snapshot and the Hub repo: the training checkpoint
# What --overwrite removes: the files of the previous run that a new one would be mixed with.
# Everything else in --out (the user's notes, a --stop-file there) stays.
OVERWRITTEN = (CHECKPOINT_DIR, BEST, METRICS, CONFIG)

MODEL_CONFIG = "config.json"  # save_pretrained's, in best/ and any saved model directory
WEIGHTS_KEY = "weights"       # in MODEL_CONFIG: "ema" when training saved the EMA average
WEIGHTS_KINDS = ("model", "ema")


class RunDir:
    """The paths of one run directory; creating one touches nothing on disk."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @property
    def config(self) -> Path:
        return self.path / CONFIG

    @property
    def metrics(self) -> Path:
        return self.path / METRICS

    @property
    def best(self) -> Path:
        return self.path / BEST

    @property
    def best_tmp(self) -> Path:
        return self.path / BEST_TMP

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINT_DIR

    @property
    def stop_file(self) -> Path:
        return self.path / STOP_FILE

    @property
    def stopped(self) -> Path:
        return self.path / STOPPED_MARKER

    @property
    def hub_staging(self) -> Path:
        return self.path / HUB_STAGING

    @property
    def hub_download(self) -> Path:
        """Where `--resume hub` downloads before adopting what it fetched."""
        return self.path / f"{HUB_STAGING}-download"

    def holds_run(self) -> bool:
        """A run was started here (its config was saved, or it left checkpoints)."""
        return self.config.exists() or self.checkpoints.exists()

    def overwritten(self) -> list[Path]:
        """The paths `--overwrite` removes (OVERWRITTEN)."""
        return [self.path / name for name in OVERWRITTEN]

    def remove_previous_run(self) -> None:
        """--overwrite: remove exactly `overwritten()`, leave every other file in place."""
        for target in self.overwritten():
            if target.is_dir():
                shutil.rmtree(target, ignore_errors=True)
            else:
                target.unlink(missing_ok=True)


def record_weights_kind(model_dir: str | Path, kind: str) -> None:
    """Note in model_dir/config.json which weights save_pretrained wrote ("model" or "ema"); the
    model ignores the key, evaluation reports it (and refuses --no-ema for EMA weights)."""
    if kind not in WEIGHTS_KINDS:
        raise ValueError(f"weights kind {kind!r}: expected one of {', '.join(WEIGHTS_KINDS)}")
    path = Path(model_dir) / MODEL_CONFIG
    write_json(path, {**json.loads(path.read_text()), WEIGHTS_KEY: kind}, indent=2, ensure_ascii=True)


def read_weights_kind(config_file: str | Path) -> str | None:
    """"model" or "ema" as recorded in a saved model's config.json; None where it is not said."""
    try:
        kind = json.loads(Path(config_file).read_text()).get(WEIGHTS_KEY)
    except (OSError, ValueError, AttributeError):
        return None
    return kind if kind in WEIGHTS_KINDS else None
