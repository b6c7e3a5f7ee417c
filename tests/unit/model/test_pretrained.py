"""ImageNet weights by default: downloaded the torchvision way into the torch hub cache (from a
local HTTP server here), read from the cache afterwards, and one clear line when they cannot be had."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
from pathlib import Path

import pytest
import torch
import torchvision

from tests.support.training import free_port
from wikiart.model import backbones
from wikiart.model.backbones import PretrainedWeightsError, cached_weights_path
from wikiart.config.options import ModelConfig
from wikiart.model.classifier import from_config

CLASSES = {"genre": ["landscape", "portrait", "still_life"]}
SMALL = dict(backbone="resnet18", proj_dim=8, rnn_hidden=4, rnn_layers=1)


@pytest.fixture
def torch_home(tmp_path, monkeypatch) -> Path:
    """TORCH_HOME at an empty folder, honoured as in a fresh process (torch.hub.set_dir, which
    another test may have called, would override it)."""
    home = tmp_path / "torch"
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    return home


class _Server(http.server.ThreadingHTTPServer):
    requests: list[str]
    truncate = False     # send half the file after announcing all of it, then hang up


class _Handler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self):
        self.server.requests.append(self.path)
        if not self.server.truncate:
            return super().do_GET()
        body = (Path(self.directory) / self.path.lstrip("/")).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2])
        self.close_connection = True

    def log_message(self, *args):  # keep the test output clean
        pass


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Path:
    """resnet18 weights named as torchvision names them: <model>-<first 8 hex of SHA-256>.pth."""
    folder = tmp_path_factory.mktemp("served")
    torch.manual_seed(11)
    tmp = folder / "weights.tmp"
    torch.save(torchvision.models.resnet18().state_dict(), tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    return tmp.rename(folder / f"resnet18-{digest[:8]}.pth")


@pytest.fixture
def server(served):
    httpd = _Server(("127.0.0.1", 0), functools.partial(_Handler, directory=str(served.parent)))
    httpd.requests = []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _serve_as_imagenet_weights(monkeypatch, url: str) -> None:
    """The one seam: where the weights live. Probe, download, cache and load are the real code."""
    monkeypatch.setattr(backbones, "imagenet_weights_url", lambda name: url)


def test_weights_are_downloaded_into_the_torchvision_cache_once(torch_home, served, server, monkeypatch):
    url = f"http://127.0.0.1:{server.server_address[1]}/{served.name}"
    _serve_as_imagenet_weights(monkeypatch, url)
    assert ModelConfig().pretrained  # the seed starts from ImageNet weights: so do we, by default

    model = from_config(ModelConfig(**SMALL), CLASSES, 64)
    cached = torch_home / "hub" / "checkpoints" / served.name
    assert cached_weights_path("resnet18") == cached
    assert cached.read_bytes() == served.read_bytes()
    assert sorted(p.name for p in cached.parent.iterdir()) == [served.name]  # no temp file left
    reference = torch.load(served, weights_only=True)
    got = model.backbone.state_dict()
    assert len(got) > 100 and all(torch.equal(got[k], reference[k]) for k in got)
    assert server.requests == [f"/{served.name}"]

    again = from_config(ModelConfig(**SMALL), CLASSES, 64)  # from the cache, the server not asked
    assert torch.equal(again.backbone.layer4[1].conv2.weight, reference["layer4.1.conv2.weight"])
    assert server.requests == [f"/{served.name}"]


@pytest.mark.parametrize("failure", ["truncated", "wrong-hash"])
def test_a_failed_download_leaves_nothing_in_the_cache(failure, torch_home, served, server, monkeypatch):
    name = served.name
    if failure == "wrong-hash":  # torchvision's check: the name's hash must be the content's
        name = "resnet18-00000000.pth"
        (served.parent / name).write_bytes(served.read_bytes())
    server.truncate = failure == "truncated"
    _serve_as_imagenet_weights(monkeypatch, f"http://127.0.0.1:{server.server_address[1]}/{name}")
    with pytest.raises(PretrainedWeightsError, match="could not be downloaded") as err:
        from_config(ModelConfig(**SMALL), CLASSES, 64)
    # urllib takes a cut-short body for a complete one; the SHA-256 in the file name is what catches it
    assert "invalid hash value" in str(err.value)
    assert server.requests == [f"/{name}"]
    assert list((torch_home / "hub" / "checkpoints").iterdir()) == []


def test_unreachable_host_is_one_line_naming_url_path_and_options(torch_home, monkeypatch):
    url = f"http://127.0.0.1:{free_port()}/resnet18-f37072fd.pth"  # nothing listens there
    _serve_as_imagenet_weights(monkeypatch, url)
    with pytest.raises(PretrainedWeightsError) as err:
        from_config(ModelConfig(**SMALL), CLASSES, 64)
    message = str(err.value)
    assert "\n" not in message and "Connection refused" in message
    cache = torch_home / "hub" / "checkpoints"
    for part in (url, str(cache / "resnet18-f37072fd.pth"), "--pretrained-path FILE", "--no-pretrained"):
        assert part in message
    assert not cache.exists() or list(cache.iterdir()) == []


def test_no_pretrained_and_a_local_file_never_download(torch_home, monkeypatch, tmp_path):
    _serve_as_imagenet_weights(monkeypatch, f"http://127.0.0.1:{free_port()}/resnet18-f37072fd.pth")
    torch.manual_seed(0)
    random = from_config(ModelConfig(pretrained=False, **SMALL), CLASSES, 64)
    torch.manual_seed(0)
    assert torch.equal(random.backbone.conv1.weight, torchvision.models.resnet18().conv1.weight)
    file = tmp_path / "local.pth"
    state = torchvision.models.resnet18().state_dict()
    torch.save(state, file)
    local = from_config(ModelConfig(pretrained_path=str(file), **SMALL), CLASSES, 64)
    assert torch.equal(local.backbone.conv1.weight, state["conv1.weight"])
    assert not (torch_home / "hub").exists()
