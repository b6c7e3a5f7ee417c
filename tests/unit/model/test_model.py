"""CNNRNNClassifier: shapes, gradient flow, feature paths, hub round trip, local ImageNet weights
(downloading them: tests/unit/model/test_pretrained.py)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import torchvision
from safetensors.torch import load_file, save_file
from torch import nn

from wikiart.model.backbones import PretrainedWeightsError, cached_weights_path
from wikiart.config.options import ModelConfig
from wikiart.model.classifier import CNNRNNClassifier, from_config

CLASSES = {"genre": ["landscape", "portrait", "still_life"], "style": ["Baroque", "Cubism"]}
SMALL = dict(proj_dim=16, rnn_hidden=8, rnn_layers=2)


def small_model(backbone: str = "resnet18", **kwargs) -> CNNRNNClassifier:
    torch.manual_seed(0)
    return CNNRNNClassifier(backbone, class_names=CLASSES, image_size=64, **{**SMALL, **kwargs})


@pytest.mark.parametrize("backbone", [
    "resnet18",
    pytest.param("resnet34", marks=pytest.mark.slow),
    "convnext_tiny",
    "efficientnet_v2_s",
    pytest.param("swin_t", marks=pytest.mark.slow),
])
def test_shapes_and_gradients_reach_every_parameter(backbone):
    model = CNNRNNClassifier(backbone, class_names=CLASSES, image_size=64).train()
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64)
    out = model(x)
    assert set(out) == {"genre", "style"}
    assert out["genre"].shape == (2, 3) and out["style"].shape == (2, 2)
    assert model.embed_dim == model.feature_channels + 4 * 256
    sum(o.square().sum() for o in out.values()).backward()
    names = dict(model.named_parameters())
    no_grad = [n for n, p in names.items() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not no_grad, f"no or non-finite gradient for {no_grad[:5]}"
    # the gradient must reach the very first layer and both GRUs, not just exist
    first = model.stem_parameters()[0]
    for p in (first, names["row_rnn.weight_ih_l0"], names["col_rnn.weight_hh_l1_reverse"], names["proj.0.weight"]):
        assert p.grad.abs().sum() > 0


def test_resnet50_keeps_the_12x12_map_at_384px():
    model = CNNRNNClassifier("resnet50", num_classes={"genre": 10}).eval()
    with torch.no_grad():
        fmap = model.backbone(torch.zeros(1, 3, 384, 384))
    assert fmap.shape == (1, 2048, 12, 12)
    assert model.embed_dim == 2048 + 2 * 512


def test_no_rnn_ablation_is_gap_only():
    model = small_model(use_rnn=False).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = model.embed(x)
        gap = model.backbone(x).mean(dim=(2, 3))
    assert feats.shape == (2, 512) and torch.allclose(feats, gap)
    assert not any(n.startswith(("proj", "row_", "col_")) for n, _ in model.named_parameters())
    assert {id(p) for p in model.new_parameters()} == {id(p) for p in model.heads.parameters()}
    assert model(x)["genre"].shape == (2, 3)


def test_forward_is_heads_of_embed_in_eval_mode():
    model = small_model().eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        out, feats = model(x), model.embed(x)
        for task, head in model.heads.items():
            assert torch.allclose(out[task], head(feats), atol=1e-6)
        assert torch.equal(model.classify(feats)["style"], out["style"])


def test_rows_and_columns_are_scanned_along_the_right_axes():
    """Replace the backbone by identity and recompute the row/column branches by hand on a 3x5 map."""
    model = small_model().eval()
    model.backbone = nn.Identity()
    fmap = torch.randn(2, model.feature_channels, 3, 5)
    with torch.no_grad():
        feats = model.embed(fmap)
        proj = model.proj(fmap)
        expect_rows, expect_cols = [], []
        for b in range(2):
            rows = torch.stack([model.row_rnn(proj[b, :, i, :].T[None])[0].mean(1)[0] for i in range(3)])
            cols = torch.stack([model.col_rnn(proj[b, :, :, j].T[None])[0].mean(1)[0] for j in range(5)])
            expect_rows.append(model.row_pool(rows[None])[0])
            expect_cols.append(model.col_pool(cols[None])[0])
    c = model.feature_channels
    assert torch.allclose(feats[:, :c], fmap.mean(dim=(2, 3)), atol=1e-6)
    assert torch.allclose(feats[:, c:c + 16], torch.stack(expect_rows), atol=1e-5)
    assert torch.allclose(feats[:, c + 16:], torch.stack(expect_cols), atol=1e-5)


def test_parameter_groups_split_the_model():
    model = small_model()
    backbone = {id(p) for p in model.backbone_parameters()}
    new = {id(p) for p in model.new_parameters()}
    assert not backbone & new
    assert backbone | new == {id(p) for p in model.parameters()}
    stem = {id(p) for p in model.stem_parameters()}
    expected = {id(model.backbone.conv1.weight), id(model.backbone.bn1.weight), id(model.backbone.bn1.bias)}
    assert stem == expected


def test_unknown_backbone_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown backbone 'resnet51'.*resnet50"):
        CNNRNNClassifier("resnet51", num_classes={"genre": 3})
    with pytest.raises(ValueError, match="no convolutional feature map"):
        CNNRNNClassifier("shufflenet_v2_x0_5", num_classes={"genre": 3})


def test_class_names_must_match_counts():
    with pytest.raises(ValueError, match="2 class names but num_classes=3"):
        CNNRNNClassifier("resnet18", num_classes={"genre": 3}, class_names={"genre": ["a", "b"]})


def test_save_pretrained_round_trip(tmp_path):
    model = small_model().eval()
    model.save_pretrained(tmp_path)
    files = {p.name for p in tmp_path.iterdir()}
    assert {"config.json", "model.safetensors"} <= files
    assert not files & {"pytorch_model.bin", "model.pt"}
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["class_names"] == CLASSES and config["num_classes"] == {"genre": 3, "style": 2}
    assert config["backbone"] == "resnet18" and config["image_size"] == 64 and len(config["mean"]) == 3
    loaded = CNNRNNClassifier.from_pretrained(tmp_path).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a, b = model(x), loaded(x)
    assert all(torch.equal(a[t], b[t]) for t in a)
    assert loaded.class_names_dict() == CLASSES and loaded.mean == model.mean


def test_the_eval_resize_travels_in_config_json_to_a_model_loaded_without_its_run(tmp_path, monkeypatch):
    from wikiart.model import load as evaluation_checkpoint
    small_model(eval_resize=72).save_pretrained(tmp_path / "pushed")
    assert json.loads((tmp_path / "pushed" / "config.json").read_text())["eval_resize"] == 72
    # A Hub repo id: from_pretrained downloads this very folder (no run config.json beside it).
    monkeypatch.setattr(evaluation_checkpoint, "_from_pretrained",
                        lambda name: CNNRNNClassifier.from_pretrained(tmp_path / "pushed"))
    loaded = evaluation_checkpoint.load_model("painter/wikiart-genre")
    assert loaded.kind == "hub" and loaded.eval_resize == 72
    data = evaluation_checkpoint.eval_data_config(loaded, "shards", batch_size=4, workers=0)
    assert data.eval_resize == 72 and data.image_size == 64
    assert CNNRNNClassifier("resnet18", class_names=CLASSES).eval_resize is None  # default 13/12 of the size


def test_from_pretrained_is_strict(tmp_path):
    """A checkpoint missing a tensor must fail, not keep a randomly initialised one."""
    small_model().save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    del state["heads.style.bias"]
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(RuntimeError, match="heads.style.bias"):
        CNNRNNClassifier.from_pretrained(tmp_path)


def test_from_config_honours_the_cli_fields():
    cfg = ModelConfig(backbone="resnet18", pretrained=False, proj_dim=12, rnn_hidden=6, rnn_layers=1,
                      head_dropout=0.1, rnn=True)
    model = from_config(cfg, CLASSES, image_size=48)
    assert model.proj[0].out_channels == 12 and model.row_rnn.hidden_size == 6
    assert model.row_rnn.num_layers == 1 and model.dropout.p == 0.1 and model.image_size == 48
    assert model.embed_dim == 512 + 4 * 6
    assert not from_config(ModelConfig(backbone="resnet18", pretrained=False, rnn=False), CLASSES, 48).use_rnn


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    """An empty torch hub cache, and no way to download (these tests must never need to)."""
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))

    def no_network(*args, **kwargs):
        raise AssertionError("tried to download")
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    yield tmp_path / "hub"
    torch.hub.set_dir(old)


def test_missing_pretrained_path_is_an_error_not_a_download(empty_hub):
    with pytest.raises(PretrainedWeightsError, match="nope.pth: file not found") as err:
        from_config(ModelConfig(backbone="resnet18", pretrained_path=str(empty_hub / "nope.pth")), CLASSES, 64)
    assert isinstance(err.value, RuntimeError) and not empty_hub.exists()


def test_pretrained_from_local_file_and_from_cache(empty_hub, tmp_path):
    torch.manual_seed(123)
    reference = torchvision.models.resnet18()
    file = tmp_path / "resnet18-imagenet.pth"
    torch.save(reference.state_dict(), file)
    model = from_config(ModelConfig(backbone="resnet18", pretrained=True, pretrained_path=str(file), **SMALL),
                        CLASSES, 64)
    for name in ("conv1.weight", "bn1.running_var", "layer4.1.conv2.weight"):
        assert torch.equal(model.backbone.state_dict()[name], reference.state_dict()[name])

    cached = cached_weights_path("resnet18")
    assert cached.parent == empty_hub / "checkpoints"
    cached.parent.mkdir(parents=True)
    shutil.copy(file, cached)
    from_cache = from_config(ModelConfig(backbone="resnet18", pretrained=True, **SMALL), CLASSES, 64)
    assert torch.equal(from_cache.backbone.layer3[0].conv1.weight, reference.layer3[0].conv1.weight)


def test_pretrained_file_of_another_model_is_rejected(tmp_path):
    file = tmp_path / "other.pth"
    torch.save({"features.0.weight": torch.zeros(3)}, file)
    with pytest.raises(PretrainedWeightsError, match="does not hold 'resnet18' weights"):
        from_config(ModelConfig(backbone="resnet18", pretrained_path=str(file), **SMALL), CLASSES, 64)
