"""CNN-RNN painting classifier: backbone map -> GAP + row/column BiGRUs with attention -> heads.

    image -> backbone (truncated before pooling) -> map (B, C, H, W)
      ├─ global average pool ............................................. (B, C)
      └─ 1x1 conv + BN + ReLU -> (B, P, H, W)
           ├─ each row a sequence over its columns -> BiGRU -> mean over steps -> attention over rows
           └─ each column a sequence over its rows -> BiGRU -> mean over steps -> attention over columns
    concat -> embed (B, C + 4 * rnn_hidden) -> dropout -> one linear head per task

The constructor takes only JSON-able values, so `save_pretrained` writes them to config.json
(with class names and preprocessing) and `from_pretrained` rebuilds the same model.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from .backbones import (IMAGENET_MEAN, IMAGENET_STD, build_backbone, load_imagenet_weights,  # noqa: F401
                        preprocessing, weights_description)
from .timm_backbones import is_timm
from ..config.options import ModelConfig


ATTENTION_POOLS = ("linear", "mlp")


class AttentionPool(nn.Module):
    """Softmax-weighted sum over a sequence: (B, L, D) -> (B, D).

    `kind="linear"` scores each step with one Linear(D, 1), as the seed's AttnPool1D does (D + 1
    parameters); `kind="mlp"` with Linear(D, hidden) -> Tanh -> Linear(hidden, 1) (ours, ~66k
    parameters at D = 512). Either way the scorer is `self.score`.
    """

    def __init__(self, dim: int, hidden: int = 128, kind: str = "linear"):
        super().__init__()
        if kind not in ATTENTION_POOLS:
            raise ValueError(f"unknown attention pool {kind!r}; expected one of {list(ATTENTION_POOLS)}")
        self.score = (nn.Linear(dim, 1) if kind == "linear"
                      else nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attend(x)[0]

    def attend(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pooled (B, D), the softmax weights (B, L) that pooled it): the weights are computed
        anyway, so returning them costs nothing (wikiart.model.explain maps them)."""
        # softmax in fp32: under fp16 autocast long sequences of similar scores underflow
        weights = self.score(x).float().softmax(dim=1).to(x.dtype)
        return (weights * x).sum(dim=1), weights.squeeze(2)


def _check_heads(num_classes: Mapping[str, int] | None,
                 class_names: Mapping[str, Sequence[str]] | None) -> tuple[dict[str, int], dict[str, list[str]]]:
    if num_classes is None and class_names is None:
        raise ValueError("CNNRNNClassifier needs num_classes or class_names (task -> classes)")
    names = {t: [str(n) for n in v] for t, v in (class_names or {}).items()}
    counts = {t: int(n) for t, n in (num_classes or {t: len(v) for t, v in names.items()}).items()}
    if names and set(names) != set(counts):
        raise ValueError(f"class_names tasks {sorted(names)} differ from num_classes tasks {sorted(counts)}")
    for task, count in counts.items():
        if count < 1 or "." in task or not task:
            raise ValueError(f"bad head {task!r} with {count} classes")
        if names and len(names[task]) != count:
            raise ValueError(f"task {task!r}: {len(names[task])} class names but num_classes={count}")
    if not counts:
        raise ValueError("CNNRNNClassifier needs at least one task")
    return counts, names or {t: [str(i) for i in range(n)] for t, n in counts.items()}


