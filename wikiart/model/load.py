"""Load a model for evaluation or prediction from whatever the user points at.

    --checkpoint best/                       save_pretrained form (config.json + model.safetensors)
    --checkpoint user/wikiart-genre          a Hugging Face Hub repo id (same form, downloaded)
    --checkpoint runs/x/checkpoints/step-N/  a training checkpoint: the model is rebuilt from the
                                             run's config.json two levels up and extra.pt's class names
    --checkpoint runs/x                      a run directory: its best/ (else its newest checkpoint)

Nothing here downloads pretrained backbone weights: every weight comes from the checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import re
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file

from ..formats import checkpoint as ckpt
from ..formats.manifest import Manifest
from ..formats.rundir import MODEL_CONFIG, RunDir, read_weights_kind
from ..config.options import DataConfig, RunConfig, check_eval_resize, with_earlier_defaults
from .classifier import CNNRNNClassifier

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclasses.dataclass
class LoadedModel:
    """A model in eval mode and where it came from."""
    model: CNNRNNClassifier
    kind: str                   # "pretrained", "hub" or "training-state"
    path: str                   # the resolved directory or repo id
    eval_resize: int | None     # the run's --eval-resize when the run's config is known
    step: int | None = None     # optimizer step of a training checkpoint
    weights: str = "model"      # "model" or "ema"

    def describe(self) -> str:
        """What was loaded, in the user's words: "the model in runs/x/best (saved model, EMA weights)"."""
        weights = "EMA weights" if self.weights == "ema" else "raw weights, no EMA"
        if self.kind == "pretrained":
            return f"the model in {self.path} (saved model, {weights})"
        if self.kind == "hub":
            return f"the Hub model {self.path} ({weights})"
        if self.kind == "training-state":
            step = f"optimizer step {self.step}, " if self.step is not None else ""
            return f"the training checkpoint {self.path} ({step}{weights})"
        return f"{self.kind} {self.path} ({weights})"


def load_model(spec: str, *, use_ema: bool = True) -> LoadedModel:
    """Resolve `spec` (see the module docstring); raises CheckpointError naming it."""
    path = Path(spec).expanduser()
    if path.exists():
        return _load_local(path, spec, use_ema)
    if _REPO_ID.match(spec) and not spec.startswith("."):
        return _check_no_ema(_load_hub(spec), use_ema)
    raise ckpt.CheckpointError(f"--checkpoint {spec}: no such file or directory")


def _load_local(path: Path, spec: str, use_ema: bool) -> LoadedModel:
    if not path.is_dir():
        raise ckpt.CheckpointError(f"--checkpoint {spec}: not a directory")
    if (path / ckpt.COMPLETE_MARKER).is_file() and (path / "extra.pt").is_file():
        return _load_training_state(path, use_ema)
    if (path / "model.safetensors").is_file() and (path / MODEL_CONFIG).is_file():
        return _load_pretrained(path, use_ema)
    if (RunDir(path).best / "model.safetensors").is_file():
        return _load_pretrained(RunDir(path).best, use_ema)
    latest = ckpt.latest_checkpoint(path)
    if latest is not None:
        return _load_training_state(latest, use_ema)
    raise ckpt.CheckpointError(f"--checkpoint {spec}: not a checkpoint (expected config.json + "
                               f"model.safetensors, a checkpoints/step-* directory, or a run directory)")


def _from_pretrained(name: str) -> CNNRNNClassifier:
    # The hub mixin prints "Loading weights ..." to stdout, which would corrupt --json output.
    with contextlib.redirect_stdout(io.StringIO()):
        return CNNRNNClassifier.from_pretrained(name)


def _best_weights_kind(path: Path) -> str:
    """A best/ saved before the key existed: EMA weights exactly when its run trained an EMA."""
    kind = read_weights_kind(path / MODEL_CONFIG)
    if kind is None:
        run = _read_run_config(path.parent) or {}
        kind = "ema" if (run.get("optim") or {}).get("ema_decay") else "model"
    return kind


def _check_no_ema(loaded: LoadedModel, use_ema: bool) -> LoadedModel:
    if not use_ema and loaded.weights == "ema":
        raise ckpt.CheckpointError(
            f"--no-ema: {loaded.path} holds the EMA weights (training saved best/ from its EMA); give a "
            f"training checkpoint (checkpoints/step-N) for the raw weights")
    return loaded


def _load_pretrained(path: Path, use_ema: bool = True) -> LoadedModel:
    try:
        model = _from_pretrained(str(path))
    except Exception as exc:  # noqa: BLE001 - config/weight mismatches surface as many types
        raise ckpt.CheckpointError(f"could not load the model in {path}: {exc}") from exc
    loaded = LoadedModel(model.eval(), "pretrained", str(path), model.eval_resize or _run_eval_resize(path.parent),
                         weights=_best_weights_kind(path))
    return _check_no_ema(loaded, use_ema)


