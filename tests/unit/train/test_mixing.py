"""MixUp / CutMix: label mixing by hand, CutMix area, mode probabilities, generator-only randomness,
the partner row (the seed's random permutation by default, or the flipped batch)."""

from __future__ import annotations

import random

import pytest
import torch

from wikiart.config.options import OptimConfig
from wikiart.train.losses import hard_targets
from wikiart.train.mixing import Mixer, cutmix_box, mix_targets

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
    out, targets, info = Mixer(1.0, 0.3, 0.0, 1.0, num_classes=NUM, partner="flip")(two_images(), labels, gen(3))
    lam = info["lam"]
    assert info["mode"] == "mixup" and 0.0 < lam < 1.0 and info["partner"] == (1, 0)
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
    out, targets, info = Mixer(0.0, 0.3, 1.0, 1.0, num_classes=NUM, partner="flip")(images, labels, gen(seed))
    assert info["mode"] == "cutmix" and info["partner"] == (1, 0)
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


def test_cutmix_box_spans_the_seeds_centre_minus_plus_half_cut():
    """The seed's rand_bbox: centre -/+ cut // 2, so an odd cut (int(20 * 0.36) = 7) gives 6 px."""
    boxes = [cutmix_box(20, 20, 1 - 0.36 ** 2, gen(seed)) for seed in range(40)]
    assert max(y2 - y1 for y1, y2, _, _ in boxes) == 6 and max(x2 - x1 for _, _, x1, x2 in boxes) == 6
    assert min(y2 - y1 for y1, y2, _, _ in boxes) < 6  # some boxes are clipped at the border


def batch_of(n: int = 8) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    images = torch.rand(n, 3, 12, 12, generator=gen(42))
    labels = {"genre": torch.tensor([0, 1, -1, 1, 0, 0, 1, -1])[:n], "style": torch.arange(n) % 3}
    return images, labels


def test_perm_is_the_default_partner_and_is_drawn_from_the_generator():
    assert OptimConfig().mix_partner == "perm"
    mixer = Mixer(1.0, 0.3, 0.0, 1.0, num_classes=NUM)
    images, labels = batch_of()
    perms = [mixer(images, labels, gen(seed))[2]["partner"] for seed in range(10)]
    assert all(sorted(perm) == list(range(8)) for perm in perms)
    assert mixer(images, labels, gen(4))[2]["partner"] == perms[4]  # same step seed, same pairing
    assert len(set(perms)) > 5 and tuple(range(7, -1, -1)) not in perms  # not the flip
    flip = Mixer(1.0, 0.3, 0.0, 1.0, num_classes=NUM, partner="flip")
    assert all(flip(images, labels, gen(seed))[2]["partner"] == tuple(range(7, -1, -1)) for seed in range(3))


def test_mixup_mixes_each_row_with_its_permuted_partner():
    images, labels = batch_of()
    out, targets, info = Mixer(1.0, 0.3, 0.0, 1.0, num_classes=NUM)(images, labels, gen(5))
    perm, lam = torch.tensor(info["partner"]), info["lam"]
    assert perm.tolist() != list(range(8)) and 0.0 < lam < 1.0
    assert torch.equal(out, images * lam + images[perm] * (1.0 - lam))
    for task, y in labels.items():
        own, own_mask = hard_targets({task: y}, NUM)[task]
        other, other_mask = hard_targets({task: y[perm]}, NUM)[task]
        soft, mask = targets[task]
        assert torch.equal(mask, own_mask & other_mask)  # a missing label on either side drops the row
        assert torch.allclose(soft, (lam * own + (1 - lam) * other) * mask.unsqueeze(1))
    assert targets["genre"][1].sum() < 6  # the two unlabelled genres also drop their partners' rows


@pytest.mark.parametrize("seed", range(6))
def test_cutmix_pastes_the_permuted_partner_into_the_box(seed):
    images, labels = batch_of()
    out, targets, info = Mixer(0.0, 0.3, 1.0, 1.0, num_classes=NUM)(images, labels, gen(seed))
    perm, (y1, y2, x1, x2) = torch.tensor(info["partner"]), info["box"]
    want = images.clone()
    want[:, :, y1:y2, x1:x2] = images[perm][:, :, y1:y2, x1:x2]
    assert torch.equal(out, want)
    assert info["lam"] == pytest.approx(1.0 - (y2 - y1) * (x2 - x1) / 144, abs=1e-12)
    style_b = torch.nn.functional.one_hot(labels["style"][perm], 3).float()
    style_a = torch.nn.functional.one_hot(labels["style"], 3).float()
    assert torch.allclose(targets["style"][0], info["lam"] * style_a + (1 - info["lam"]) * style_b)


def test_bad_partner_is_rejected():
    with pytest.raises(ValueError, match="--mix-partner 'shuffle'"):
        Mixer(num_classes=NUM, partner="shuffle")
