"""The batched half of the augmentation and the normalisation, on the training device.

Loader workers send uint8 batches (channels_last) and a parameter vector per sample
(`wikiart.data.transforms`). Here, per batch and on the GPU when there is one: uint8 -> float,
ColorJitter as one per-sample 3x4 affine map, RandomErasing, then the model's mean/std.
This moves the per-pixel float work off the loader cores (the CPU cost that limits how many
images per second a node can feed) and copies 4x fewer bytes host -> device.

ColorJitter's four ops are each affine in RGB - brightness scales, contrast blends with the mean
grey of the image, saturation blends with the luma image, hue rotates in YIQ (as NVIDIA DALI
does; for the recipe's small hue range it approximates torchvision's HSV shift) - so they compose
into one 3x4 map per image, applied in a single pass and clamped once.

RandomErasing follows the seed's order: after the jitter, before the normalisation. The seed
erases the [0, 1] tensor with `value="random"`, N(0, 1) noise per pixel and channel, that
Normalize then maps to (z - mean) / std. We erase the normalised image with those normalised
values directly (the box is overwritten whole, so the two orders give the same pixels), and like
the seed we do not clamp them. `--erasing-fill uniform` (ours) fills with uniform pixel noise in
[0, 255) instead, normalised: values inside the image's range. Where we differ from the seed is
the jitter before it (one affine map on the device, see above), not the erasing.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .transforms import ERASE_BOX, JITTER_FACTORS

LUMA = (0.299, 0.587, 0.114)
_RGB2YIQ = ((0.299, 0.587, 0.114), (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))
# Inverted once on the host: torch.linalg.inv on a GPU checks for singularity with a device sync.
_YIQ2RGB = tuple(map(tuple, np.linalg.inv(np.asarray(_RGB2YIQ)).tolist()))


def _hue_matrices(theta: torch.Tensor) -> torch.Tensor:
    """(B,) angles -> (B, 3, 3) RGB maps rotating the chroma plane of YIQ by `theta`."""
    to_yiq = torch.tensor(_RGB2YIQ, dtype=torch.float64, device=theta.device)
    from_yiq = torch.tensor(_YIQ2RGB, dtype=torch.float64, device=theta.device)
    cos, sin = torch.cos(theta), torch.sin(theta)
    rot = torch.zeros(theta.shape[0], 3, 3, dtype=torch.float64, device=theta.device)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = cos, -sin, sin, cos
    return from_yiq @ rot @ to_yiq


def jitter_affine(aug: torch.Tensor, mean_rgb: torch.Tensor) -> torch.Tensor:
    """(B, AUG_SIZE) parameters and (B, 3) mean pixel of each image -> (B, 3, 4) affine maps.

    Brightness scales; contrast blends with the grey of the image's mean (mean @ LUMA); the
    saturation and hue maps keep every grey colour fixed and commute (both act on the chroma
    plane of YIQ only). So the four ops commute and compose, in any order, into
    b * c * (S @ H) x + b * (1 - c) * grey. (torchvision clamps between ops; we clamp once.)
    """
    aug, mean_rgb = aug.double(), mean_rgb.double()
    dev = aug.device
    factors = aug[:, JITTER_FACTORS]
    b, c, s = factors[:, 0], factors[:, 1], factors[:, 2]
    luma = torch.tensor(LUMA, dtype=torch.float64, device=dev)
    eye = torch.eye(3, dtype=torch.float64, device=dev)
    to_luma = torch.ones(3, 1, dtype=torch.float64, device=dev) @ luma[None, :]
    saturation = s[:, None, None] * eye + (1 - s)[:, None, None] * to_luma
    linear = (b * c)[:, None, None] * (saturation @ _hue_matrices(factors[:, 3]))
    offset = (b * (1 - c) * (mean_rgb @ luma))[:, None].expand(-1, 3)
    return torch.cat([linear, offset[:, :, None]], dim=2).float()


def apply_affine(x: torch.Tensor, affine: torch.Tensor) -> torch.Tensor:
    """y[b, c] = sum_j A[b, c, j] x[b, j] + A[b, c, 3] for float (B, 3, H, W) images.

    Elementwise multiply-adds in a fixed order, not a matmul: BLAS kernels may round
    differently depending on how a buffer happens to be aligned, and a resumed run must
    reproduce every pixel bit for bit."""
    a = affine[:, :, :, None, None]                      # (B, 3, 4, 1, 1)
    y = x[:, 0:1] * a[:, :, 0]
    y.addcmul_(x[:, 1:2], a[:, :, 1]).addcmul_(x[:, 2:3], a[:, :, 2])
    return y.add_(a[:, :, 3])


def mean_pixel(x: torch.Tensor) -> torch.Tensor:
    """(B, 3) mean of float images holding integer pixel values, exact whatever the summation
    order (a resumed run must reproduce it bit for bit): a row sum is an integer below 2^24,
    exact in float32; the rows are then summed in float64, exact below 2^53."""
    if x.shape[3] * 255 >= 2**24:
        raise ValueError(f"images {x.shape[3]} px wide are too wide for an exact float32 row sum")
    return x.sum(dim=3).double().sum(dim=2) / (x.shape[2] * x.shape[3])


ERASING_FILLS = ("normal", "uniform")


def erase_boxes(x: torch.Tensor, boxes: Sequence[Sequence[int]], generator: torch.Generator | None,
                scale: torch.Tensor, bias: torch.Tensor, fill: str = "normal") -> None:
    """Fill each (top, left, h, w) box of image i with noise, in place, in the normalised space
    of `x` (`scale`, `bias`: (1, 3, 1, 1) each, x = pixel * scale + bias, pixel in [0, 255]).

    fill "normal" (the seed's): z ~ N(0, 1) per pixel and channel in [0, 1] space, normalised,
    i.e. (z - mean) / std = z * 255 * scale + bias. "uniform" (ours): pixel noise in [0, 255),
    normalised. Both draw one (3, h, w) block per box from `generator`, in box order.

    `boxes` is a host-side list (no device sync); rows with h == 0 are not erased."""
    if fill not in ERASING_FILLS:
        raise ValueError(f"erasing fill {fill!r} is not one of {', '.join(ERASING_FILLS)}")
    draw = torch.randn if fill == "normal" else torch.rand
    for i, (top, left, h, w) in enumerate(boxes):
        if h > 0 and w > 0:
            noise = draw((3, h, w), generator=generator, device=x.device, dtype=x.dtype)
            x[i, :, top:top + h, left:left + w] = noise * (255.0 * scale[0]) + bias[0]


class Normalizer:
    """(x / 255 - mean) / std as x * scale + bias, with per-device cached constants. Applied in
    place (callers pass a fresh float tensor): a new batch-sized buffer costs page faults on the CPU."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.scale = torch.tensor([1.0 / (255.0 * s) for s in std]).view(1, 3, 1, 1)
        self.bias = torch.tensor([-m / s for m, s in zip(mean, std)]).view(1, 3, 1, 1)
        self._cache: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    def constants(self, device: torch.device, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, bias), each (1, 3, 1, 1), on `device`."""
        key = (device, dtype)
        if key not in self._cache:
            self._cache[key] = (self.scale.to(device, dtype), self.bias.to(device, dtype))
        return self._cache[key]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        scale, bias = self.constants(x.device, x.dtype)
        return x.mul_(scale).add_(bias)

    def fold_into(self, affine: torch.Tensor) -> torch.Tensor:
        """A (B, 3, 4) pixel map followed by this normalisation, as one map."""
        scale, bias = (t.view(1, 3, 1).to(affine) for t in self.constants(affine.device))
        return torch.cat([affine[:, :, :3] * scale, affine[:, :, 3:] * scale + bias], dim=2)

    def clamp_(self, x: torch.Tensor) -> torch.Tensor:
        """Clamp normalised images to the normalised [0, 255] pixel range, in place."""
        scale, bias = self.constants(x.device, x.dtype)
        return torch.clamp(x, min=bias, max=255.0 * scale + bias, out=x)


def to_device_images(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 (B, 3, H, W) batch -> NCHW-contiguous float32 on `device`.

    The uint8 bytes are copied (non-blocking from pinned memory) before anything else; the
    per-channel work that follows is fastest in NCHW, and the model's layout is set last."""
    return images.to(device, non_blocking=True).contiguous().float()


def model_layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def eval_images(images: torch.Tensor, device: torch.device, normalize: Normalizer,
                channels_last: bool = False) -> torch.Tensor:
    """The model input of an eval batch: normalised float32 on `device`."""
    return model_layout(normalize(to_device_images(images, device)), channels_last)


class DeviceAugment:
    """The training batch's device stage: jitter, erasing (fill: see `erase_boxes`), normalisation."""

    def __init__(self, normalize: Normalizer, jitter: bool, erasing: bool, channels_last: bool = False,
                 *, erasing_fill: str = "normal"):
        if erasing_fill not in ERASING_FILLS:
            raise ValueError(f"--erasing-fill {erasing_fill!r} is not one of {', '.join(ERASING_FILLS)}")
        self.normalize, self.jitter, self.erasing = normalize, jitter, erasing
        self.channels_last, self.erasing_fill = channels_last, erasing_fill

    @classmethod
    def for_recipe(cls, color_jitter: Sequence[float], erasing_p: float, mean: Sequence[float],
                   std: Sequence[float], channels_last: bool = False, *,
                   erasing_fill: str = "normal") -> "DeviceAugment":
        """Skips the stages the recipe switches off (all jitter strengths 0, erasing p 0)."""
        return cls(Normalizer(mean, std), any(s > 0 for s in color_jitter), erasing_p > 0, channels_last,
                   erasing_fill=erasing_fill)

    def __call__(self, batch: dict, device: torch.device, seed: int) -> torch.Tensor:
        """Normalised float32 images of a loader batch ("image" uint8, "aug" parameters).

        The normalisation is folded into the jitter map and the clamp into the normalised range,
        so the batch is read and written as few times as possible (on the CPU that is the cost)."""
        x = to_device_images(batch["image"], device)
        aug = batch.get("aug")
        if aug is not None and self.jitter:
            affine = jitter_affine(aug.to(device, non_blocking=True), mean_pixel(x))
            x = self.normalize.clamp_(apply_affine(x, self.normalize.fold_into(affine)))
        else:
            x = self.normalize(x)
        if aug is not None and self.erasing:
            boxes = aug[:, ERASE_BOX].to(torch.long).tolist()  # the loader's CPU tensor: no device sync
            if any(h > 0 for _, _, h, _ in boxes):
                gen = torch.Generator(device=device).manual_seed(seed & 0x7FFF_FFFF_FFFF_FFFF)
                erase_boxes(x, boxes, gen, *self.normalize.constants(x.device, x.dtype), fill=self.erasing_fill)
        return model_layout(x, self.channels_last)
