"""Backbones truncated before pooling, and their pretrained weights: torchvision's (below) and
timm's (`--backbone timm/NAME`, `wikiart.model.timm_backbones`); the functions here dispatch.

The truncated backbone is an `nn.Sequential` of the torchvision model's own top-level children
under their own names (`conv1`, ..., `layer4` or `features`), so its state-dict keys are a
subset of the torchvision ones and ImageNet weights load by name with no key mapping.

The weights are downloaded the way torchvision does it (same URL, same file in
`$TORCH_HOME/hub/checkpoints`, same SHA-256 check, so torchvision and we share the cache), but
never hang on an offline node: the host is probed first, and a failure is one line saying
where to put the file by hand.
"""

from __future__ import annotations

import http.client
import os
import socket
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn

from . import timm_backbones
from .timm_backbones import PretrainedWeightsError
from ..runtime.netprobe import unreachable
from ..runtime.ranks import raise_any_on_every_rank

# Top-level children that produce the feature map, per model family, in forward order.
_RESNET_LIKE = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
_REGNET_LIKE = ("stem", "trunk_output")
_SWIN_LIKE = ("features", "norm", "permute")  # features are (B, H, W, C); `permute` makes them (B, C, H, W)
_FEATURES = ("features",)
EXAMPLES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "convnext_tiny",
            "efficientnet_v2_s", "resnext50_32x4d", "regnet_y_800mf", "mobilenet_v3_large")
# A download that receives nothing for this long fails (urllib's default is to wait forever).
DOWNLOAD_STALL_S = 60.0


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# torchvision's own transforms resize bilinearly (antialiased); the seed does too.
TORCHVISION_PREPROCESSING = timm_backbones.Preprocessing(IMAGENET_MEAN, IMAGENET_STD, "bilinear")


def preprocessing(name: str) -> timm_backbones.Preprocessing:
    """Mean, std and resize filter of the images `name` was pretrained on (timm's pretrained
    config for timm names; ImageNet's statistics and bilinear for torchvision's)."""
    return timm_backbones.preprocessing(name) if timm_backbones.is_timm(name) else TORCHVISION_PREPROCESSING


def classification_models() -> list[str]:
    return sorted(torchvision.models.list_models(module=torchvision.models))


def _children_for(model: nn.Module, name: str) -> tuple[str, ...]:
    for names in (_RESNET_LIKE, _REGNET_LIKE, _SWIN_LIKE, _FEATURES):
        if all(hasattr(model, n) for n in names):
            return names
    raise ValueError(f"backbone {name!r} has no convolutional feature map this model can use "
                     f"(no conv1..layer4, stem/trunk_output or .features); try one of {list(EXAMPLES)}")


def weights_description(name: str, path: str | os.PathLike | None = None) -> str:
    """Where a backbone's pretrained weights come from, for config.json and the model card."""
    if path is not None:
        return f"local file {Path(path).name}"
    if timm_backbones.is_timm(name):
        repo, revision = timm_backbones.hub_source(name)
        return f"hf-hub:{repo}" + (f"@{revision}" if revision else "")
    try:
        return f"torchvision:{torchvision.models.get_model_weights(name).DEFAULT}"
    except (ValueError, KeyError, AttributeError):
        return "torchvision: none"


def build_backbone(name: str, image_size: int = 224) -> tuple[nn.Module, int, list[nn.Module]]:
    """Randomly initialised truncated backbone -> (module, output channels, stem modules). A timm
    backbone is built for `image_size` (ViT position embeddings) and refuses a size it cannot take."""
    if timm_backbones.is_timm(name):
        backbone = timm_backbones.build(name, image_size)
        return backbone, backbone.channels, backbone.stem_modules()
    available = classification_models()
    if name not in available:
        raise ValueError(f"unknown backbone {name!r}; use a torchvision classification model such as "
                         f"{', '.join(EXAMPLES)} (all: {', '.join(available)})")
    full = torchvision.models.get_model(name, weights=None)
    names = _children_for(full, name)
    backbone = nn.Sequential(OrderedDict((n, getattr(full, n)) for n in names))
    if names == _RESNET_LIKE:
        stem = [backbone.conv1, backbone.bn1]
    elif names == _REGNET_LIKE:
        stem = [backbone.stem]
    else:
        stem = [backbone.features[0]]
    return backbone, _output_channels(backbone, name), stem


@torch.no_grad()
def _output_channels(backbone: nn.Module, name: str) -> int:
    was_training = backbone.training
    backbone.eval()  # a dummy forward must not touch BatchNorm running stats
    out = backbone(torch.zeros(1, 3, 64, 64))
    backbone.train(was_training)
    if out.ndim != 4:
        raise ValueError(f"backbone {name!r} does not output a (B, C, H, W) feature map "
                         f"(got shape {tuple(out.shape)}); try one of {list(EXAMPLES)}")
    return int(out.shape[1])


def imagenet_weights_url(name: str) -> str:
    """URL of the default torchvision ImageNet weights of `name`."""
    try:
        return torchvision.models.get_model_weights(name).DEFAULT.url
    except (ValueError, KeyError, AttributeError) as exc:
        raise PretrainedWeightsError(f"torchvision has no ImageNet weights for {name!r}") from exc


