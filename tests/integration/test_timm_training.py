"""timm backbones through real processes: Hub weights downloaded from a local HTTP server standing
in for the Hub (HF_ENDPOINT), the offline and bad-size errors of train.py, 2-rank DDP with
--freeze-backbone, an exact resume with layer decay and EMA, bf16 with channels_last."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

from tests.support.training import ROOT, TINY, final_weights, run_train
from wikiart.formats import checkpoint as ckpt

# TINY's model flags with a timm ViT of patch 16: 32 px is a 2 x 2 token grid.
TIMM_TINY = [*TINY, "--backbone", "timm/test_vit"]


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
