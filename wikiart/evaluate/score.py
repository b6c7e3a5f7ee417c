"""Scoring a model on a split: every sample exactly once across ranks and loader workers.

Training's validation and evaluate.py both call `evaluate`; it runs the unwrapped model so ranks
with different batch counts never meet in a collective before the final gather.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Iterable

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object

from ..data.buffers import release_batch
from ..data.device import Normalizer, eval_images


@dataclasses.dataclass
class EvalOutputs:
    """Everything evaluation gathered, deduplicated by key, ordered by key."""
    keys: list[str]
    logits: dict[str, np.ndarray]       # task -> (N, C) float32
    labels: dict[str, np.ndarray]       # task -> (N,), -1 missing
    embeddings: np.ndarray | None = None


@torch.no_grad()
def sync_buffers(accelerator: Accelerator, net: torch.nn.Module) -> None:
    """Give every rank rank 0's BatchNorm statistics.

    DDP broadcasts buffers at the start of each training forward, so after the last step each
    rank holds stats from its own last batch; evaluation and checkpoints must use one set.
    """
    if accelerator.num_processes > 1:
        for buffer in net.buffers():
            torch.distributed.broadcast(buffer, src=0)


@torch.no_grad()
def evaluate(accelerator: Accelerator, model: torch.nn.Module, loader: Iterable[dict[str, Any]],
             heads: Iterable[str], expected: int | None, with_embeddings: bool = False,
             tta_flip: bool = False, channels_last: bool = False) -> EvalOutputs:
    """Score every sample exactly once across ranks; every rank returns the gathered result.

    Runs the unwrapped model so ranks with different batch counts never meet in a collective
    before the final gather.
    """
    net = accelerator.unwrap_model(model)
    normalize = Normalizer(net.mean, net.std)  # the model's own input statistics
    sync_buffers(accelerator, net)
    modes = {m: m.training for m in net.modules()}  # frozen BN layers stay in eval afterwards
    net.eval()
    heads = tuple(heads)
    rows: list[tuple[str, dict[str, np.ndarray], dict[str, int], np.ndarray | None]] = []
    for batch in loader:
        images = eval_images(batch["image"], accelerator.device, normalize, channels_last)
        release_batch(batch)
        with accelerator.autocast():
            feats = net.embed(images)
            logits = net.classify(feats)
            if tta_flip:
                flipped = net.classify(net.embed(torch.flip(images, dims=[3])))
                logits = {t: (logits[t] + flipped[t]) / 2 for t in logits}
        cpu_logits = {t: logits[t].float().cpu().numpy() for t in heads}
        cpu_labels = {t: batch["labels"][t].tolist() for t in heads}  # the loader's CPU copy: no device reads
        cpu_feats = feats.float().cpu().numpy() if with_embeddings else None
        for i, key in enumerate(batch["key"]):
            rows.append((key, {t: cpu_logits[t][i] for t in heads},
                         {t: cpu_labels[t][i] for t in heads},
                         cpu_feats[i] if cpu_feats is not None else None))
    for module, training in modes.items():
        module.training = training
    gathered = gather_object(rows) if accelerator.num_processes > 1 else rows
    return _dedupe(gathered, heads, expected)


def _dedupe(rows: list, heads: tuple[str, ...], expected: int | None) -> EvalOutputs:
    by_key = {row[0]: row for row in rows}
    if expected is not None and len(by_key) > expected:
        raise RuntimeError(f"evaluation scored {len(by_key)} distinct samples but the manifest "
                           f"lists {expected}; the shards and the manifest disagree")
    if expected is not None and len(by_key) < expected:  # corrupt samples, skipped and counted
        warnings.warn(f"evaluation scored {len(by_key)} of the {expected} samples the manifest lists "
                      f"({expected - len(by_key)} unreadable); run wikiart-build-shards --verify")
    keys = sorted(by_key)
    logits = {t: np.stack([by_key[k][1][t] for k in keys]) if keys else np.zeros((0, 0), np.float32)
              for t in heads}
    labels = {t: np.array([by_key[k][2][t] for k in keys], dtype=np.int64) for t in heads}
    embeddings = None
    if keys and by_key[keys[0]][3] is not None:
        embeddings = np.stack([by_key[k][3] for k in keys])
    return EvalOutputs(keys=keys, logits=logits, labels=labels, embeddings=embeddings)

