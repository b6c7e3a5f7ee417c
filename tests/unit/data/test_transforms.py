"""Worker transforms (crop, flip, parameter draws) and the batched device stage (jitter, erasing,
normalisation): shapes, recipe ranges, determinism, agreement with torchvision."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image

from wikiart.config.options import DataConfig
from wikiart.data.stream import collate, decode_image
from wikiart.data.device import (DeviceAugment, Normalizer, apply_affine, erase_boxes, eval_images,
                                    jitter_affine)
from wikiart.data.transforms import (AUG_SIZE, IDENTITY_AUG, IMAGENET_MEAN, IMAGENET_STD, build_eval_transform,
                                build_train_transform, erasing_box, jitter_params, make_generator,
                                rrc_params)


def photo(w: int = 60, h: int = 44, seed: int = 0) -> np.ndarray:
    """A smooth colour image with some texture (so crops and jitter change it), HWC uint8."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 128 / (w + h) + 60], axis=-1)
    return np.clip(base + rng.normal(0, 15, size=(h, w, 3)), 0, 255).astype(np.uint8)


def small_cfg(**kw) -> DataConfig:
    return dataclasses.replace(DataConfig(image_size=32), **kw)


def as_batch_float(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img).permute(2, 0, 1)[None].float()


def test_train_output_is_uint8_hwc_with_parameters_and_a_flat_crop_stays_flat():
    cfg = small_cfg(color_jitter=(0.0, 0.0, 0.0, 0.0), erasing_p=0.0)
    flat = np.full((40, 50, 3), (200, 100, 30), dtype=np.uint8)
    image, aug = build_train_transform(cfg)(flat, make_generator(0))
    assert image.shape == (32, 32, 3) and image.dtype == torch.uint8 and image.is_contiguous()
    assert torch.equal(image, torch.tensor([200, 100, 30], dtype=torch.uint8).expand(32, 32, 3))
    assert aug.shape == (AUG_SIZE,) and aug.tolist() == list(IDENTITY_AUG)
    batch = collate(["a"], [image], [{"genre": 1}], ("genre",), [aug])
    assert batch["image"].shape == (1, 3, 32, 32) and batch["image"].is_contiguous(memory_format=torch.channels_last)
    x = DeviceAugment.for_recipe(cfg.color_jitter, 0.0, IMAGENET_MEAN, IMAGENET_STD)(batch, torch.device("cpu"), 0)
    want = (torch.tensor([200, 100, 30]) / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert x.dtype == torch.float32 and torch.allclose(x[0], want.view(3, 1, 1).expand(3, 32, 32), atol=1e-5)


def test_train_is_deterministic_per_generator_and_leaves_global_rng_alone():
    t = build_train_transform(small_cfg(erasing_p=0.5))
    img = photo()
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a, a_aug = t(img, make_generator(7))
    assert torch.equal(torch.random.get_rng_state(), before)
    b, b_aug = t(img, make_generator(7))
    assert torch.equal(a, b) and torch.equal(a_aug, b_aug)
    outs = [t(img, make_generator(s)) for s in range(8)]
    assert len({(o[0].float().sum().item(), tuple(o[1].tolist())) for o in outs}) == 8


def test_eval_matches_torchvision_resize_centercrop():
    cfg = small_cfg()
    t = build_eval_transform(cfg)
    assert t.resize == round(32 * 416 / 384)
    img = photo(71, 53)
    ref = T.Compose([T.Resize(t.resize), T.CenterCrop(32), T.PILToTensor()])(Image.fromarray(img))
    out = t(img).permute(2, 0, 1)
    assert out.shape == (3, 32, 32) and (out.int() - ref.int()).abs().max() <= 1  # rounding only
    x = eval_images(out[None], torch.device("cpu"), Normalizer(IMAGENET_MEAN, IMAGENET_STD))
    want = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)(out.float() / 255)
    assert torch.allclose(x[0], want, atol=1e-5)
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


