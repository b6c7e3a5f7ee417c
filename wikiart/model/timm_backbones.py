"""timm backbones (`--backbone timm/NAME`): the last feature map of a CNN, or a ViT's patch tokens
as an H x W grid, so the projection, row/column GRUs, attention pooling and heads work unchanged.

The grid comes from timm's own API: `forward_intermediates(x, indices=1, norm=True,
intermediates_only=True)` returns the final stage as (B, C, H, W) for every family timm has
(CNNs, Swin, ViTs), a ViT's class and register tokens left out; `prune_intermediate_layers`
removes the classifier head first, so no parameter goes unused (DDP would refuse one).

Preprocessing (mean, std, interpolation) and the input constraint (a ViT's or Swin's patch size)
come from timm's pretrained config of the name; ViT-like models are built for the run's image
size (`img_size`), so their position embeddings fit it (timm resamples pretrained ones).

Pretrained weights are timm's: the Hugging Face Hub repo of the pretrained config
(`timm/convnext_base.fb_in22k_ft_in1k`), downloaded into the Hub cache by `huggingface_hub` when
absent, and read from there (or from --pretrained-path) by timm's loader with the model's own
checkpoint filter. `import timm` costs seconds, so it happens only when a timm name is asked for.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..runtime.netprobe import unreachable

PREFIX = "timm/"
EXAMPLES = ("timm/convnext_base.fb_in22k_ft_in1k", "timm/vit_large_patch14_dinov2.lvd142m",
            "timm/vit_large_patch14_clip_224.openai", "timm/swin_base_patch4_window12_384")
# timm's default file first, as its own loader tries them (load_state_dict_from_hf).
HUB_FILES = ("model.safetensors", "pytorch_model.bin")
INTERPOLATIONS = ("bilinear", "bicubic")


class PretrainedWeightsError(RuntimeError):
    """Pretrained weights could not be had (not cached, no download), or the file does not fit the
    backbone (torchvision's and timm's alike; `wikiart.model.backbones` re-exports it)."""


def is_timm(name: str) -> bool:
    return name.startswith(PREFIX)


def model_name(name: str) -> str:
    """`timm/convnext_atto.d2_in1k` -> `convnext_atto.d2_in1k` (architecture.tag, as timm takes it)."""
    return name[len(PREFIX):]


def pretrained_cfg(name: str) -> Any:
    """timm's pretrained config of `timm/NAME` (registry metadata, no download); ValueError for
    a name timm does not know."""
    import timm
    from timm.models import get_pretrained_cfg, split_model_name_tag

    arch, tag = split_model_name_tag(model_name(name))
    if not timm.is_model(arch):
        raise ValueError(f"unknown timm backbone {name!r}: timm {timm.__version__} has no model {arch!r} "
                         f"(list them with timm.list_models('*pattern*')); e.g. {', '.join(EXAMPLES)}")
    if tag and f"{arch}.{tag}" not in timm.list_pretrained(f"{arch}.*"):
        raise ValueError(f"timm backbone {name!r}: {arch!r} has no weights tagged {tag!r}; its tags: "
                         f"{', '.join(timm.list_pretrained(f'{arch}.*')) or 'none'}")
    cfg = get_pretrained_cfg(model_name(name))
    if cfg is None:
        raise ValueError(f"timm backbone {name!r} has no pretrained config")
    return cfg


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """What the images a backbone was trained on looked like."""
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str


def preprocessing(name: str) -> Preprocessing:
    cfg = pretrained_cfg(name)
    interpolation = cfg.interpolation if cfg.interpolation in INTERPOLATIONS else "bicubic"
    return Preprocessing(tuple(map(float, cfg.mean)), tuple(map(float, cfg.std)), interpolation)


class TimmFeatureMap(nn.Module):
    """A timm model without its head: (B, 3, H, W) -> its final feature map (B, C, h, w)."""

    def __init__(self, model: nn.Module, input_multiple: int, image_size: int):
        super().__init__()
        self.model = model
        self.image_size = image_size  # what a ViT's position embeddings were built for
        self.input_multiple = input_multiple  # image sides must be multiples of it (1: any size)
        info = model.feature_info[-1]
        self.channels, self.reduction = int(info["num_chs"]), int(info["reduction"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_intermediates(x, indices=1, norm=True, intermediates_only=True)[-1]

    def stem_modules(self) -> list[nn.Module]:
        """The top-level children timm's group matcher calls the stem (ResNet conv1/bn1, ConvNeXt
        stem, a ViT's patch_embed): the analogue of the seed's frozen conv1/bn1."""
        import re
        pattern = re.compile(self.model.group_matcher(coarse=True)["stem"])
        stem = [m for n, m in self.model.named_children() if pattern.match(n) and any(True for _ in m.parameters())]
        return stem or [next(m for _, m in self.model.named_children() if any(True for _ in m.parameters()))]

    def layer_ids(self) -> tuple[dict[str, int], int]:
        """({parameter name: layer}, number of layers), timm's layer-decay grouping (its
        `param_groups_layer_decay`): stem 0, then each block, the final norm, and on top the layer
        of the pruned head, where the new modules (projection, GRUs, heads) now sit."""
        from timm.models import group_parameters
        layers = group_parameters(self.model, self.model.group_matcher(coarse=False), reverse=True)
        top = max(layers.values())
        return {f"model.{n}": layers.get(n, top) for n, _ in self.model.named_parameters()}, top + 2


def _patch_size(model: nn.Module) -> int:
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    if patch is None:
        return 1
    return int(patch[0] if isinstance(patch, (tuple, list)) else patch)


def _create(name: str, image_size: int, **kwargs: Any) -> nn.Module:
    """timm.create_model, built for `image_size` when the family has a fixed input size (ViT, Swin)."""
    import timm
    try:
        return timm.create_model(model_name(name), img_size=image_size, **kwargs)
    except TypeError as exc:
        if "img_size" not in str(exc):
            raise
    return timm.create_model(model_name(name), **kwargs)  # a CNN: any size


def check_image_size(name: str, image_size: int, multiple: int, reduction: int) -> None:
    if image_size % multiple:
        below, above = image_size - image_size % multiple, image_size - image_size % multiple + multiple
        raise ValueError(f"--image-size {image_size}: backbone {name!r} cuts images into {multiple}-px patches; "
                         f"use a multiple of {multiple} (e.g. {below or above} or {above})")
    if image_size < reduction:
        raise ValueError(f"--image-size {image_size}: backbone {name!r} reduces images {reduction}x; "
                         f"use at least {reduction} px")


def build(name: str, image_size: int, weights_file: str | os.PathLike | None = None) -> TimmFeatureMap:
    """The headless backbone for `image_size`: random weights, or `weights_file`'s (a timm or Hub
    checkpoint, read by timm's loader with the model's checkpoint filter)."""
    pretrained_cfg(name)  # a clear error for an unknown name
    kwargs: dict[str, Any] = {}
    if weights_file is not None:
        kwargs = dict(pretrained=True, pretrained_cfg_overlay=dict(file=str(weights_file)))
    try:
        model = _create(name, image_size, **kwargs)
    except (RuntimeError, KeyError, ValueError, OSError) as exc:
        if weights_file is None:
            raise ValueError(f"backbone {name!r} cannot be built for --image-size {image_size}: "
                             f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
        raise PretrainedWeightsError(f"{weights_file} does not hold weights timm can load into {name!r}: "
                               f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
    model.prune_intermediate_layers(indices=1, prune_norm=False, prune_head=True)
    backbone = TimmFeatureMap(model, _patch_size(model), image_size)
    check_image_size(name, image_size, backbone.input_multiple, backbone.reduction)
    return backbone


# ----------------------------------------------------------------------------------------------
# Weights from the Hugging Face Hub
# ----------------------------------------------------------------------------------------------

def hub_source(name: str) -> tuple[str, str | None]:
    """(repo id, revision) of the pretrained weights of `name` on the Hub."""
    cfg = pretrained_cfg(name)
    if not cfg.hf_hub_id:
        raise PretrainedWeightsError(f"timm has no Hugging Face Hub weights for {name!r} (only {cfg.url or 'none'}); "
                               f"pass --pretrained-path FILE or --no-pretrained")
    repo, _, revision = cfg.hf_hub_id.partition("@")
    return repo, revision or None


def _hub_files(name: str) -> tuple[str, ...]:
    override = pretrained_cfg(name).hf_hub_filename
    return (override,) if override else HUB_FILES


def cached_weights_file(name: str) -> Path | None:
    """The weights file of `name` already in the Hugging Face cache, None when absent (no network)."""
    from huggingface_hub import try_to_load_from_cache
    repo, revision = hub_source(name)
    for filename in _hub_files(name):
        found = try_to_load_from_cache(repo, filename, revision=revision)
        if isinstance(found, str):
            return Path(found)
    return None


def download_weights(name: str) -> Path:
    """Download the weights of `name` into the Hugging Face cache with `hf_hub_download` (the
    endpoint, token, cache and offline mode of huggingface_hub's own settings); a failure is one
    PretrainedWeightsError line naming the repo and the file to fetch."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    repo, revision = hub_source(name)
    files = _hub_files(name)
    reason = None if constants.HF_HUB_OFFLINE else unreachable(constants.ENDPOINT)
    if reason is None:
        for filename in files:
            try:
                return Path(hf_hub_download(repo, filename, revision=revision))
            except LocalEntryNotFoundError as exc:  # offline mode (an EntryNotFoundError too)
                reason = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
                break
            except EntryNotFoundError:
                reason = f"{repo} has no {filename}"
                continue  # timm's loader falls back to the next file too
            except Exception as exc:  # noqa: BLE001 - offline mode, HTTP, network, auth: one line
                reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
                break
    url = f"{constants.ENDPOINT}/{repo}/resolve/{revision or 'main'}/{files[0]}"
    raise PretrainedWeightsError(
        f"pretrained weights for {name!r} are not in the Hugging Face cache and could not be downloaded "
        f"({' '.join(str(reason).split())}): fetch {files[0]} of the Hub repo {repo} ({url}), e.g. with "
        f"`hf download {repo} {files[0]}` where there is internet, into the cache "
        f"({constants.HF_HUB_CACHE}), or pass --pretrained-path FILE, or --no-pretrained to start from random weights")


def resolve_weights_file(name: str, path: str | os.PathLike | None = None) -> Path:
    """`path` as given (never downloads), else the Hub cache's file, downloaded when absent."""
    if path is not None:
        file = Path(path)
        if not file.is_file():
            raise PretrainedWeightsError(f"--pretrained-path {file}: file not found")
        return file
    return cached_weights_file(name) or download_weights(name)
