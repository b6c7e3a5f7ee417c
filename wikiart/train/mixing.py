"""MixUp / CutMix per batch with label mixing for every head, driven only by a passed generator.

Each row i is mixed with row partner[i]: by default (`--mix-partner perm`, the seed's) a random
permutation of the batch (`x[torch.randperm(B)]`), drawn from the passed generator; with `flip`
(ours, as in timm) the batch reversed, sample i with sample B-1-i. The training loop seeds the
generator per optimizer step, the same on every rank, so every rank mixes alike and a resumed run
mixes exactly as the uninterrupted one would; nothing here touches the global RNG.
"""

from __future__ import annotations

import math
import random
from typing import Any, Mapping

import torch

from .losses import Target, hard_targets

PARTNERS = ("perm", "flip")


def _uniform(generator: torch.Generator) -> float:
    return float(torch.rand((), generator=generator, device=generator.device))


def _beta(alpha: float, generator: torch.Generator) -> float:
    # torch's Beta sampler takes no generator: seed a private Python RNG from the passed one.
    seed = int(torch.randint(0, 2**62, (), generator=generator, device=generator.device))
    return random.Random(seed).betavariate(alpha, alpha)


def cutmix_box(height: int, width: int, lam: float, generator: torch.Generator) -> tuple[int, int, int, int]:
    """A box (y1, y2, x1, x2) of area about (1 - lam) * H * W, centred uniformly, clipped to the image.

    The seed's `rand_bbox` computes the x range from W and the y range from H but then pastes
    `x[:, :, x1:x2, y1:y2]`, the x range on the height axis: on its square crops that only
    transposes the box, which has the same distribution as this one: cut sizes from sqrt(1 - lam),
    centre uniform over the pixels, the box centre -/+ cut // 2 (so 1 px short of cut when cut is
    odd, as the seed's), clipped, and lam recomputed from the clipped area by the caller.
    """
    cut = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * cut), int(width * cut)
    cy = min(int(_uniform(generator) * height), height - 1)
    cx = min(int(_uniform(generator) * width), width - 1)
    y1, y2 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    x1, x2 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    return y1, y2, x1, x2


def partner_index(batch: int, partner: str, generator: torch.Generator) -> torch.Tensor:
    """Row i's partner row, (B,) int64 on the generator's device: a permutation drawn from
    `generator` ("perm", the seed's randperm) or B-1 .. 0 ("flip", nothing drawn)."""
    if partner == "perm":
        return torch.randperm(batch, generator=generator, device=generator.device)
    return torch.arange(batch - 1, -1, -1, device=generator.device)


def mix_targets(labels: Mapping[str, torch.Tensor], num_classes: Mapping[str, int],
                lam: float, partner: torch.Tensor | None = None) -> dict[str, Target]:
    """soft = lam * onehot(a) + (1 - lam) * onehot(b), b = labels[partner] (None: the flipped
    batch); valid only if both are labelled (a missing label, -1, drops the task's target).

    A partner with weight exactly 0 does not need a label (CutMix can clip its box away).
    """
    own = hard_targets(labels, num_classes)
    other = hard_targets({t: y.flip(0) if partner is None else y[partner.to(y.device)]
                          for t, y in labels.items()}, num_classes)
    out = {}
    for task in labels:
        (soft_a, mask_a), (soft_b, mask_b) = own[task], other[task]
        mask = (mask_a | (lam == 0.0)) & (mask_b | (lam == 1.0))
        soft = (lam * soft_a + (1.0 - lam) * soft_b) * mask.unsqueeze(1)
        out[task] = (soft, mask)
    return out


class Mixer:
    """Per batch: MixUp with prob mixup_p, else CutMix with prob cutmix_p, else nothing; each
    row mixed with its partner row ("perm": a random permutation, "flip": the reversed batch)."""

    def __init__(self, mixup_p: float = 0.35, mixup_alpha: float = 0.3, cutmix_p: float = 0.35,
                 cutmix_alpha: float = 1.0, *, num_classes: Mapping[str, int], partner: str = "perm"):
        if partner not in PARTNERS:
            raise ValueError(f"--mix-partner {partner!r} is not one of {', '.join(PARTNERS)}")
        if min(mixup_p, cutmix_p) < 0 or mixup_p + cutmix_p > 1.0 + 1e-9:
            raise ValueError(f"--mixup-p {mixup_p} and --cutmix-p {cutmix_p} must be >= 0 and sum to <= 1 "
                             f"(a batch is mixed one way or the other)")
        if mixup_alpha <= 0 or cutmix_alpha <= 0:
            raise ValueError(f"--mixup-alpha {mixup_alpha} and --cutmix-alpha {cutmix_alpha} must be > 0")
        self.mixup_p, self.mixup_alpha = mixup_p, mixup_alpha
        self.cutmix_p, self.cutmix_alpha = cutmix_p, cutmix_alpha
        self.num_classes, self.partner = dict(num_classes), partner

    def __call__(self, images: torch.Tensor, labels: Mapping[str, torch.Tensor],
                 generator: torch.Generator) -> tuple[torch.Tensor, dict[str, Target], dict[str, Any]]:
        """-> (images, {task: (soft, mask)}, info {"mode": "none"|"mixup"|"cutmix", "lam", "box",
        "partner": row i's partner row as a tuple, None when unmixed}).

        Draw order, as the seed's: mode, lam, the permutation ("perm" only), then the CutMix box."""
        u = _uniform(generator)
        if u < self.mixup_p:
            lam = _beta(self.mixup_alpha, generator)
            index = partner_index(images.shape[0], self.partner, generator)
            # "flip" keeps flip(0): the same values as a gather, and today's code path
            other = images.flip(0) if self.partner == "flip" else images[index.to(images.device)]
            mixed = images * lam + other * (1.0 - lam)
            info = {"mode": "mixup", "lam": lam, "box": None, "partner": tuple(index.tolist())}
            return mixed, mix_targets(labels, self.num_classes, lam, index), info
        if u < self.mixup_p + self.cutmix_p:
            return self._cutmix(images, labels, generator)
        info = {"mode": "none", "lam": 1.0, "box": None, "partner": None}
        return images, hard_targets(labels, self.num_classes), info

    def _cutmix(self, images: torch.Tensor, labels: Mapping[str, torch.Tensor],
                generator: torch.Generator) -> tuple[torch.Tensor, dict[str, Target], dict[str, Any]]:
        height, width = images.shape[-2:]
        lam = _beta(self.cutmix_alpha, generator)
        index = partner_index(images.shape[0], self.partner, generator)
        y1, y2, x1, x2 = cutmix_box(height, width, lam, generator)
        mixed = images.clone()
        if self.partner == "flip":
            mixed[..., y1:y2, x1:x2] = images.flip(0)[..., y1:y2, x1:x2]
        else:
            mixed[..., y1:y2, x1:x2] = images[index.to(images.device), :, y1:y2, x1:x2]
        # the label weight is the pixel share each image really has after clipping (as the seed's)
        lam = 1.0 - (y2 - y1) * (x2 - x1) / (height * width)
        info = {"mode": "cutmix", "lam": lam, "box": (y1, y2, x1, x2), "partner": tuple(index.tolist())}
        return mixed, mix_targets(labels, self.num_classes, lam, index), info
