"""Train / eval image transforms, deterministic per sample.

torchvision's random transforms draw from the global torch RNG, which a resumed run cannot
reproduce sample by sample. Here every random parameter is drawn from an explicit
`torch.Generator` (the data stream seeds one per sample from seed, epoch, rank, worker and
sample counter) and applied with functional ops. The parameter sampling follows torchvision's
`RandomResizedCrop`, `ColorJitter` and `RandomErasing`, so the recipe means the same thing.
Geometry and colour run on the uint8 PIL image; normalising and erasing in one numpy pass.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image, ImageStat

from .config import DataConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EVAL_RESIZE_RATIO = 416 / 384  # eval resize of the shorter side relative to the crop
ERASING_SCALE = (0.02, 0.12)
ERASING_RATIO = (0.3, 3.3)
_MEAN = np.asarray(IMAGENET_MEAN, dtype=np.float32)
_STD = np.asarray(IMAGENET_STD, dtype=np.float32)
_SCALE = 1.0 / (255.0 * _STD)
_BIAS = -_MEAN / _STD


def make_generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with `seed` (any int; reduced to 64 bits)."""
    return torch.Generator().manual_seed(seed & 0xFFFF_FFFF_FFFF_FFFF)


def _uniform(gen: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * torch.rand((), generator=gen).item()


def _randint(gen: torch.Generator, high: int) -> int:
    """Uniform integer in [0, high)."""
    return int(torch.randint(high, (), generator=gen).item())


def to_normalized_tensor(img: Image.Image, erase: tuple[int, int, int, int] | None = None,
                         gen: torch.Generator | None = None) -> torch.Tensor:
    """PIL RGB -> ImageNet-normalised float (3, H, W); optionally erase a box (top, left, h, w).

    The erased box gets uniform [0, 1] pixel noise normalised like the image, which equals
    erasing before normalising. One fused numpy pass straight into CHW layout.
    """
    chw = np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)
    x = np.empty(chw.shape, dtype=np.float32)
    np.multiply(chw, _SCALE[:, None, None], out=x)
    x += _BIAS[:, None, None]
    if erase is not None:
        top, left, h, w = erase
        noise = torch.rand((3, h, w), generator=gen).numpy()
        x[:, top:top + h, left:left + w] = (noise - _MEAN[:, None, None]) / _STD[:, None, None]
    return torch.from_numpy(x)


def rrc_params(width: int, height: int, scale: Sequence[float], ratio: Sequence[float],
               gen: torch.Generator) -> tuple[int, int, int, int]:
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


