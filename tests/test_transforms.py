"""Train / eval transforms: shapes, normalisation, determinism per generator, recipe ranges."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image

from wikiart.config import DataConfig
from wikiart.data_stream import decode_image
from wikiart.transforms import (IMAGENET_MEAN, IMAGENET_STD, build_eval_transform, build_train_transform,
                                color_jitter, erasing_box, make_generator, rrc_params)


def photo(w: int = 60, h: int = 44, seed: int = 0) -> Image.Image:
    """A smooth colour image with some texture (so crops and jitter change it)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 128 / (w + h) + 60], axis=-1)
    pixels = np.clip(base + rng.normal(0, 15, size=(h, w, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def small_cfg(**kw) -> DataConfig:
    return dataclasses.replace(DataConfig(image_size=32), **kw)


def test_train_output_shape_dtype_and_normalisation():
    cfg = small_cfg(color_jitter=(0.0, 0.0, 0.0, 0.0), erasing_p=0.0)
    flat = Image.new("RGB", (50, 40), (200, 100, 30))
    x = build_train_transform(cfg)(flat, make_generator(0))
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and x.is_contiguous()
    want = (torch.tensor([200, 100, 30]) / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(x, want.view(3, 1, 1).expand_as(x), atol=1e-5)  # crop of a flat image


def test_train_is_deterministic_per_generator_and_leaves_global_rng_alone():
    t = build_train_transform(small_cfg(erasing_p=0.5))
    img = photo()
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = t(img, make_generator(7))
    assert torch.equal(torch.random.get_rng_state(), before)
    assert torch.equal(a, t(img, make_generator(7)))
    outs = [t(img, make_generator(s)) for s in range(8)]
    assert all(not torch.equal(outs[0], o) for o in outs[1:])


def test_eval_matches_torchvision_resize_centercrop():
    cfg = small_cfg()
    t = build_eval_transform(cfg)
    assert t.resize == round(32 * 416 / 384)
    img = photo(71, 53)
    ref = T.Compose([T.Resize(t.resize), T.CenterCrop(32), T.ToTensor(),
                     T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])(img)
    out = t(img)
    assert out.shape == (3, 32, 32) and torch.allclose(out, ref, atol=1e-5)
    assert torch.equal(out, t(img))
    assert build_eval_transform(small_cfg(eval_resize=40)).resize == 40


def test_rrc_boxes_stay_in_the_recipe_ranges():
    scale, ratio = (0.7, 1.0), (0.85, 1.15)
    gen = make_generator(3)
    areas, lefts = [], set()
    for _ in range(300):
        left, top, w, h = rrc_params(500, 480, scale, ratio, gen)
        assert 0 <= left and left + w <= 500 and 0 <= top and top + h <= 480
        assert ratio[0] - 0.01 <= w / h <= ratio[1] + 0.01
        areas.append(w * h / (500 * 480))
        lefts.add(left)
    assert 0.69 <= min(areas) < 0.75 and 0.92 < max(areas) <= 1.0 and len(lefts) > 20
    assert rrc_params(10, 100, scale, ratio, gen)[2:] == (10, 12)  # fallback: clamped ratio


@pytest.mark.parametrize("index,fn", [(0, TF.adjust_brightness), (1, TF.adjust_contrast),
                                      (2, TF.adjust_saturation)])
def test_color_jitter_matches_torchvision(index, fn):
    img = photo()
    strengths = [0.0] * 4
    strengths[index] = 0.3
    out = np.asarray(color_jitter(img, strengths, make_generator(5)), dtype=float)
    gen = make_generator(5)
    torch.randperm(4, generator=gen)  # the op order is drawn first, as in ColorJitter
    factor = 0.7 + 0.6 * torch.rand((), generator=gen).item()
    ref = np.asarray(fn(img, factor), dtype=float)
    assert np.abs(out - ref).max() <= 1.0  # rounding only


def test_hue_jitter_is_close_to_torchvision_hsv_shift():
    img = photo()
    out = np.asarray(color_jitter(img, (0, 0, 0, 0.03), make_generator(2)), dtype=float)
    gen = make_generator(2)
    torch.randperm(4, generator=gen)
    factor = -0.03 + 0.06 * torch.rand((), generator=gen).item()
    ref = np.asarray(TF.adjust_hue(img, factor), dtype=float)
    base = np.asarray(img, dtype=float)
    assert np.abs(out - ref).mean() < 0.5 * max(np.abs(base - ref).mean(), 1.0)


def test_erasing_probability_and_box_size():
    gen = make_generator(11)
    boxes = [erasing_box(64, 64, 0.2, gen) for _ in range(2000)]
    hits = [b for b in boxes if b is not None]
    assert 0.17 < len(hits) / len(boxes) < 0.23
    for top, left, h, w in hits:
        assert 0 <= top and top + h <= 64 and 0 <= left and left + w <= 64
        assert 0.015 <= h * w / 64 ** 2 <= 0.13
    assert erasing_box(64, 64, 0.0, gen) is None


def test_decode_uses_reduced_size_jpeg_decoding():
    buf = io.BytesIO()
    photo(512, 400).save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    assert decode_image(data, 100).size == (128, 100)  # 1/4 scale, shorter side still >= 100
    assert decode_image(data, 300).size == (512, 400)  # 1/2 would go below 300
    t = build_train_transform(DataConfig())
    assert t.decode_size >= 384  # production crops are never upsampled by the draft
