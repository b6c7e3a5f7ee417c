"""Per-sample image transforms of the loader workers, deterministic per sample.

The workers do only what needs the single image: decode (in `data.stream`), the
RandomResizedCrop/resize to the output size, the flip, and drawing every random parameter.
They hand over uint8 pixels (4x fewer bytes to pin and copy than float) plus a small parameter
vector per sample; colour jitter, erasing and normalisation run batched on the training device
(`wikiart.data.device`): one fused pass over the batch instead of per-image work on the CPU.

torchvision's random transforms draw from the global torch RNG, which a resumed run cannot
reproduce sample by sample. Here every random parameter comes from an explicit generator that
the data stream seeds per sample from (seed, epoch, reader, readers, sample counter). The draws
follow torchvision's `RandomResizedCrop`, `RandomHorizontalFlip`, `ColorJitter` and
`RandomErasing`, so the recipe means the same thing. (The erasing box is drawn here, its noise on
the device, N(0, 1) as the seed's by default; the jitter is applied there as one affine map, which
differs slightly from torchvision's: see `wikiart.data.device`.)

The generator is Python's `random.Random` (Mersenne Twister), seeded from the bytes of those
ints (SHA-512 inside `random.seed`). Drawing one sample's parameters, generator included, takes
20-30 us on the development VM, against 140-210 us with a numpy SeedSequence, a
`torch.Generator` and 16 scalar `torch.rand` calls (4-5% of a worker's time per 384-px sample).
`random()` on a given seed is the same on every Python version and in every process, so a
resumed run draws what the interrupted one would have.
"""

from __future__ import annotations

import math
import random
import struct
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..config.options import EVAL_RESIZE_RATIO, DataConfig
from .stream import seeds

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ERASING_SCALE = (0.02, 0.12)
ERASING_RATIO = (0.3, 3.3)

# The per-sample augmentation vector handed to the device stage (float32, AUG_SIZE values):
# jitter factors (brightness, contrast, saturation: 1 = unchanged; hue: angle in radians) and
# the erasing box (top, left, height, width; height 0 = none).
JITTER_FACTORS, ERASE_BOX = slice(0, 4), slice(4, 8)
AUG_SIZE = 8
IDENTITY_AUG = (1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0)


def make_generator(*parts: int) -> random.Random:
    """A generator that is a pure function of `parts` (any ints, each reduced to 64 bits)."""
    return random.Random(struct.pack(f"<{len(parts)}Q", *seeds(*parts)))


def _uniform(gen: random.Random, low: float, high: float) -> float:
    return low + (high - low) * gen.random()


def _randint(gen: random.Random, high: int) -> int:
    """Uniform integer in [0, high)."""
    return gen.randrange(high)