def jittered(img: np.ndarray, factors) -> torch.Tensor:
    aug = torch.tensor([[*factors, 0, 0, 0, 0]], dtype=torch.float32)
    x = as_batch_float(img)
    return apply_affine(x, jitter_affine(aug, x.mean(dim=(2, 3)))).clamp(0, 255)[0]


@pytest.mark.parametrize("index,fn", [(0, TF.adjust_brightness), (1, TF.adjust_contrast),
                                      (2, TF.adjust_saturation)])
def test_each_jitter_op_matches_torchvision(index, fn):
    img = photo()
    factors = [1.0, 1.0, 1.0, 0.0]
    factors[index] = 1.3
    ref = fn(torch.from_numpy(img).permute(2, 0, 1).float() / 255, 1.3) * 255
    assert (jittered(img, factors) - ref).abs().max() < 0.05


def test_hue_rotation_approximates_torchvision_hsv_shift():
    img = photo()
    ref = TF.adjust_hue(torch.from_numpy(img).permute(2, 0, 1), 0.03).float()
    err = (jittered(img, [1.0, 1.0, 1.0, -2 * np.pi * 0.03]) - ref).abs().mean()
    unchanged = (torch.from_numpy(img).permute(2, 0, 1).float() - ref).abs().mean()
    opposite = (jittered(img, [1.0, 1.0, 1.0, 2 * np.pi * 0.03]) - ref).abs().mean()
    assert err < 0.75 * unchanged and err < 0.35 * opposite  # right direction, similar amount


def test_composed_jitter_equals_the_ops_applied_one_by_one_in_any_order():
    img = photo(seed=4)
    factors = [1.2, 0.7, 1.3, 0.2]
    composed = jittered(img, factors)
    for order in [(0, 1, 2, 3), (3, 2, 1, 0), (1, 3, 0, 2)]:
        step = as_batch_float(img)
        for op in order:
            single = [1.0, 1.0, 1.0, 0.0]
            single[op] = factors[op]
            aug = torch.tensor([[*single, 0, 0, 0, 0]], dtype=torch.float32)
            step = apply_affine(step, jitter_affine(aug, step.mean(dim=(2, 3))))  # no clamp in between
        assert torch.allclose(composed, step[0].clamp(0, 255), atol=1e-2)


def test_jitter_draws_follow_colorjitter_ranges_and_skip_disabled_ops():
    gen = make_generator(1)
    draws = [jitter_params((0.4, 0.0, 0.2, 0.05), gen) for _ in range(300)]
    b = [f[0] for f in draws]
    assert 0.6 <= min(b) < 0.7 and 1.3 < max(b) <= 1.4
    assert all(f[1] == 1.0 for f in draws)                       # contrast off
    assert max(abs(f[3]) for f in draws) <= 2 * np.pi * 0.05 + 1e-9


def test_erasing_probability_and_box_size():
    gen = make_generator(11)
    boxes = [erasing_box(64, 64, 0.2, gen) for _ in range(2000)]
    hits = [b for b in boxes if b is not None]
    assert 0.17 < len(hits) / len(boxes) < 0.23
    for top, left, h, w in hits:
        assert 0 <= top and top + h <= 64 and 0 <= left and left + w <= 64
        assert 0.015 <= h * w / 64 ** 2 <= 0.13
    assert erasing_box(64, 64, 0.0, gen) is None


