"""`predict`: the top-k classes with probabilities for every head of image files, with a trained
checkpoint (the command: wikiart.cli.predict, `wikiart-predict`).

Images go through the eval transform with the image size stored in the model's config (and its
mean/std and resize filter). An unreadable file is returned as a failure by name; the others are still classified.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..config.options import DataConfig, PredictConfig
from ..data.device import Normalizer, eval_images
from ..model.load import LoadedModel, load_model
from ..formats.images import ImageDecodeError, decode_rgb
from ..data.transforms import EvalTransform, build_eval_transform


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


@torch.no_grad()
def top_k(loaded: LoadedModel, images: torch.Tensor, k: int) -> list[dict[str, list[dict[str, Any]]]]:
    """Per image: {task: [{"class", "probability"}, ...]} best first, k capped by the class count."""
    model = loaded.model
    device = next(model.parameters()).device
    logits = model(eval_images(images, device, Normalizer(model.mean, model.std)))
    names = model.class_names_dict()
    out: list[dict[str, list[dict[str, Any]]]] = [{} for _ in range(len(images))]
    for task, task_logits in logits.items():
        probs = task_logits.float().softmax(dim=1).cpu()
        values, indices = probs.topk(min(k, probs.shape[1]), dim=1)
        for i in range(len(images)):
            out[i][task] = [{"class": names[task][j], "probability": float(p)}
                            for p, j in zip(values[i].tolist(), indices[i].tolist())]
    return out


def predict(cfg: PredictConfig) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """(predictions, failures) for the images of `cfg`."""
    loaded = load_model(cfg.checkpoint)
    loaded.model.to(resolve_device(cfg.device))
    transform = build_eval_transform(DataConfig(image_size=loaded.model.image_size, eval_resize=loaded.eval_resize,
                                                interpolation=loaded.model.interpolation))
    good, bad = load_images(cfg.images, transform)
    results = []
    for start in range(0, len(good), cfg.batch_size):
        chunk = good[start:start + cfg.batch_size]
        preds = top_k(loaded, torch.stack([t for _, t in chunk]).permute(0, 3, 1, 2), cfg.top_k)
        results += [{"image": path, "predictions": p} for (path, _), p in zip(chunk, preds)]
    return results, bad