def rrc_params(width: int, height: int, scale: Sequence[float], ratio: Sequence[float],
               gen: random.Random) -> tuple[int, int, int, int]:
    """(left, top, w, h) of a RandomResizedCrop box, torchvision's algorithm with `gen`."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * _uniform(gen, scale[0], scale[1])
        aspect = math.exp(_uniform(gen, *log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return _randint(gen, width - w + 1), _randint(gen, height - h + 1), w, h
    # Fallback: the central crop with the ratio clamped into range (as torchvision does).
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def jitter_params(strengths: Sequence[float], gen: random.Random) -> list[float]:
    """ColorJitter's factor draws: brightness, contrast, saturation in [1 - s, 1 + s] (1 when
    off) and the hue rotation angle in radians (0 when off; see `data.device.jitter_affine`).

    ColorJitter also draws a random op order; the four ops commute (before clamping) in the
    affine form applied on the device, so no order is drawn."""
    factors = [1.0, 1.0, 1.0, 0.0]
    for idx, strength in enumerate(strengths):
        if strength <= 0:
            continue
        if idx == 3:
            # Minus: a positive YIQ angle turns hue the opposite way to HSV's hue shift.
            factors[3] = -2 * math.pi * _uniform(gen, -strength, strength)
        else:
            factors[idx] = _uniform(gen, 1.0 - strength, 1.0 + strength)
    return factors


def erasing_box(height: int, width: int, p: float,
                gen: random.Random) -> tuple[int, int, int, int] | None:
    """(top, left, h, w) of a RandomErasing(p, scale=(0.02, 0.12), ratio=(0.3, 3.3)) box, or None."""
    if p <= 0 or gen.random() >= p:
        return None
    area = height * width
    log_ratio = (math.log(ERASING_RATIO[0]), math.log(ERASING_RATIO[1]))
    for _ in range(10):
        erase_area = area * _uniform(gen, *ERASING_SCALE)
        aspect = math.exp(_uniform(gen, *log_ratio))
        h = int(round(math.sqrt(erase_area * aspect)))
        w = int(round(math.sqrt(erase_area / aspect)))
        if 0 < h < height and 0 < w < width:
            return _randint(gen, height - h + 1), _randint(gen, width - w + 1), h, w
    return None


def as_chw(pixels: np.ndarray) -> torch.Tensor:
    """HWC uint8 array -> (1, 3, H, W) uint8 tensor sharing its memory (channels_last strides)."""
    pixels = np.require(pixels, np.uint8, ["C_CONTIGUOUS", "WRITEABLE"])  # copies only if needed
    # unsqueeze before permute: a proper batch stride, so torch sees channels_last and uses its
    # fast uint8 kernel (and returns channels_last, which `to_hwc` then reads without a copy).
    return torch.from_numpy(pixels).unsqueeze(0).permute(0, 3, 1, 2)


def resize_uint8(x: torch.Tensor, height: int, width: int, mode: str = "bilinear") -> torch.Tensor:
    """Antialiased bilinear (or bicubic: a timm backbone's) resize of a (1, 3, h, w) uint8 tensor
    (PIL's filters; torch's vectorised uint8 kernel is ~2x faster than PIL's resize). Returns
    (1, 3, H, W) uint8."""
    if x.shape[-2:] == (height, width):
        return x
    return F.interpolate(x, size=(height, width), mode=mode, antialias=True, align_corners=False)


def to_hwc(x: torch.Tensor) -> torch.Tensor:
    """(1, 3, H, W) -> contiguous (H, W, 3): batches stack into NHWC, i.e. channels_last."""
    return x[0].permute(1, 2, 0).contiguous()


class TrainTransform:
    """RandomResizedCrop + flip on the pixels; jitter and erasing drawn here, applied on the device."""

    def __init__(self, cfg: DataConfig):
        self.size = cfg.image_size
        self.scale = tuple(cfg.rrc_scale)
        self.ratio = tuple(cfg.rrc_ratio)
        self.jitter = tuple(cfg.color_jitter)
        self.erasing_p = cfg.erasing_p
        self.hflip = cfg.hflip
        self.interpolation = cfg.interpolation or "bilinear"

    @property
    def decode_size(self) -> int:
        """Smallest shorter side worth decoding: the typical crop is not upsampled."""
        return math.ceil(self.size / math.sqrt(max(min(self.scale), 1e-3)))

    def __call__(self, pixels: np.ndarray, gen: random.Random) -> tuple[torch.Tensor, torch.Tensor]:
        """HWC uint8 pixels -> ((size, size, 3) uint8, (AUG_SIZE,) float32 device-stage parameters)."""
        height, width = pixels.shape[:2]
        left, top, w, h = rrc_params(width, height, self.scale, self.ratio, gen)
        x = resize_uint8(as_chw(pixels)[:, :, top:top + h, left:left + w], self.size, self.size, self.interpolation)
        if self.hflip and gen.random() < 0.5:
            x = x.flip(-1)
        factors = jitter_params(self.jitter, gen)
        box = erasing_box(self.size, self.size, self.erasing_p, gen) or (0, 0, 0, 0)
        return to_hwc(x), torch.tensor([*factors, *box], dtype=torch.float32)


class EvalTransform:
    """Resize the shorter side to `eval_resize`, centre-crop `image_size` (uint8; normalised on the device)."""

    def __init__(self, cfg: DataConfig):
        self.size = cfg.image_size
        self.resize = cfg.eval_resize or round(cfg.image_size * EVAL_RESIZE_RATIO)
        self.interpolation = cfg.interpolation or "bilinear"

    @property
    def decode_size(self) -> int:
        return self.resize

    def __call__(self, pixels: np.ndarray) -> torch.Tensor:
        """HWC uint8 pixels -> (size, size, 3) uint8."""
        height, width = pixels.shape[:2]
        # torchvision's Resize(int): the shorter side becomes `resize`, the other keeps the ratio.
        if height <= width:
            new_h, new_w = self.resize, int(self.resize * width / height)
        else:
            new_h, new_w = int(self.resize * height / width), self.resize
        x = resize_uint8(as_chw(pixels), new_h, new_w, self.interpolation)
        top = int(round((new_h - self.size) / 2.0))
        left = int(round((new_w - self.size) / 2.0))
        if top < 0 or left < 0:
            raise ValueError(f"eval resize {self.resize} is smaller than the crop {self.size}")
        return to_hwc(x[:, :, top:top + self.size, left:left + self.size])


def build_train_transform(cfg: DataConfig) -> TrainTransform:
    """The training augmentation of the recipe; call it as `t(pixels, generator)`."""
    return TrainTransform(cfg)


def build_eval_transform(cfg: DataConfig) -> EvalTransform:
    """The deterministic evaluation transform; call it as `t(pixels)`."""
    return EvalTransform(cfg)
