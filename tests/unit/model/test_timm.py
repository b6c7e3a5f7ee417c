"""timm backbones (`--backbone timm/NAME`), in process: the feature grid of CNNs, Swin and ViTs
(class and register tokens left out), the image-size check, timm's preprocessing in config.json
and identical from_pretrained logits, layer-wise lr decay, the model card. All weights are random
(timm's `test_*` models); nothing reaches the network. Hub downloads and train.py runs:
tests/integration/test_timm_training.py."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from timm.optim import param_groups_layer_decay

from wikiart.model import timm_backbones
from wikiart.model.classifier import CNNRNNClassifier
from wikiart.train.optim import param_groups
from wikiart.config.options import OptimConfig

def tiny(backbone: str, image_size: int, **kw) -> CNNRNNClassifier:
    return CNNRNNClassifier(backbone=backbone, num_classes={"genre": 3}, image_size=image_size, proj_dim=8,
                            rnn_hidden=8, rnn_layers=1, **kw)


@pytest.mark.parametrize("name, size, grid, channels", [
    ("timm/test_convnext", 64, 2, 64),             # CNN: its last stage, stride 32
    ("timm/test_resnet", 96, 3, 96),
    ("timm/test_vit", 48, 3, 64),                  # ViT: 48 / patch 16 = 3 x 3 patch tokens
    ("timm/swin_tiny_patch4_window7_224", 64, 2, 768),  # Swin: (B, H, W, C) inside, NCHW out
])
def test_cnn_swin_and_vit_give_a_spatial_grid_the_grus_read(name, size, grid, channels):
    model = tiny(name, size).eval()
    x = torch.randn(2, 3, size, size)
    assert model.backbone(x).shape == (2, channels, grid, grid)
    assert model.embed(x).shape == (2, channels + 4 * 8)  # pooled + row and column summaries
    assert tiny(name, size, use_rnn=False).eval().embed(x).shape == (2, channels)  # --no-rnn: pooled only


def test_vit_grid_is_the_patch_tokens_without_class_and_register_tokens():
    backbone = timm_backbones.build("timm/vit_small_patch14_reg4_dinov2.lvd142m", 28).eval()
    vit = backbone.model
    assert vit.num_prefix_tokens == 5  # 1 class + 4 register tokens
    seen = {}
    vit.blocks[-1].register_forward_hook(lambda m, i, out: seen.setdefault("tokens", out))
    x = torch.randn(2, 3, 28, 28)
    grid = backbone(x)
    tokens = vit.norm(seen["tokens"])                     # (2, 5 + 4, 384)
    assert tokens.shape[1] == 9 and grid.shape == (2, 384, 2, 2)
    want = tokens[:, 5:].reshape(2, 2, 2, 384).permute(0, 3, 1, 2)  # row-major patches -> (B, C, H, W)
    torch.testing.assert_close(grid, want)


def test_an_image_size_the_patch_size_does_not_divide_is_refused():
    with pytest.raises(ValueError, match="cuts images into 16-px patches; use a multiple of 16 .e.g. 32 or 48"):
        tiny("timm/test_vit", 40)
    with pytest.raises(ValueError, match="unknown timm backbone 'timm/no_such_net'"):
        tiny("timm/no_such_net", 32)


def test_config_json_records_timm_preprocessing_and_from_pretrained_gives_identical_logits(tmp_path):
    from wikiart.model.load import eval_data_config, load_model
    model = tiny("timm/test_vit", 32).eval()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    cfg = timm.models.get_pretrained_cfg("test_vit")
    assert config["backbone"] == "timm/test_vit" and config["interpolation"] == cfg.interpolation == "bicubic"
    assert config["mean"] == list(cfg.mean) == [0.5, 0.5, 0.5] and config["std"] == list(cfg.std)
    assert config["backbone_info"] == {"library": "timm", "input_multiple": 16, "feature_channels": 64,
                                       "feature_reduction": 16}
    loaded = load_model(str(tmp_path))
    x = torch.randn(3, 3, 32, 32)
    assert torch.equal(loaded.model(x)["genre"], model(x)["genre"])
    assert (loaded.model.mean, loaded.model.interpolation) == ((0.5, 0.5, 0.5), "bicubic")
    assert eval_data_config(loaded, "shards", 4, 0).interpolation == "bicubic"  # evaluate and predict resize so


def test_layer_decay_gives_each_vit_layer_timms_learning_rate_scale():
    model = tiny("timm/test_vit", 32)
    groups = param_groups(model, OptimConfig(backbone_lr=1e-3, layer_decay=0.75))
    lr_of = {id(p): g["base_lr"] for g in groups for p in g["params"]}
    # timm's own grouping of the whole ViT (head included, at the top layer like the final norm)
    full = timm.create_model("test_vit", img_size=32)
    name_of = {id(p): n for n, p in full.named_parameters()}
    scale_of = {name_of[id(p)]: group["lr_scale"]
                for group in param_groups_layer_decay(full, layer_decay=0.75) for p in group["params"]}
    for name, p in model.backbone.model.named_parameters():
        assert lr_of[id(p)] == pytest.approx(1e-3 * scale_of[name]), name
    assert {lr_of[id(p)] for p in model.new_parameters()} == {8e-4}
    vit = model.backbone.model
    stem, top_block = lr_of[id(vit.patch_embed.proj.weight)], lr_of[id(vit.blocks[-1].mlp.fc1.weight)]
    assert stem == min(lr_of.values()) and top_block == pytest.approx(1e-3 * 0.75) and stem < top_block
    with pytest.raises(ValueError, match="--layer-decay 0.75 needs a timm backbone"):
        param_groups(tiny("resnet18", 32), OptimConfig(layer_decay=0.75))


def test_model_card_names_the_timm_backbone_its_weights_and_resize_filter():
    from wikiart.hub.card import build_card
    model = tiny("timm/test_vit", 32, pretrained_weights="hf-hub:timm/test_vit.r160_in1k")
    card = str(build_card("me/vit-genre", model.hub_config(), run_config={"optim": {"freeze_backbone": True}}))
    assert "| backbone | timm/test_vit (started from hf-hub:timm/test_vit.r160_in1k) |" in card
    assert "| backbone frozen | the whole run (--freeze-backbone) |" in card
    assert "T.Resize(35, interpolation=T.InterpolationMode.BICUBIC)" in card
