"""wikiart.model.explain: the attention map is the model's own pooling (non-negative, one per
axis, the feature grid's shape), Grad-CAM per head by plain autograd, the training path
untouched, and on a task whose label lives in one known region, both maps point there."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from wikiart.evaluate.explain_plot import render_explanation
from wikiart.model.classifier import CNNRNNClassifier
from wikiart.model.explain import explain, gradcam, peak

HEADS = {"genre": 3, "style": 4}


def tiny(backbone: str = "resnet18", image_size: int = 64, **kwargs) -> CNNRNNClassifier:
    torch.manual_seed(0)
    return CNNRNNClassifier(backbone, num_classes=HEADS, image_size=image_size, proj_dim=16, rnn_hidden=8,
                            rnn_layers=1, **kwargs)


@pytest.mark.parametrize("backbone, size", [("resnet18", 96), ("timm/test_vit", 48), ("timm/test_convnext", 64)])
def test_attention_is_the_pooling_weights_on_the_feature_grid(backbone, size):
    model = tiny(backbone, size).eval()
    images = torch.randn(3, 3, size, size)
    with torch.no_grad():
        grid = model.backbone(images).shape[2:]
        expected = model(images)
    expl = explain(model, images)
    assert expl.attention.shape == (3, *grid) and grid[0] > 1  # the backbone's own grid, not 1 x 1
    assert (expl.attention >= 0).all() and (expl.row_weights >= 0).all() and (expl.col_weights >= 0).all()
    assert torch.allclose(expl.row_weights.sum(1), torch.ones(3))
    assert torch.allclose(expl.col_weights.sum(1), torch.ones(3))
    # rows of the map sum to the row attention, columns to the column attention: nothing else mixed in
    assert torch.allclose(expl.attention.sum(2), expl.row_weights, atol=1e-6)
    assert torch.allclose(expl.attention.sum(1), expl.col_weights, atol=1e-6)
    for task, cam in expl.gradcam.items():
        assert cam.shape == (3, *grid) and (cam >= 0).all() and torch.allclose(cam.sum((1, 2)), torch.ones(3))
        assert torch.allclose(expl.logits[task], expected[task], atol=1e-5)  # the same forward pass
        assert torch.equal(expl.predicted[task], expected[task].argmax(1))


def test_the_pooling_weights_are_the_ones_the_model_pooled_with():
    model = tiny().eval()
    with torch.no_grad():
        fmap = model.backbone(torch.randn(2, 3, 64, 64))
        features, rows, cols = model.fuse(fmap)
        # the row summary the model pooled, re-pooled by hand with the returned weights
        proj = model.proj(fmap)
        b, c, h, w = proj.shape
        summaries = model.row_rnn(proj.permute(0, 2, 3, 1).reshape(b * h, w, c))[0].mean(1).view(b, h, -1)
        row_vec = features[:, model.feature_channels:model.feature_channels + summaries.shape[2]]
    assert torch.allclose((rows[:, :, None] * summaries).sum(1), row_vec, atol=1e-6)
    assert rows.shape == (2, h) and cols.shape == (2, w)


def test_explain_leaves_the_model_and_the_training_path_as_they_were():
    model = tiny().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    explain(model, torch.randn(2, 3, 64, 64))
    assert model.training and all(p.grad is None for p in model.parameters())  # no parameter gradients
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # BN statistics too
    assert not any(m._forward_hooks or m._backward_hooks or m._forward_pre_hooks for m in model.modules())
    torch.manual_seed(1)
    train_logits = model(torch.randn(2, 3, 64, 64))
    assert set(train_logits) == set(HEADS)  # forward still returns logits only


def test_a_no_rnn_model_has_no_attention_but_grad_cam_per_head():
    expl = explain(tiny(use_rnn=False), torch.randn(2, 3, 64, 64))
    assert expl.attention is None and expl.row_weights is None and set(expl.gradcam) == set(HEADS)


def test_grad_cam_weighs_channels_by_their_mean_gradient_and_is_uniform_when_nothing_is_positive():
    fmap = torch.zeros(1, 2, 2, 2)
    fmap[0, 0, 0, 1], fmap[0, 1, 1, 0] = 3.0, 5.0
    grad = torch.zeros_like(fmap)
    grad[0, 0] = 1.0   # channel 0 raises the class, channel 1 lowers it
    grad[0, 1] = -1.0
    assert torch.allclose(gradcam(fmap, grad)[0], torch.tensor([[0.0, 1.0], [0.0, 0.0]]))
    assert torch.allclose(gradcam(fmap, -grad)[0], torch.tensor([[0.0, 0.0], [1.0, 0.0]]))
    assert torch.allclose(gradcam(fmap, torch.zeros_like(fmap)), torch.full((1, 2, 2), 0.25))


def test_the_picture_is_a_readable_png_with_a_panel_per_map():
    model = tiny().eval()
    images = torch.randn(2, 3, 64, 64)
    expl = explain(model, images)
    crop = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    names = {t: [f"{t}{i}" for i in range(n)] for t, n in HEADS.items()}
    with Image.open(io.BytesIO(render_explanation(crop, expl, 1, names, "a painting"))) as picture:
        assert picture.format == "PNG" and picture.width == 224 * (2 + len(HEADS))
        pixels = np.asarray(picture.convert("RGB"))
    assert pixels[60:260, 224:448].std() > 10  # the attention panel holds a picture, not a blank


# ---------------------------------------------------------------------------------------------
# The label is drawn in one known region: the top-right quadrant holds a square of the class's
# colour, the other three quadrants squares of random class colours. Only a model that looks
# top-right can tell the class, so its attention and Grad-CAM should peak in grid cell (0, 1)
# of the 2 x 2 map (chance: 1 in 4; a map with rows and columns swapped would point at (1, 0)).
# ---------------------------------------------------------------------------------------------
COLOURS = np.array([[230, 30, 30], [30, 200, 30], [40, 40, 230]], np.float32)
SIDE, SQUARE = 48, 12


def region_task(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n normalised (3, 48, 48) images on noise and their labels (the colour drawn top-right)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(128, 40, (n, SIDE, SIDE, 3)).clip(0, 255).astype(np.float32)
    labels = rng.integers(0, len(COLOURS), n)
    half = SIDE // 2
    for i in range(n):
        for quadrant, (top, left) in enumerate([(0, half), (0, 0), (half, 0), (half, half)]):
            colour = labels[i] if quadrant == 0 else rng.integers(0, len(COLOURS))
            r, c = top + rng.integers(0, half - SQUARE + 1), left + rng.integers(0, half - SQUARE + 1)
            x[i, r:r + SQUARE, c:c + SQUARE] = COLOURS[colour]
    return torch.tensor((x / 255 - 0.5) / 0.25).permute(0, 3, 1, 2).contiguous(), torch.tensor(labels)


@pytest.mark.slow
def test_a_model_trained_where_the_label_is_drawn_looks_there():
    """A tiny model trained with its backbone frozen (as --freeze-backbone; the backbone's maps
    are computed once, so 400 steps take seconds on a CPU): both maps peak top-right far more
    often than the 25 % of chance."""
    torch.manual_seed(0)
    model = CNNRNNClassifier("resnet18", num_classes={"colour": 3}, image_size=SIDE, proj_dim=16, rnn_hidden=16,
                             rnn_layers=1, head_dropout=0.0, attention_pool="linear")
    images, labels = region_task(1024, seed=0)
    model.eval()
    with torch.no_grad():
        fmaps = model.backbone(images)
    optimizer = torch.optim.AdamW(model.new_parameters(), lr=3e-3)
    model.train()
    model.backbone.eval()
    generator = torch.Generator().manual_seed(0)
    for _ in range(400):
        batch = torch.randint(0, len(images), (64,), generator=generator)
        loss = torch.nn.functional.cross_entropy(model.classify(model.fuse(fmaps[batch])[0])["colour"], labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    test_images, test_labels = region_task(200, seed=1)
    expl = explain(model, test_images)
    assert (expl.predicted["colour"] == test_labels).float().mean() > 0.9  # it did learn the task
    attention = np.mean([peak(expl.attention[i]) == (0, 1) for i in range(200)])
    cam = np.mean([peak(expl.gradcam["colour"][i]) == (0, 1) for i in range(200)])
    # 200 images: chance would give 0.25 +- 0.03; measured 0.82 and 0.50
    assert attention > 0.6 and cam > 0.4, (attention, cam)
