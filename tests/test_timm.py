"""timm backbones (`--backbone timm/NAME`): the feature grid of CNNs, Swin and ViTs (class and
register tokens left out), timm's preprocessing in config.json, the image-size check, Hub weights
through a local HTTP server standing in for the Hub and offline, layer-wise lr decay, and real
train.py runs: 2-rank DDP with --freeze-backbone, an exact resume. All weights are random (timm's
`test_*` models of a few hundred thousand parameters); nothing reaches the network."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file
from timm.optim import param_groups_layer_decay

from test_train import ROOT, TINY, final_weights, run_train
from wikiart.formats import checkpoint as ckpt
from wikiart.model import timm_backbones
from wikiart.model.classifier import CNNRNNClassifier
from wikiart.train.optim import param_groups
from wikiart.config.options import OptimConfig

# TINY's model flags with a timm ViT of patch 16: 32 px is a 2 x 2 token grid.
TIMM_TINY = [*TINY, "--backbone", "timm/test_vit"]


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


# ----------------------------------------------------------------------------------------------
# Weights from the Hub: a local HTTP server stands in for it (HF_ENDPOINT), and offline mode
# ----------------------------------------------------------------------------------------------

class FakeHub(http.server.BaseHTTPRequestHandler):
    """Answers huggingface_hub's HEAD (metadata) and GET (file) of /REPO/resolve/REV/FILE."""
    files: dict[str, bytes] = {}
    seen: list[tuple[str, str]] = []

    def _answer(self, body: bool) -> None:
        path = self.path.split("?")[0]
        self.seen.append((self.command, path))
        data = self.files.get(path)
        if data is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("X-Repo-Commit", "a" * 40)
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def do_HEAD(self):  # noqa: N802 - http.server's names
        self._answer(False)

    def do_GET(self):  # noqa: N802
        self._answer(True)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_hub(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    FakeHub.files, FakeHub.seen = {}, []
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_pretrained_weights_are_downloaded_from_the_hub_into_its_cache_and_loaded(fake_hub, tmp_path):
    weights = timm.create_model("test_convnext").state_dict()  # a whole timm checkpoint, head included
    weights = {k: v + 1.0 if v.is_floating_point() else v for k, v in weights.items()}  # not a fresh init
    save_file(weights, str(tmp_path / "served.safetensors"))
    FakeHub.files["/timm/test_convnext.r160_in1k/resolve/main/model.safetensors"] = \
        (tmp_path / "served.safetensors").read_bytes()
    script = ("import sys; from safetensors.torch import save_file; from wikiart.config.options import ModelConfig\n"
              "from wikiart.model.classifier import CNNRNNClassifier as C\n"
              "m = C.from_config(ModelConfig(backbone='timm/test_convnext', proj_dim=8, rnn_hidden=8), "
              "{'genre': ['a', 'b']}, 64)\n"
              "save_file(m.backbone.model.state_dict(), sys.argv[1]); print(m.pretrained_weights)\n")
    env = {**os.environ, "HF_ENDPOINT": fake_hub, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "0",
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "got.safetensors")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "hf-hub:timm/test_convnext.r160_in1k"
    assert ("GET", "/timm/test_convnext.r160_in1k/resolve/main/model.safetensors") in FakeHub.seen
    got = load_file(str(tmp_path / "got.safetensors"))
    assert got and all(torch.equal(got[k], weights[k]) for k in got)  # every backbone tensor, from the file
    assert list((tmp_path / "hf" / "hub").glob("models--timm--test_convnext.r160_in1k/snapshots/*/model.safetensors"))


@pytest.mark.slow
@pytest.mark.parametrize("env, args, needle", [
    ({"HF_HUB_OFFLINE": "1"}, ["--backbone", "timm/test_convnext", "--pretrained"],
     "pretrained weights for 'timm/test_convnext' are not in the Hugging Face cache and could not be downloaded "
     "(LocalEntryNotFoundError"),
    ({}, ["--backbone", "timm/test_vit", "--image-size", "40"], "use a multiple of 16"),
])
def test_missing_weights_offline_and_a_bad_image_size_are_one_line_before_any_write(
        synthetic_shards, tmp_path, env, args, needle):
    out = tmp_path / "run"
    proc = run_train(["--shards", str(synthetic_shards), "--out", str(out), "--task", "genre", *TINY, *args],
                     check=False, env={**env, "HF_HOME": str(tmp_path / "hf")})
    assert proc.returncode == 1 and not out.exists()
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("train.py: error: ") and needle in line, proc.stderr[-2000:]
    if "Offline" in needle:
        assert "timm/test_convnext.r160_in1k" in line and "model.safetensors" in line and "--pretrained-path" in line


# ----------------------------------------------------------------------------------------------
# Real training runs
# ----------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_two_rank_ddp_with_freeze_backbone_keeps_the_backbone_bit_identical_and_trains_the_heads(
        synthetic_shards, tmp_path):
    # A BatchNorm backbone: eval mode matters (running statistics must not move either).
    start = timm.create_model("test_resnet").state_dict()
    save_file(start, str(tmp_path / "start.safetensors"))
    out = tmp_path / "frozen"
    proc = run_train(["--shards", str(synthetic_shards), "--out", str(out), "--task", "genre", "--workers", "1",
                      *TINY, "--backbone", "timm/test_resnet", "--image-size", "64", "--pretrained-path",
                      str(tmp_path / "start.safetensors"), "--freeze-backbone", "--max-steps", "4",
                      "--save-every", "2", "--keep-last", "2"], ranks=2)
    assert "--freeze-backbone: the pretrained backbone stays frozen" in proc.stdout
    step2, step4 = (load_file(str(p / "model.safetensors")) for p in sorted((out / "checkpoints").glob("step-*")))
    backbone = [k for k in step4 if k.startswith("backbone.model.")]
    assert any("running_mean" in k for k in backbone)
    for key in backbone:
        assert torch.equal(step4[key], start[key.removeprefix("backbone.model.")]), key
    assert not torch.equal(step2["heads.genre.weight"], step4["heads.genre.weight"])
    assert not torch.equal(step2["row_rnn.weight_hh_l0"], step4["row_rnn.weight_hh_l0"])
    config = json.loads((out / "best" / "config.json").read_text())
    assert config["pretrained_weights"] == "local file start.safetensors" and config["interpolation"] == "bilinear"