def cached_weights_path(name: str) -> Path:
    """Where `torch.hub.load_state_dict_from_url` (torchvision) keeps the weights of `name`."""
    filename = os.path.basename(urlparse(imagenet_weights_url(name)).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def resolve_weights_file(name: str, path: str | os.PathLike | None = None) -> Path:
    """The local weights file to load: `path` as given (never downloads), else the torch hub
    cache's file, downloaded into the cache when absent."""
    if path is not None:
        file = Path(path)
        if not file.is_file():
            raise PretrainedWeightsError(f"--pretrained-path {file}: file not found")
        return file
    file = cached_weights_path(name)
    if not file.is_file():
        download_imagenet_weights(name)
    return file


def download_imagenet_weights(name: str) -> Path:
    """Download the ImageNet weights of `name` into the torch hub cache; one-line
    PretrainedWeightsError when the host is unreachable or the download fails."""
    url, file = imagenet_weights_url(name), cached_weights_path(name)
    reason = unreachable(url) or _download(url, file)
    if reason:
        raise PretrainedWeightsError(
            f"ImageNet weights for {name!r} are not in the torch hub cache and could not be downloaded "
            f"({' '.join(reason.split())}): fetch {url} and put it at {file}, or pass --pretrained-path FILE, "
            f"or --no-pretrained to start from random weights")
    return file


def _download(url: str, file: Path) -> str | None:
    """torchvision's download (load_state_dict_from_url with check_hash=True): a temp file beside
    `file`, moved there only when its SHA-256 starts with the hash in the file name (every
    torchvision weights file has one), so a partial file never sits at `file` - urllib itself
    takes a body cut short for a complete one. Returns why it failed, None on success."""
    match = torch.hub.HASH_REGEX.search(file.name)
    sys.stderr.write(f"downloading {url} to {file}\n")
    # Process-wide, so only for the download: setup runs no other network work meanwhile.
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_STALL_S)
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(file), match.group(1) if match else None,
                                       progress=sys.stderr.isatty())
    except (OSError, RuntimeError, ValueError, http.client.HTTPException) as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        socket.setdefaulttimeout(previous)
    return None


def fetch_pretrained(model_cfg: Any, accelerator: Any) -> None:
    """Before the ranks build the model (ModelConfig `model_cfg`): the main process of each node
    downloads the ImageNet weights the run starts from when its cache lacks them (a node-local
    cache gets its own copy) while the other ranks wait, and a failure is raised on every rank,
    so none is left waiting at a collective."""
    name = model_cfg.backbone
    if not model_cfg.pretrained or model_cfg.pretrained_path:
        return  # a local file or random init: nothing to download
    if not timm_backbones.is_timm(name) and name not in classification_models():
        return  # a bad name fails in build_backbone
    resolve = timm_backbones.resolve_weights_file if timm_backbones.is_timm(name) else resolve_weights_file
    error = None
    if accelerator.is_local_main_process:
        try:
            resolve(name)
        except (PretrainedWeightsError, ValueError) as exc:
            error = exc
    raise_any_on_every_rank(accelerator, error)


def _read_state_dict(file: Path) -> dict[str, torch.Tensor]:
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file
        state = load_file(str(file))
    else:
        try:
            state = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several types for non-checkpoint files
            raise PretrainedWeightsError(f"{file}: not a readable PyTorch weights file ({exc})") from exc
    for key in ("state_dict", "model"):  # common wrappers around a plain state dict
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise PretrainedWeightsError(f"{file}: expected a state dict, got {type(state).__name__}")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_imagenet_weights(backbone: nn.Module, name: str, path: str | os.PathLike | None = None) -> Path:
    """Load torchvision ImageNet weights of `name` into a backbone from `build_backbone`.

    Reads `path`, else the torch hub cache (downloading into it when absent, see
    `resolve_weights_file`). Returns the file that was read. A timm backbone's weights come from
    the Hub cache (or `path`) through timm's own loader (`load_timm_weights`).
    """
    if timm_backbones.is_timm(name):
        return load_timm_weights(backbone, name, path)
    file = resolve_weights_file(name, path)
    state = _read_state_dict(file)
    wanted = backbone.state_dict()
    missing = [k for k in wanted if k not in state]
    if missing:
        raise PretrainedWeightsError(f"{file} does not hold {name!r} weights: {len(missing)} of "
                                     f"{len(wanted)} backbone tensors are missing (e.g. {missing[:3]})")
    bad = [k for k in wanted if state[k].shape != wanted[k].shape]
    if bad:
        raise PretrainedWeightsError(f"{file} does not hold {name!r} weights: shape mismatch for "
                                     f"{bad[:3]} (e.g. {tuple(state[bad[0]].shape)} vs "
                                     f"{tuple(wanted[bad[0]].shape)})")
    backbone.load_state_dict({k: state[k] for k in wanted}, strict=True)
    return file


def load_timm_weights(backbone: nn.Module, name: str, path: str | os.PathLike | None = None) -> Path:
    """timm's loader reads the file into a headless backbone built alike (its checkpoint filter
    resamples a ViT's position embeddings to the run's image size), whose tensors are then copied
    into `backbone`, so the modules (and the stem list pointing into them) stay the same."""
    file = timm_backbones.resolve_weights_file(name, path)
    image_size = getattr(backbone, "image_size", None)
    loaded = timm_backbones.build(name, image_size or 224, weights_file=file)
    try:
        backbone.load_state_dict(loaded.state_dict(), strict=True)
    except RuntimeError as exc:
        raise PretrainedWeightsError(f"{file} does not fit backbone {name!r}: {str(exc).splitlines()[0]}") from exc
    return file