class CNNRNNClassifier(nn.Module, PyTorchModelHubMixin, library_name="wikiart",
                       pipeline_tag="image-classification", tags=["wikiart", "painting-classification"]):
    """Multi-head painting classifier; `forward(x)` -> {task: logits}, `embed(x)` -> fused features."""

    def __init__(self, backbone: str = "resnet50", num_classes: dict[str, int] | None = None,
                 class_names: dict[str, list[str]] | None = None, proj_dim: int = 320,
                 rnn_hidden: int = 256, rnn_layers: int = 2, rnn_dropout: float = 0.2,
                 head_dropout: float = 0.4, use_rnn: bool = True, image_size: int = 384,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 eval_resize: int | None = None, attention_pool: str = "mlp",
                 interpolation: str | None = None, pretrained_weights: str | None = None):
        # attention_pool defaults to "mlp" here, not the seed's "linear" that ModelConfig passes:
        # config.json files written before the option existed have no such key and hold MLP pools.
        # mean, std, interpolation: None means the backbone's (ImageNet's and bilinear for
        # torchvision, as every config.json written before timm backbones; timm's pretrained config).
        super().__init__()
        norm = preprocessing(backbone)
        counts, names = _check_heads(num_classes, class_names)
        self.backbone_name = backbone
        self.class_names = names
        self.use_rnn = use_rnn
        self.image_size = int(image_size)
        self.eval_resize = int(eval_resize) if eval_resize else None  # the run's --eval-resize; None: the default
        self.mean = tuple(float(v) for v in (norm.mean if mean is None else mean))
        self.std = tuple(float(v) for v in (norm.std if std is None else std))
        self.interpolation = interpolation or norm.interpolation  # the resize filter of evaluation
        self.pretrained_weights = pretrained_weights  # what the backbone started from (model card)
        self.backbone, self.feature_channels, self._stem = build_backbone(backbone, self.image_size)
        self.embed_dim = self.feature_channels
        if use_rnn:
            self.proj = nn.Sequential(nn.Conv2d(self.feature_channels, proj_dim, 1, bias=False),
                                      nn.BatchNorm2d(proj_dim), nn.ReLU(inplace=True))
            gru = dict(input_size=proj_dim, hidden_size=rnn_hidden, num_layers=rnn_layers, batch_first=True,
                       bidirectional=True, dropout=rnn_dropout if rnn_layers > 1 else 0.0)
            self.row_rnn, self.col_rnn = nn.GRU(**gru), nn.GRU(**gru)
            self.row_pool = AttentionPool(2 * rnn_hidden, kind=attention_pool)
            self.col_pool = AttentionPool(2 * rnn_hidden, kind=attention_pool)
            self.embed_dim += 4 * rnn_hidden
        self.dropout = nn.Dropout(head_dropout)
        self.heads = nn.ModuleDict({t: nn.Linear(self.embed_dim, n) for t, n in counts.items()})
        # The full, normalised config (the mixin only records the arguments that were passed).
        self._hub_mixin_config = dict(
            backbone=backbone, num_classes=counts, class_names=names, proj_dim=proj_dim,
            rnn_hidden=rnn_hidden, rnn_layers=rnn_layers, rnn_dropout=rnn_dropout,
            head_dropout=head_dropout, use_rnn=use_rnn, image_size=self.image_size,
            mean=list(self.mean), std=list(self.std), eval_resize=self.eval_resize,
            attention_pool=attention_pool, interpolation=self.interpolation,
            pretrained_weights=pretrained_weights, backbone_info=self.backbone_info())

    def backbone_info(self) -> dict:
        """config.json's record of the backbone's input constraint and output (not a constructor
        argument: from_pretrained ignores it): library, side multiple, feature channels and stride."""
        timm = is_timm(self.backbone_name)
        return {"library": "timm" if timm else "torchvision",
                "input_multiple": self.backbone.input_multiple if timm else 1,
                "feature_channels": self.feature_channels,
                "feature_reduction": self.backbone.reduction if timm else None}

    def hub_config(self) -> dict:
        """What save_pretrained writes to config.json (architecture, classes, preprocessing)."""
        return dict(self._hub_mixin_config)

    @classmethod
    def from_config(cls, model_cfg: ModelConfig, class_names: Mapping[str, Sequence[str]],
                    image_size: int, eval_resize: int | None = None,
                    interpolation: str | None = None) -> "CNNRNNClassifier":
        """Build from the CLI's ModelConfig; loads pretrained weights when asked (downloading them
        into the torch hub or Hugging Face cache when absent, unless a --pretrained-path file is given)."""
        # --pretrained-path alone also means "start from these pretrained weights"
        pretrained = bool(model_cfg.pretrained or model_cfg.pretrained_path)
        model = cls(backbone=model_cfg.backbone, class_names={t: list(v) for t, v in class_names.items()},
                    proj_dim=model_cfg.proj_dim, rnn_hidden=model_cfg.rnn_hidden,
                    rnn_layers=model_cfg.rnn_layers, rnn_dropout=model_cfg.rnn_dropout,
                    head_dropout=model_cfg.head_dropout, use_rnn=model_cfg.rnn, image_size=image_size,
                    eval_resize=eval_resize, attention_pool=model_cfg.attention_pool, interpolation=interpolation,
                    pretrained_weights=weights_description(model_cfg.backbone, model_cfg.pretrained_path)
                    if pretrained else None)
        if pretrained:
            model.load_imagenet_weights(model_cfg.pretrained_path)
        return model

    @classmethod
    def _from_pretrained(cls, *, strict: bool = True, **kwargs) -> "CNNRNNClassifier":
        # The mixin defaults to strict=False, which would silently keep random heads on a mismatch.
        return super()._from_pretrained(strict=strict, **kwargs)

    def load_imagenet_weights(self, path: str | None = None) -> None:
        """Load the backbone's pretrained weights from `path`, else from the torch hub cache
        (torchvision) or the Hugging Face cache (timm), downloaded into it when absent."""
        load_imagenet_weights(self.backbone, self.backbone_name, path)

    @property
    def tasks(self) -> list[str]:
        return list(self.heads)

    def class_names_dict(self) -> dict[str, list[str]]:
        return {t: list(v) for t, v in self.class_names.items()}

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Fused features (B, embed_dim): GAP, then row and column summaries when use_rnn."""
        return self.fuse(self.backbone(x))[0]

    def fuse(self, fmap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(fused features, row attention (B, H), column attention (B, W)) of the backbone's map
        (B, C, H, W); the weights are None without the RNN branch (GAP alone has no attention)."""
        pooled = fmap.mean(dim=(2, 3))
        if not self.use_rnn:
            return pooled, None, None
        proj = self.proj(fmap)
        b, c, h, w = proj.shape
        rows = proj.permute(0, 2, 3, 1).reshape(b * h, w, c)  # row i: a sequence over its W columns
        cols = proj.permute(0, 3, 2, 1).reshape(b * w, h, c)  # column j: a sequence over its H rows
        row_vec, row_weights = self.row_pool.attend(self.row_rnn(rows)[0].mean(dim=1).view(b, h, -1))
        col_vec, col_weights = self.col_pool.attend(self.col_rnn(cols)[0].mean(dim=1).view(b, w, -1))
        features = torch.cat([pooled, row_vec.to(pooled.dtype), col_vec.to(pooled.dtype)], dim=1)
        return features, row_weights, col_weights

    def classify(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """Heads on features from `embed`: {task: logits (B, C_task)}."""
        features = self.dropout(features)
        return {task: head(features) for task, head in self.heads.items()}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.classify(self.embed(x))

    def backbone_parameters(self) -> list[nn.Parameter]:
        return list(self.backbone.parameters())

    def new_parameters(self) -> list[nn.Parameter]:
        """Everything outside the backbone: projection, GRUs, attention pools, heads."""
        return [p for n, p in self.named_parameters() if not n.startswith("backbone.")]

    def stem_modules(self) -> list[nn.Module]:
        """conv1 + bn1 for ResNets, the first block of `.features` (or `stem`) otherwise; for a
        timm backbone the children timm calls its stem (a ViT's patch_embed)."""
        return list(self._stem)

    def stem_parameters(self) -> list[nn.Parameter]:
        return [p for m in self._stem for p in m.parameters()]


def from_config(model_cfg: ModelConfig, class_names: Mapping[str, Sequence[str]],
                image_size: int, eval_resize: int | None = None, interpolation: str | None = None) -> CNNRNNClassifier:
    """Build the classifier the training command asked for (see CNNRNNClassifier.from_config)."""
    return CNNRNNClassifier.from_config(model_cfg, class_names, image_size, eval_resize, interpolation)