def test_device_erasing_fills_exactly_the_box_with_normalised_noise_and_is_seeded():
    norm = Normalizer(IMAGENET_MEAN, IMAGENET_STD)
    consts = norm.constants(torch.device("cpu"))
    x = torch.full((2, 3, 16, 16), 7.0)
    erase_boxes(x, [(2, 3, 4, 5), (0, 0, 0, 0)], torch.Generator().manual_seed(0), *consts, fill="uniform")
    pixels = (x[0, :, 2:6, 3:8] - consts[1][0]) / consts[0][0]  # back to the 0..255 pixel scale
    assert (x[0, :, 2:6, 3:8] != 7.0).all() and pixels.min() >= -1e-3 and pixels.max() < 255 and pixels.std() > 40
    x[0, :, 2:6, 3:8] = 7.0
    assert (x == 7.0).all()  # nothing outside the box, nothing in the image without a box
    y = torch.full((2, 3, 16, 16), 7.0)
    erase_boxes(y, [(2, 3, 4, 5), (0, 0, 0, 0)], torch.Generator().manual_seed(0), *consts, fill="uniform")
    z = torch.full((2, 3, 16, 16), 7.0)
    erase_boxes(z, [(2, 3, 4, 5), (0, 0, 0, 0)], torch.Generator().manual_seed(0), *consts, fill="uniform")
    assert torch.equal(y, z)


def erasing_batch(jitter: tuple[float, ...]) -> dict:
    """4 photos, 48 px, each with a 40x40 box at (4, 4): 6400 erased pixels per channel."""
    img = np.stack([photo(48, 48, seed=s) for s in range(4)])
    aug = torch.tensor([[*jitter, 4, 4, 40, 40]] * 4, dtype=torch.float32)
    return {"image": torch.from_numpy(img).permute(0, 3, 1, 2), "aug": aug}


def expected_fills(seed: int, draw) -> torch.Tensor:
    """The (4, 3, 40, 40) noise DeviceAugment draws for `seed`, one block per box in order."""
    gen = torch.Generator().manual_seed(seed)
    return torch.stack([draw((3, 40, 40), generator=gen) for _ in range(4)])


