"""Masked soft cross-entropy and the multi-task sum, against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from wikiart.train.losses import hard_targets, multitask_loss, soft_cross_entropy

LN2, LN3 = math.log(2.0), math.log(3.0)
# Row 0: logits (0, 0) -> p = (1/2, 1/2). Row 1: logits (ln 3, 0) -> p = (3/4, 1/4).
LOGITS = torch.tensor([[0.0, 0.0], [LN3, 0.0]])
ONE_HOT = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
BOTH = torch.tensor([True, True])


def test_hard_targets_one_hot_with_missing_rows():
    (soft, mask), = hard_targets({"genre": torch.tensor([1, -1, 0])}, {"genre": 3}).values()
    assert torch.equal(soft, torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]))
    assert mask.tolist() == [True, False, True] and soft.dtype == torch.float32
    with pytest.raises(ValueError, match="label 3 out of range 0..2"):
        hard_targets({"genre": torch.tensor([3])}, {"genre": 3})


def test_cross_entropy_by_hand():
    # -ln(1/2) and -ln(1/4), averaged
    loss = soft_cross_entropy(LOGITS, ONE_HOT, BOTH)
    assert loss.item() == pytest.approx((LN2 + 2 * LN2) / 2, rel=1e-6)


def test_label_smoothing_by_hand():
    eps = 0.1  # targets (0.95, 0.05) and (0.05, 0.95)
    row0 = -(0.95 * math.log(0.5) + 0.05 * math.log(0.5))
    row1 = -(0.05 * math.log(0.75) + 0.95 * math.log(0.25))
    loss = soft_cross_entropy(LOGITS, ONE_HOT, BOTH, smoothing=eps)
    assert loss.item() == pytest.approx((row0 + row1) / 2, rel=1e-6)
    assert loss.item() == pytest.approx(1.0122549, rel=1e-6)
    # and it agrees with PyTorch's own smoothing on hard labels
    ref = F.cross_entropy(LOGITS, torch.tensor([0, 1]), label_smoothing=eps)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)


def test_soft_targets_by_hand():
    soft = torch.tensor([[0.3, 0.7], [0.6, 0.4]])
    row0 = -(0.3 * math.log(0.5) + 0.7 * math.log(0.5))
    row1 = -(0.6 * math.log(0.75) + 0.4 * math.log(0.25))
    assert soft_cross_entropy(LOGITS, soft, BOTH).item() == pytest.approx((row0 + row1) / 2, rel=1e-6)


def test_missing_rows_are_excluded_from_value_and_gradient():
    logits = LOGITS.clone().requires_grad_()
    soft = torch.tensor([[1.0, 0.0], [float("nan"), float("nan")]])  # garbage in the missing row
    loss = soft_cross_entropy(logits, soft, torch.tensor([True, False]))
    assert loss.item() == pytest.approx(LN2, rel=1e-6)  # the mean over ONE valid row, not two
    loss.backward()
    assert torch.equal(logits.grad[1], torch.zeros(2))
    assert torch.allclose(logits.grad[0], torch.tensor([-0.5, 0.5]))


def test_all_missing_gives_zero_with_gradient_and_no_nan():
    logits = torch.tensor([[50.0, -50.0], [1.0, 2.0]], requires_grad=True)
    loss = soft_cross_entropy(logits, torch.zeros(2, 2), torch.tensor([False, False]), smoothing=0.1)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros(2, 2))


def test_multitask_weights_and_partially_labelled_heads():
    genre = LOGITS.clone().requires_grad_()
    style = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]], requires_grad=True)
    artist = torch.randn(2, 4, requires_grad=True)
    targets = hard_targets({"genre": torch.tensor([0, 1]), "style": torch.tensor([-1, 2]),
                            "artist": torch.tensor([-1, -1])}, {"genre": 2, "style": 3, "artist": 4})
    total, parts = multitask_loss({"genre": genre, "style": style, "artist": artist}, targets,
                                  weights={"genre": 2.0, "style": 0.5, "artist": 3.0})
    genre_loss = 1.5 * LN2                  # as in test_cross_entropy_by_hand
    style_loss = LN3                        # only row 1 is labelled: p = 1/3
    assert total.item() == pytest.approx(2.0 * genre_loss + 0.5 * style_loss, rel=1e-6)
    assert {t: int(rows) for t, (_, rows) in parts.items()} == {"genre": 2, "style": 1, "artist": 0}
    assert parts["style"][0].item() == pytest.approx(style_loss, rel=1e-6)
    assert parts["genre"][0].item() == pytest.approx(genre_loss, rel=1e-6)
    assert not parts["genre"][0].requires_grad
    total.backward()
    assert torch.equal(style.grad[0], torch.zeros(3))
    assert artist.grad is not None and torch.equal(artist.grad, torch.zeros(2, 4))


def test_multitask_needs_a_target_per_head():
    with pytest.raises(ValueError, match=r"no targets for heads \['style'\]"):
        multitask_loss({"genre": LOGITS, "style": LOGITS}, {"genre": (ONE_HOT, BOTH)})