@pytest.mark.slow
def test_a_resumed_vit_run_with_layer_decay_and_ema_equals_the_uninterrupted_one(synthetic_shards, tmp_path):
    common = ["--shards", str(synthetic_shards), "--task", "genre", "--workers", "1", "--seed", "5", *TIMM_TINY,
              "--max-steps", "6", "--layer-decay", "0.75", "--ema-decay", "0.9"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_train([*common, "--out", str(straight)])
    proc = run_train([*common, "--out", str(resumed), "--stop-at-step", "3"], check=False)
    assert proc.returncode == 75, proc.stderr[-3000:]
    run_train([*common, "--out", str(resumed), "--resume", "auto"])
    a, b = final_weights(straight), final_weights(resumed)
    assert a.keys() == b.keys() and any(k.startswith("backbone.model.blocks.") for k in a)
    for name in a:
        assert torch.equal(a[name], b[name]), name
    _, _, optimizer, extra = ckpt.load_checkpoint(ckpt.latest_checkpoint(resumed))
    names = [g["name"] for g in optimizer["param_groups"]]
    assert names[0] == "new" and "backbone_layer0" in names and len(names) > 3
    run = json.loads((straight / "config.json").read_text())
    assert run["data"]["interpolation"] == "bicubic" and run["optim"]["layer_decay"] == 0.75


@pytest.mark.slow
def test_a_vit_trains_in_bf16_autocast_with_channels_last_inputs(synthetic_shards, tmp_path):
    """Two of the GPU fast paths, taken on the CPU for a timm ViT: bf16 autocast and channels_last
    inputs; the weights stay finite and config.json records both. (--compile with a timm ViT was
    run by hand, without falling back to eager: compiling on this CPU takes minutes.)"""
    out = tmp_path / "fast"
    run_train(["--shards", str(synthetic_shards), "--out", str(out), "--task", "genre", "--workers", "1",
               *TIMM_TINY, "--max-steps", "2", "--mixed-precision", "bf16", "--channels-last"])
    run = json.loads((out / "config.json").read_text())
    assert (run["train"]["mixed_precision"], run["model"]["channels_last"]) == ("bf16", True)
    assert all(torch.isfinite(t.float()).all() for t in final_weights(out).values())


def test_model_card_names_the_timm_backbone_its_weights_and_resize_filter():
    from wikiart.hub.card import build_card
    model = tiny("timm/test_vit", 32, pretrained_weights="hf-hub:timm/test_vit.r160_in1k")
    card = str(build_card("me/vit-genre", model.hub_config(), run_config={"optim": {"freeze_backbone": True}}))
    assert "| backbone | timm/test_vit (started from hf-hub:timm/test_vit.r160_in1k) |" in card
    assert "| backbone frozen | the whole run (--freeze-backbone) |" in card
    assert "T.Resize(35, interpolation=T.InterpolationMode.BICUBIC)" in card