def test_default_erasing_fill_is_the_seeds_normal_noise_normalised():
    """torchvision's RandomErasing(value="random") before Normalize: z ~ N(0, 1) in [0, 1] space,
    so the normalised box holds (z - mean) / std: per channel mean -mean/std and std 1/std. A
    uniform pixel fill gives about (0.5 - mean) / std and 0.29 / std, far outside the tolerances."""
    assert DataConfig().erasing_fill == "normal"
    batch = erasing_batch((1.0, 1.0, 1.0, 0.0))
    out = DeviceAugment.for_recipe((0, 0, 0, 0), 1.0, IMAGENET_MEAN, IMAGENET_STD)(batch, torch.device("cpu"), 3)
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1), torch.tensor(IMAGENET_STD).view(3, 1)
    box = out[:, :, 4:44, 4:44].transpose(0, 1).reshape(3, -1)
    assert torch.allclose(box.mean(dim=1, keepdim=True), -mean / std, atol=0.25)
    assert torch.allclose(box.std(dim=1, keepdim=True), 1 / std, rtol=0.05)
    want = (expected_fills(3, torch.randn) - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    assert torch.allclose(out[:, :, 4:44, 4:44], want, atol=1e-5)
    plain = Normalizer(IMAGENET_MEAN, IMAGENET_STD)(batch["image"].float())
    out[:, :, 4:44, 4:44] = plain[:, :, 4:44, 4:44]
    assert torch.equal(out, plain)  # nothing erased outside the boxes


def test_erasing_comes_after_the_jitter_and_is_not_clamped():
    """The seed erases after ColorJitter: the box holds the noise alone, neither jittered nor
    clamped to the image range (N(0, 1) noise leaves [0, 1] often)."""
    batch = erasing_batch((1.3, 0.8, 1.2, 0.1))
    stage = DeviceAugment.for_recipe((0.4, 0.4, 0.4, 0.1), 1.0, IMAGENET_MEAN, IMAGENET_STD)
    out = stage(batch, torch.device("cpu"), 9)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    z = expected_fills(9, torch.randn)
    assert (z < 0).any() and (z > 1).any()
    assert torch.allclose(out[:, :, 4:44, 4:44], (z - mean) / std, atol=1e-5)
    jitter_only = DeviceAugment.for_recipe((0.4, 0.4, 0.4, 0.1), 0.0, IMAGENET_MEAN, IMAGENET_STD)
    jittered = jitter_only(batch, torch.device("cpu"), 9)
    assert torch.equal(out[:, :, :4], jittered[:, :, :4]) and not torch.equal(out, jittered)


def test_uniform_erasing_fill_is_normalised_pixel_noise_and_bad_fills_are_refused():
    batch = erasing_batch((1.0, 1.0, 1.0, 0.0))
    stage = DeviceAugment.for_recipe((0, 0, 0, 0), 1.0, IMAGENET_MEAN, IMAGENET_STD, erasing_fill="uniform")
    out = stage(batch, torch.device("cpu"), 3)
    scale, bias = Normalizer(IMAGENET_MEAN, IMAGENET_STD).constants(torch.device("cpu"))
    want = expected_fills(3, torch.rand) * (255.0 * scale) + bias
    assert torch.equal(out[:, :, 4:44, 4:44], want)  # today's values, bit for bit
    with pytest.raises(ValueError, match="--erasing-fill 'gauss'"):
        DeviceAugment.for_recipe((0, 0, 0, 0), 1.0, IMAGENET_MEAN, IMAGENET_STD, erasing_fill="gauss")


def test_folded_normalisation_equals_jitter_clamp_then_normalise():
    img = np.stack([photo(seed=s) for s in range(3)])
    aug = torch.tensor([[1.3, 1.2, 1.4, 0.3, 0, 0, 0, 0], [0.7, 0.8, 0.6, -0.2, 0, 0, 0, 0],
                        [1.0, 1.0, 1.0, 0.0, 0, 0, 0, 0]])
    batch = {"image": torch.from_numpy(img).permute(0, 3, 1, 2), "aug": aug}
    norm = Normalizer(IMAGENET_MEAN, IMAGENET_STD)
    out = DeviceAugment(norm, jitter=True, erasing=False)(batch, torch.device("cpu"), 0)
    x = batch["image"].float()
    want = norm(apply_affine(x, jitter_affine(aug, x.mean(dim=(2, 3)))).clamp(0, 255))
    assert torch.allclose(out, want, atol=1e-4)
    assert (out != norm(x.clone())).any()  # the factors > 1 saturate some pixels: the clamp matters


def test_device_stage_is_deterministic_per_seed_and_keeps_channels_last():
    cfg = small_cfg(erasing_p=1.0)
    t = build_train_transform(cfg)
    samples = [t(photo(seed=s), make_generator(s)) for s in range(4)]
    batch = collate(list("abcd"), [s[0] for s in samples], [{}] * 4, (), [s[1] for s in samples])
    stage = DeviceAugment.for_recipe(cfg.color_jitter, 1.0, IMAGENET_MEAN, IMAGENET_STD, channels_last=True)
    a, b, c = stage(batch, torch.device("cpu"), 5), stage(batch, torch.device("cpu"), 5), stage(batch, torch.device("cpu"), 6)
    assert a.is_contiguous(memory_format=torch.channels_last) and a.shape == (4, 3, 32, 32)
    assert torch.equal(a, b) and not torch.equal(a, c)  # erasing noise comes from the seed
    plain = DeviceAugment.for_recipe((0, 0, 0, 0), 0.0, IMAGENET_MEAN, IMAGENET_STD)(batch, torch.device("cpu"), 5)
    assert not torch.allclose(a, plain)  # jitter and erasing did something


def test_decode_uses_reduced_size_jpeg_decoding():
    buf = io.BytesIO()
    Image.fromarray(photo(512, 400)).save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    assert decode_image(data, 100).shape == (100, 128, 3)  # 1/4 scale, shorter side still >= 100
    assert decode_image(data, 300).shape == (400, 512, 3)  # 1/2 would go below 300
    assert np.array_equal(decode_image(data, 300), np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
    t = build_train_transform(DataConfig())
    assert t.decode_size >= 384  # production crops are never upsampled by the reduced decode