def _load_hub(repo_id: str) -> LoadedModel:
    try:
        model = _from_pretrained(repo_id)
    except Exception as exc:  # noqa: BLE001 - offline, 404, auth, bad files: one clear line
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ckpt.CheckpointError(f"--checkpoint {repo_id}: no such local directory, and the "
                                   f"Hugging Face Hub could not provide it ({reason})") from exc
    return LoadedModel(model.eval(), "hub", repo_id, model.eval_resize,  # config.json carries it
                       weights=read_weights_kind(_cached_hub_file(repo_id, MODEL_CONFIG)) or "model")


def _cached_hub_file(repo_id: str, filename: str) -> str:
    """A file from_pretrained has just fetched: read from the local cache, no new download."""
    from huggingface_hub import try_to_load_from_cache
    path = try_to_load_from_cache(repo_id, filename)
    return path if isinstance(path, str) else ""


def _read_run_config(run_dir: Path) -> dict[str, Any] | None:
    path = RunDir(run_dir).config
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and "model" in data and "data" in data else None


def _run_eval_resize(run_dir: Path) -> int | None:
    data = _read_run_config(run_dir)
    return RunConfig.from_dict(data).data.eval_resize if data else None


def _load_training_state(path: Path, use_ema: bool) -> LoadedModel:
    run_dir = path.parent.parent
    data = _read_run_config(run_dir)
    if data is None:
        raise ckpt.CheckpointError(f"training checkpoint {path}: its run's {RunDir(run_dir).config.name} is "
                                   f"missing or unreadable at {RunDir(run_dir).config}")
    cfg = RunConfig.from_dict(with_earlier_defaults(data))  # a run older than some options
    try:
        state = json.loads((path / "state.json").read_text())
        # Only the weights and extra.pt: the optimizer state (2x the model) is not needed here.
        weights = load_file(str(path / "model.safetensors"))
        extra = ckpt.load_state_file(path / "extra.pt")
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
        raise ckpt.CheckpointError(f"could not read checkpoint {path}: {exc}") from exc
    if not extra.get("class_names"):
        raise ckpt.CheckpointError(f"checkpoint {path}: extra.pt has no class names")
    kind = "model"
    if use_ema and "ema" in extra:
        weights, kind = extra["ema"]["shadow"], "ema"
    # The weights come from the checkpoint: never load ImageNet weights on top.
    model_cfg = dataclasses.replace(cfg.model, pretrained=False, pretrained_path=None)
    model = CNNRNNClassifier.from_config(model_cfg, extra["class_names"], cfg.data.image_size,
                                         cfg.data.eval_resize, cfg.data.interpolation)
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        raise ckpt.CheckpointError(f"checkpoint {path} does not fit the model of {RunDir(run_dir).config}: "
                                   f"{str(exc).splitlines()[0]}") from exc
    return LoadedModel(model.eval(), "training-state", str(path), cfg.data.eval_resize,
                       step=int(state.get("step", 0)), weights=kind)


def eval_data_config(loaded: LoadedModel, shards: str, batch_size: int, workers: int,
                     eval_resize: int | None = None) -> DataConfig:
    """The DataConfig of the eval stream: the model's image size, the run's eval resize."""
    heads = loaded.model.tasks
    task = heads[0] if len(heads) == 1 else "combined"
    check_eval_resize(eval_resize, loaded.model.image_size)
    return DataConfig(task=task, shards=shards, image_size=loaded.model.image_size,
                      eval_resize=eval_resize or loaded.eval_resize, batch_size=batch_size,
                      eval_batch_size=batch_size, workers=workers, interpolation=loaded.model.interpolation)


def check_class_names(saved: dict[str, list[str]], manifest: Manifest, where: str,
                      heads: tuple[str, ...] | None = None) -> None:
    """A checkpoint trained on other classes (or, given `heads`, for another task) must never
    be silently reused."""
    if heads is not None and set(saved) != set(heads):
        raise ckpt.CheckpointError(f"{where} has the heads {sorted(saved) or 'none'}, not {list(heads)} of "
                                   f"this --task; resume only a run of the same --task")
    for task, names in saved.items():
        if task not in manifest.classes:
            raise ckpt.CheckpointError(f"{where} has a {task!r} head but the shards have no {task!r} labels")
        if list(names) != manifest.classes[task]:
            raise ckpt.CheckpointError(f"{where}: its {task} classes ({len(names)}) do not match the "
                                       f"shards' manifest ({len(manifest.classes[task])}); "
                                       f"use shards built with the same class list")