_LUMA = np.asarray([0.299, 0.587, 0.114])
_RGB2YIQ = np.asarray([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ2RGB = np.linalg.inv(_RGB2YIQ)


def jitter_matrix(strengths: Sequence[float], mean_rgb: np.ndarray,
                  gen: torch.Generator) -> np.ndarray:
    """ColorJitter(brightness, contrast, saturation, hue) in a random order as one 3x4 affine map.

    Factors and order are drawn like torchvision's ColorJitter. Each op is affine in RGB
    (contrast blends with the mean grey of the image so far, tracked through `mean_rgb`), so
    they compose into one map applied by a single PIL `convert` (~1 ms vs ~15 ms for the
    HSV round trip of torchvision's hue). Hue is a rotation in YIQ (as in NVIDIA DALI): for the
    small hue range of the recipe it matches the HSV shift closely; clamping happens once.
    """
    b, c, s, h = strengths
    affine = np.concatenate([np.eye(3), np.zeros((3, 1))], axis=1)
    for idx in torch.randperm(4, generator=gen).tolist():
        strength = (b, c, s, h)[idx]
        if strength <= 0:
            continue
        if idx == 3:
            # Minus: a positive YIQ angle turns hue the opposite way to HSV's hue shift.
            theta = -2 * math.pi * _uniform(gen, -strength, strength)
            rot = np.asarray([[1, 0, 0], [0, math.cos(theta), -math.sin(theta)],
                              [0, math.sin(theta), math.cos(theta)]])
            step, offset = _YIQ2RGB @ rot @ _RGB2YIQ, np.zeros(3)
        else:
            f = _uniform(gen, 1.0 - strength, 1.0 + strength)
            if idx == 0:
                step, offset = f * np.eye(3), np.zeros(3)
            elif idx == 1:
                grey = float(_LUMA @ (affine[:, :3] @ mean_rgb + affine[:, 3]))
                step, offset = f * np.eye(3), np.full(3, (1.0 - f) * grey)
            else:
                step, offset = f * np.eye(3) + (1.0 - f) * np.outer(np.ones(3), _LUMA), np.zeros(3)
        affine = np.concatenate([step @ affine[:, :3], (step @ affine[:, 3] + offset)[:, None]], axis=1)
    return affine


def color_jitter(img: Image.Image, strengths: Sequence[float], gen: torch.Generator) -> Image.Image:
    """Apply `jitter_matrix` to a PIL RGB image."""
    if not any(strengths):
        return img
    mean_rgb = np.asarray(ImageStat.Stat(img).mean)  # from the histogram: cheap
    affine = jitter_matrix(strengths, mean_rgb, gen)
    return img.convert("RGB", tuple(float(v) for v in affine.reshape(-1)))


def erasing_box(height: int, width: int, p: float,
                gen: torch.Generator) -> tuple[int, int, int, int] | None:
    """(top, left, h, w) of a RandomErasing(p, scale=(0.02, 0.12), ratio=(0.3, 3.3)) box, or None."""
    if p <= 0 or torch.rand((), generator=gen).item() >= p:
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


class TrainTransform:
    """RandomResizedCrop, flip, ColorJitter, ToTensor, RandomErasing, normalise - all from `gen`."""

    def __init__(self, cfg: DataConfig):
        self.size = cfg.image_size
        self.scale = tuple(cfg.rrc_scale)
        self.ratio = tuple(cfg.rrc_ratio)
        self.jitter = tuple(cfg.color_jitter)
        self.erasing_p = cfg.erasing_p
        self.hflip = cfg.hflip

    @property
    def decode_size(self) -> int:
        """Smallest shorter side worth decoding: the typical crop is not upsampled."""
        return math.ceil(self.size / math.sqrt(max(min(self.scale), 1e-3)))

    def __call__(self, img: Image.Image, gen: torch.Generator) -> torch.Tensor:
        left, top, w, h = rrc_params(img.width, img.height, self.scale, self.ratio, gen)
        # resize(box=...) crops and resamples in one pass (antialiased when shrinking).
        img = img.resize((self.size, self.size), Image.BILINEAR, box=(left, top, left + w, top + h))
        if self.hflip and torch.rand((), generator=gen).item() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        img = color_jitter(img, self.jitter, gen)
        box = erasing_box(self.size, self.size, self.erasing_p, gen)
        return to_normalized_tensor(img, box, gen)


class EvalTransform:
    """Resize the shorter side to `eval_resize`, centre-crop `image_size`, normalise."""

    def __init__(self, cfg: DataConfig):
        self.size = cfg.image_size
        self.resize = cfg.eval_resize or round(cfg.image_size * EVAL_RESIZE_RATIO)

    @property
    def decode_size(self) -> int:
        return self.resize

    def __call__(self, img: Image.Image) -> torch.Tensor:
        img = TF.resize(img, self.resize, interpolation=TF.InterpolationMode.BILINEAR)
        img = TF.center_crop(img, [self.size, self.size])
        return to_normalized_tensor(img)


def build_train_transform(cfg: DataConfig) -> TrainTransform:
    """The training augmentation of the recipe; call it as `t(img, generator)`."""
    return TrainTransform(cfg)


def build_eval_transform(cfg: DataConfig) -> EvalTransform:
    """The deterministic evaluation transform; call it as `t(img)`."""
    return EvalTransform(cfg)

