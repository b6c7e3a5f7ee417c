"""MixUp / CutMix per batch with label mixing for every head, driven only by a passed generator.

Each sample is paired with the batch flipped (sample i with sample B-1-i), as in timm. The
training loop seeds the generator per optimizer step, so a resumed run mixes exactly as the
uninterrupted one would; nothing here touches the global RNG.
"""

from __future__ import annotations

import math
import random
from typing import Any, Mapping

import torch

from .losses import Target, hard_targets


def _uniform(generator: torch.Generator) -> float:
    return float(torch.rand((), generator=generator, device=generator.device))


def _beta(alpha: float, generator: torch.Generator) -> float:
    # torch's Beta sampler takes no generator: seed a private Python RNG from the passed one.
    seed = int(torch.randint(0, 2**62, (), generator=generator, device=generator.device))
    return random.Random(seed).betavariate(alpha, alpha)


def cutmix_box(height: int, width: int, lam: float, generator: torch.Generator) -> tuple[int, int, int, int]:
    """A box (y1, y2, x1, x2) of area about (1 - lam) * H * W, centred uniformly, clipped to the image."""
    cut = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * cut), int(width * cut)
    cy = min(int(_uniform(generator) * height), height - 1)
    cx = min(int(_uniform(generator) * width), width - 1)
    y1, y2 = max(cy - cut_h // 2, 0), min(cy + cut_h - cut_h // 2, height)
    x1, x2 = max(cx - cut_w // 2, 0), min(cx + cut_w - cut_w // 2, width)
    return y1, y2, x1, x2


def mix_targets(labels: Mapping[str, torch.Tensor], num_classes: Mapping[str, int],
                lam: float) -> dict[str, Target]:
    """soft = lam * onehot(a) + (1 - lam) * onehot(b), b = the flipped batch; valid if both are labelled.

    A partner with weight exactly 0 does not need a label (CutMix can clip its box away).
    """
    own = hard_targets(labels, num_classes)
    other = hard_targets({t: y.flip(0) for t, y in labels.items()}, num_classes)
    out = {}
    for task in labels:
        (soft_a, mask_a), (soft_b, mask_b) = own[task], other[task]
        mask = (mask_a | (lam == 0.0)) & (mask_b | (lam == 1.0))
        soft = (lam * soft_a + (1.0 - lam) * soft_b) * mask.unsqueeze(1)
        out[task] = (soft, mask)
    return out


class Mixer:
    """Per batch: MixUp with prob mixup_p, else CutMix with prob cutmix_p, else nothing."""

    def __init__(self, mixup_p: float = 0.35, mixup_alpha: float = 0.3, cutmix_p: float = 0.35,
                 cutmix_alpha: float = 1.0, *, num_classes: Mapping[str, int]):
        if min(mixup_p, cutmix_p) < 0 or mixup_p + cutmix_p > 1.0 + 1e-9:
            raise ValueError(f"--mixup-p {mixup_p} and --cutmix-p {cutmix_p} must be >= 0 and sum to <= 1 "
                             f"(a batch is mixed one way or the other)")
        if mixup_alpha <= 0 or cutmix_alpha <= 0:
            raise ValueError(f"--mixup-alpha {mixup_alpha} and --cutmix-alpha {cutmix_alpha} must be > 0")
        self.mixup_p, self.mixup_alpha = mixup_p, mixup_alpha
        self.cutmix_p, self.cutmix_alpha = cutmix_p, cutmix_alpha
        self.num_classes = dict(num_classes)

    def __call__(self, images: torch.Tensor, labels: Mapping[str, torch.Tensor],
                 generator: torch.Generator) -> tuple[torch.Tensor, dict[str, Target], dict[str, Any]]:
        """-> (images, {task: (soft, mask)}, info {"mode": "none"|"mixup"|"cutmix", "lam", "box"})."""
        u = _uniform(generator)
        if u < self.mixup_p:
            lam = _beta(self.mixup_alpha, generator)
            mixed = images * lam + images.flip(0) * (1.0 - lam)
            return mixed, mix_targets(labels, self.num_classes, lam), {"mode": "mixup", "lam": lam, "box": None}
        if u < self.mixup_p + self.cutmix_p:
            return self._cutmix(images, labels, generator)
        return images, hard_targets(labels, self.num_classes), {"mode": "none", "lam": 1.0, "box": None}

    def _cutmix(self, images: torch.Tensor, labels: Mapping[str, torch.Tensor],
                generator: torch.Generator) -> tuple[torch.Tensor, dict[str, Target], dict[str, Any]]:
        height, width = images.shape[-2:]
        y1, y2, x1, x2 = cutmix_box(height, width, _beta(self.cutmix_alpha, generator), generator)
        mixed = images.clone()
        mixed[..., y1:y2, x1:x2] = images.flip(0)[..., y1:y2, x1:x2]
        # the label weight is the pixel share each image really has after clipping
        lam = 1.0 - (y2 - y1) * (x2 - x1) / (height * width)
        info = {"mode": "cutmix", "lam": lam, "box": (y1, y2, x1, x2)}
        return mixed, mix_targets(labels, self.num_classes, lam), info
