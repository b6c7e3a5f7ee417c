"""`predict`: the top-k classes with probabilities for every head of image files, with a trained
checkpoint (the command: wikiart.cli.predict, `wikiart-predict`).

Images go through the eval transform with the image size stored in the model's config (and its
mean/std and resize filter). An unreadable file is returned as a failure by name; the others are still classified.

With `--explain DIR` (ours) every classified image also gets DIR/<its name>.png: the crop the model
saw, its attention map and each head's Grad-CAM overlaid (wikiart.model.explain), written
atomically; the directory is checked before the model is loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..config.options import ConfigError, DataConfig, PredictConfig
from ..formats import files
from ..data.device import Normalizer, eval_images
from ..model.load import LoadedModel, load_model
from ..formats.images import ImageDecodeError, decode_rgb
from ..data.transforms import EvalTransform, build_eval_transform
from ..model.explain import Explanation, explain
from .explain_plot import render_explanation


def resolve_device(name: str) -> torch.device:
    """--device: auto picks CUDA when there is a GPU; an unusable choice is a ValueError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"--device {name}: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    return device


def load_images(paths: Sequence[str], transform: EvalTransform) -> tuple[list[tuple[str, torch.Tensor]],
                                                                          list[dict[str, str]]]:
    """(path, tensor) of every readable image, and {"image", "error"} for the others."""
    good, bad = [], []
    for path in paths:
        try:
            if Path(path).is_dir():
                raise ImageDecodeError("is a directory")
            image = decode_rgb(path, min_side=transform.decode_size)
            good.append((path, transform(np.asarray(image))))
        except (ImageDecodeError, OSError) as exc:
            bad.append({"image": path, "error": str(exc)})
    return good, bad


def ranked(logits: dict[str, torch.Tensor], class_names: dict[str, list[str]],
           k: int) -> list[dict[str, list[dict[str, Any]]]]:
    """Per image: {task: [{"class", "probability"}, ...]} best first, k capped by the class count."""
    out: list[dict[str, list[dict[str, Any]]]] = [{} for _ in range(len(next(iter(logits.values()))))]
    for task, task_logits in logits.items():
        probs = task_logits.float().softmax(dim=1).cpu()
        values, indices = probs.topk(min(k, probs.shape[1]), dim=1)
        for i in range(len(out)):
            out[i][task] = [{"class": class_names[task][j], "probability": float(p)}
                            for p, j in zip(values[i].tolist(), indices[i].tolist())]
    return out


@torch.no_grad()
def top_k(loaded: LoadedModel, images: torch.Tensor, k: int) -> list[dict[str, list[dict[str, Any]]]]:
    """Per image: {task: [{"class", "probability"}, ...]} best first, k capped by the class count."""
    model = loaded.model
    device = next(model.parameters()).device
    return ranked(model(eval_images(images, device, Normalizer(model.mean, model.std))), model.class_names_dict(), k)


def explain_names(paths: Sequence[str]) -> list[str]:
    """One PNG name per image: its file name's stem, numbered where two images share one."""
    seen: dict[str, int] = {}
    names = []
    for path in paths:
        stem = Path(path).stem or "image"
        seen[stem] = seen.get(stem, 0) + 1
        names.append(f"{stem}.png" if seen[stem] == 1 else f"{stem}-{seen[stem]}.png")
    return names


def check_explain_dir(directory: str | None) -> None:
    """--explain DIR must be a directory we can write, or creatable: checked before any work."""
    problem = files.writable_directory_problem(Path(directory)) if directory else None
    if problem:
        raise ConfigError(f"--explain {directory}: {problem}")


def explained_top_k(loaded: LoadedModel, images: torch.Tensor, k: int) -> tuple[list[dict], Explanation]:
    """top_k's rankings and the maps of the same forward pass (wikiart.model.explain)."""
    model = loaded.model
    device = next(model.parameters()).device
    expl = explain(model, eval_images(images, device, Normalizer(model.mean, model.std)))
    return ranked(expl.logits, model.class_names_dict(), k), expl


def predict(cfg: PredictConfig) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """(predictions, failures) for the images of `cfg` (with cfg.explain, each prediction names its PNG)."""
    check_explain_dir(cfg.explain)
    loaded = load_model(cfg.checkpoint)
    loaded.model.to(resolve_device(cfg.device))
    transform = build_eval_transform(DataConfig(image_size=loaded.model.image_size, eval_resize=loaded.eval_resize,
                                                interpolation=loaded.model.interpolation))
    good, bad = load_images(cfg.images, transform)
    names = explain_names([path for path, _ in good])
    if cfg.explain:
        Path(cfg.explain).mkdir(parents=True, exist_ok=True)
    results = []
    for start in range(0, len(good), cfg.batch_size):
        chunk = good[start:start + cfg.batch_size]
        batch = torch.stack([t for _, t in chunk]).permute(0, 3, 1, 2)
        if not cfg.explain:
            preds = top_k(loaded, batch, cfg.top_k)
            results += [{"image": path, "predictions": p} for (path, _), p in zip(chunk, preds)]
            continue
        preds, expl = explained_top_k(loaded, batch, cfg.top_k)
        for i, ((path, crop), p) in enumerate(zip(chunk, preds)):
            target = Path(cfg.explain) / names[start + i]
            files.write_bytes(target, render_explanation(crop.numpy(), expl, i, loaded.model.class_names_dict(),
                                                         title=Path(path).name))
            results.append({"image": path, "predictions": p, "explain": str(target)})
    return results, bad
