"""MixUp / CutMix: label mixing by hand, CutMix area, mode probabilities, generator-only randomness."""

from __future__ import annotations

import random

import pytest
import torch

from wikiart.losses import hard_targets
from wikiart.mixing import Mixer, mix_targets

NUM = {"genre": 2, "style": 3}


def two_images(height: int = 16, width: int = 20) -> torch.Tensor:
    """Sample 0 all zeros, sample 1 all ones: a mixed pixel's value is the partner's share."""
    return torch.stack([torch.zeros(3, height, width), torch.ones(3, height, width)])


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_mix_targets_by_hand():
    labels = {"style": torch.tensor([0, 1, -1, 2])}  # partners (flip): 2, -1, 1, 0
    soft, mask = mix_targets(labels, NUM, lam=0.3)["style"]
    assert mask.tolist() == [True, False, False, True]  # valid only when both are labelled
    expected = torch.tensor([[0.3, 0.0, 0.7], [0, 0, 0], [0, 0, 0], [0.7, 0.0, 0.3]])
    assert torch.allclose(soft, expected)


def test_mix_targets_partner_with_zero_weight_needs_no_label():
    labels = {"style": torch.tensor([1, -1])}
    soft, mask = mix_targets(labels, NUM, lam=1.0)["style"]
    assert mask.tolist() == [True, False]
    assert torch.equal(soft[0], torch.tensor([0.0, 1.0, 0.0]))


def test_no_mixing_returns_hard_targets():
    images = two_images()
    labels = {"genre": torch.tensor([0, -1]), "style": torch.tensor([2, 1])}
    out, targets, info = Mixer(0.0, 0.3, 0.0, 1.0, num_classes=NUM)(images, labels, gen(0))
    assert info["mode"] == "none" and torch.equal(out, images)
    for task, (soft, mask) in hard_targets(labels, NUM).items():
        assert torch.equal(targets[task][0], soft) and torch.equal(targets[task][1], mask)


def test_mixup_images_and_every_head_agree():
    labels = {"genre": torch.tensor([0, 1]), "style": torch.tensor([2, -1])}
    out, targets, info = Mixer(1.0, 0.3, 0.0, 1.0, num_classes=NUM)(two_images(), labels, gen(3))
    lam = info["lam"]
    assert info["mode"] == "mixup" and 0.0 < lam < 1.0
    assert torch.allclose(out[0], torch.full_like(out[0], 1 - lam))  # 0 * lam + 1 * (1 - lam)
    assert torch.allclose(out[1], torch.full_like(out[1], lam))
    genre_soft, genre_mask = targets["genre"]
    assert torch.allclose(genre_soft, torch.tensor([[lam, 1 - lam], [1 - lam, lam]]))
    assert genre_mask.tolist() == [True, True]
    assert targets["style"][1].tolist() == [False, False]  # style of sample 1 is missing


@pytest.mark.parametrize("seed", range(12))
def test_cutmix_lam_is_the_pasted_area(seed):
    images = two_images(16, 20)
    before = images.clone()
    labels = {"genre": torch.tensor([0, 1])}
    out, targets, info = Mixer(0.0, 0.3, 1.0, 1.0, num_classes=NUM)(images, labels, gen(seed))
    assert info["mode"] == "cutmix"
    y1, y2, x1, x2 = info["box"]
    pasted = out[0, 0]  # ones where sample 1 was pasted into sample 0
    box = torch.zeros(16, 20)
    box[y1:y2, x1:x2] = 1
    assert torch.equal(pasted, box)
    lam = info["lam"]
    assert lam == pytest.approx(1.0 - pasted.sum().item() / pasted.numel(), abs=1e-12)
    assert torch.allclose(targets["genre"][0][0], torch.tensor([lam, 1 - lam], dtype=torch.float32))
    assert torch.equal(images, before)  # the input batch is not modified in place


def test_mode_probabilities():
    mixer = Mixer(0.35, 0.3, 0.25, 1.0, num_classes=NUM)
    g, images, labels = gen(0), torch.zeros(2, 1, 4, 4), {"genre": torch.tensor([0, 1])}
    modes = [mixer(images, labels, g)[2]["mode"] for _ in range(3000)]
    assert modes.count("mixup") / 3000 == pytest.approx(0.35, abs=0.03)
    assert modes.count("cutmix") / 3000 == pytest.approx(0.25, abs=0.03)
    assert modes.count("none") / 3000 == pytest.approx(0.40, abs=0.03)


def test_same_generator_seed_same_result_and_global_rng_untouched():
    mixer = Mixer(0.35, 0.3, 0.35, 1.0, num_classes=NUM)
    images = torch.rand(4, 3, 8, 8, generator=gen(99))
    labels = {"genre": torch.tensor([0, 1, 1, 0]), "style": torch.tensor([2, -1, 0, 1])}
    torch_state, py_state = torch.get_rng_state(), random.getstate()
    runs = [[mixer(images, labels, g) for _ in range(20)] for g in (gen(7), gen(7))]
    assert torch.equal(torch.get_rng_state(), torch_state) and random.getstate() == py_state
    for (out_a, tgt_a, info_a), (out_b, tgt_b, info_b) in zip(*runs):
        assert info_a == info_b and torch.equal(out_a, out_b)
        assert all(torch.equal(tgt_a[t][0], tgt_b[t][0]) for t in tgt_a)
    others = [mixer(images, labels, gen(seed))[2] for seed in range(8, 14)]
    assert any(info != runs[0][0][2] for info in others)


def test_bad_probabilities_are_rejected():
    with pytest.raises(ValueError, match="sum to <= 1"):
        Mixer(0.7, 0.3, 0.5, 1.0, num_classes=NUM)
