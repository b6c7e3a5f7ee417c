"""Configuration: one dataclass per concern (data, model, optim, train, hub, eval, predict).

Each field carries its help text and bounds (`opt`); `wikiart.config.fields` turns the sections
into a command line, applies task presets, YAML (--config) and flags in that order, and
validates, so a new feature adds a field, never a parser.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

# Re-exported: callers import the whole configuration API from here.
from .fields import (ConfigError, apply_values, build_parser, flag_name, from_dict,  # noqa: F401
                        load_yaml, opt, parse_config, to_dict, validate)

# ---------------------------------------------------------------------------------------------
# Training / evaluation sections. Flags are flat (`--image-size`), so names are unique.
# ---------------------------------------------------------------------------------------------
TASK_CHOICES = ("artist", "genre", "style", "combined")
EVAL_RESIZE_RATIO = 416 / 384  # the seed's eval resize of the shorter side relative to the crop (416 / 384)
SHARDS_HELP = ("the folder with manifest.json and the WebDataset shards: a directory, or its URL "
               "(https://..., hf://datasets/USER/REPO[@REVISION]/PATH, or an fsspec URL such as s3://...)")
SHARD_CACHE_HELP = ("remote --shards only: keep each shard in this local directory once read, so later "
                    "epochs read from disk (bounded by WIKIART_SHARD_CACHE_GB, default 50; safe to share "
                    "between the ranks and workers of a node)")
BACKBONES_HELP = ("resnet18/34/50/101/152, convnext_tiny, efficientnet_v2_s, or another torchvision model; or "
                  "timm/NAME for any timm model (ours), e.g. timm/convnext_base.fb_in22k_ft_in1k, "
                  "timm/vit_large_patch14_dinov2.lvd142m (docs/backbones.md)")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    task: str = opt("genre", "what to classify", choices=TASK_CHOICES)
    shards: str = opt("shards", SHARDS_HELP)
    shard_cache: str | None = opt(None, SHARD_CACHE_HELP)
    image_size: int = opt(384, "training crop size in pixels", min=8)
    eval_resize: int | None = opt(None, "eval resize of the shorter side (default: image_size * 13/12)", min=1)
    batch_size: int = opt(64, "batch size: the global batch, split over the ranks (--batch-scaling global), or "
                          "per rank", min=1)
    batch_scaling: str = opt("global", "several ranks: 'global' keeps --batch-size as the global batch (the "
                             "seed's 64 on one GPU: 64 / ranks per rank); 'linear-lr' takes it per rank and "
                             "multiplies the learning rates by the ranks (ours); 'per-rank' takes it per rank, "
                             "learning rates as given (ours)", choices=("global", "linear-lr", "per-rank"))
    eval_batch_size: int | None = opt(None, "per-process eval batch size (default: batch_size)", min=1)
    workers: int | None = opt(None, "loader worker processes per rank (none: the cores per GPU minus one, "
                                    "up to 12, on CUDA; 2 on the CPU)", min=0)
    shuffle_buffer: int = opt(1000, "samples in the streaming shuffle buffer", min=1)
    balance: str = opt("none", "class balancing of the training stream", choices=("none", "sqrt", "inverse"))
    balance_task: str | None = opt(None, "task to balance on for --task combined: 'all' weighs a painting by "
                                   "the mean of its three inverse class frequencies (the seed's); default: "
                                   "'all' on the intersection, style on the union",
                                   choices=(*TASK_CHOICES[:3], "all"))
    combined_data: str = opt("intersection", "--task combined trains and validates on 'intersection': the "
                             "paintings with all three labels (the seed's), or 'union': every painting, "
                             "missing labels masked out of the loss (ours)", choices=("intersection", "union"))
    rrc_scale: tuple[float, ...] = opt((0.7, 1.0), "RandomResizedCrop scale range", nargs=2)
    rrc_ratio: tuple[float, ...] = opt((0.85, 1.15), "RandomResizedCrop aspect-ratio range", nargs=2)
    color_jitter: tuple[float, ...] = opt((0.12, 0.12, 0.10, 0.03),
                                          "ColorJitter brightness contrast saturation hue", nargs=4)
    erasing_p: float = opt(0.2, "RandomErasing probability", min=0.0)
    erasing_fill: str = opt("normal", "RandomErasing fill: 'normal' (the seed's value='random': N(0, 1) "
                            "noise in [0, 1] space, then normalised) or 'uniform' (ours: uniform pixel "
                            "noise in [0, 255), normalised)", choices=("normal", "uniform"))
    hflip: bool = opt(True, "random horizontal flip")
    interpolation: str | None = opt(None, "resize filter of training and evaluation images (none: the "
                                    "backbone's: bilinear for torchvision, as the seed; timm's pretrained "
                                    "config for timm/NAME)", choices=("bilinear", "bicubic"))


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    backbone: str = opt("resnet50", "backbone: " + BACKBONES_HELP)
    pretrained: bool = opt(True, "start from pretrained weights: torchvision's ImageNet weights, downloaded into "
                                 "the torch hub cache ($TORCH_HOME/hub/checkpoints) when absent; for timm/NAME "
                                 "the Hub repo of timm's pretrained config, downloaded into the Hugging Face "
                                 "cache (--no-pretrained: random init)")
    pretrained_path: str | None = opt(None, "local file of pretrained backbone weights to start from (no "
                                            "download; else the torch hub / Hugging Face cache)")
    proj_dim: int = opt(320, "channels of the 1x1 projection before the GRUs", min=1)
    rnn_hidden: int = opt(256, "GRU hidden size per direction", min=1)
    rnn_layers: int = opt(2, "GRU layers", min=1)
    rnn_dropout: float = opt(0.2, "dropout between GRU layers", min=0.0)
    head_dropout: float = opt(0.4, "dropout before the heads", min=0.0)
    attention_pool: str = opt("linear", "attention pooling over rows/columns: 'linear' (the seed's "
                              "Linear(D, 1) scorer) or 'mlp' (ours: Linear -> Tanh -> Linear)",
                              choices=("linear", "mlp"))
    rnn: bool = opt(True, "use the row/column BiGRU branch (--no-rnn: GAP-only ablation)")
    channels_last: bool | None = opt(None, "channels_last memory format (none: on for CUDA, off on the CPU)")
    compile: bool = opt(False, "torch.compile the model (falls back to eager if compiling fails)")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    lr: float = opt(8e-4, "learning rate of the new modules (projection, GRUs, pooling, heads)",
                    min=0.0, exclusive_min=True)
    backbone_lr: float = opt(1.5e-4, "learning rate of the backbone", min=0.0, exclusive_min=True)
    weight_decay: float = opt(1e-4, "AdamW weight decay", min=0.0)
    warmup_steps: int = opt(0, "linear warmup optimizer steps", min=0)
    eta_min: float = opt(1e-6, "cosine schedule floor", min=0.0)
    clip_grad: float | None = opt(1.0, "gradient clipping max norm (none: off)", min=0.0, exclusive_min=True)
    label_smoothing: float = opt(0.03, "label smoothing", min=0.0)
    mixup_p: float = opt(0.35, "probability of MixUp per batch", min=0.0)
    mixup_alpha: float = opt(0.3, "MixUp Beta(alpha, alpha)", min=0.0, exclusive_min=True)
    cutmix_p: float = opt(0.35, "probability of CutMix per batch", min=0.0)
    cutmix_alpha: float = opt(1.0, "CutMix Beta(alpha, alpha)", min=0.0, exclusive_min=True)
    mix_partner: str = opt("perm", "MixUp/CutMix partner of each row: 'perm' (the seed's: a random "
                           "permutation of the batch) or 'flip' (ours: the batch reversed, as in timm)",
                           choices=("perm", "flip"))
    freeze_stem: bool = opt(True, "keep the backbone stem (conv1, bn1) frozen when starting from "
                            "pretrained weights (the seed's)")
    unfreeze_epoch: int | None = opt(None, "1-based epoch (the seed counts from 1) at whose start the stem "
                                     "unfreezes too, AdamW is rebuilt (fresh moments) and the cosine restarts "
                                     "over the epochs left (the seed's style recipe: 7); none: never", min=1)
    freeze_backbone_epochs: int = opt(0, "ours: keep the whole backbone frozen (BatchNorm in eval mode) for the "
                                      "first N epochs, training only the new modules", min=0)
    freeze_backbone: bool = opt(False, "ours: keep the whole backbone frozen for the whole run (linear-probe "
                                "style: only the new modules train; the backbone in eval mode, without "
                                "gradients, outside DDP's gradient sync); --freeze-backbone-epochs N freezes "
                                "it for the first N epochs only")
    layer_decay: float | None = opt(None, "ours: layer-wise learning-rate decay of a timm backbone: a layer "
                                    "k blocks below the top trains at --backbone-lr * decay**k (e.g. 0.75 "
                                    "for ViTs); none: one --backbone-lr", min=0.0, exclusive_min=True)
    frozen_bn_eval: bool = opt(False, "ours: put the frozen stem's BatchNorm in eval mode (the seed leaves "
                               "it in train mode: batch statistics, running statistics updated)")
    exclude_norm_bias_decay: bool = opt(False, "ours: no weight decay on biases and normalisation weights "
                                        "(the seed decays every parameter)")
    schedule: str = opt("epoch", "cosine stepped once per 'epoch' (the seed's CosineAnnealingLR) or per "
                        "optimizer 'step' (ours)", choices=("epoch", "step"))
    cosine_t_max: int | None = opt(None, "cosine period T_max in epochs (the seed's artist/genre: 15 over 10 "
                                   "epochs, ending near 35%% of the peak); none: the run's epochs", min=1)
    task_weights: tuple[float, ...] = opt((1.0, 1.0, 1.0), "loss weights artist genre style (combined)",
                                          nargs=3, min=0.0)
    ema_decay: float | None = opt(None, "EMA of weights with this decay (none: off)", min=0.0)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    out: str = opt("runs/default", "run directory (checkpoints, best/, metrics.jsonl)")
    epochs: int = opt(10, "training epochs", min=1)
    max_steps: int | None = opt(None, "stop after this many optimizer steps (none: epochs decide)", min=1)
    grad_accum: int = opt(1, "gradient accumulation micro-batches per optimizer step", min=1)
    mixed_precision: str | None = opt(None, "mixed precision: no, fp16 or bf16 (default: the accelerate "
                                      "launch config's, else bf16 on a GPU that has it, else no)", choices=("no", "fp16", "bf16"))
    seed: int = opt(0, "random seed (data order, init, augmentation)")
    resume: str | None = opt(None, "resume: 'auto' (newest checkpoint in --out), 'hub' (the "
                                 "training state pushed to --push-to-hub), or a checkpoint path")
    overwrite: bool = opt(False, "allow starting fresh in an --out that holds another run")
    eval_every: int | None = opt(None, "also validate every N optimizer steps (default: each epoch)", min=1)
    save_every: int | None = opt(None, "save a training checkpoint every N optimizer steps", min=1)
    keep_last: int = opt(2, "training checkpoints to keep", min=1)
    log_every: int = opt(10, "log every N optimizer steps", min=1)
    report_to: str | None = opt(None, "Accelerate tracker, e.g. tensorboard")
    stop_at_step: int | None = opt(None, "save a checkpoint and exit after this optimizer step, as a "
                                   "preempted job would (the schedule still spans the whole run)", min=1)
    stop_file: str | None = opt(None, "a file whose appearance asks the run to save and exit (default: OUT/STOP)")
    stop_check_every: int = opt(10, "optimizer steps between checks for a stop request (signal or "
                                "stop file); the ranks all-reduce the flag there", min=1)
    progress: bool = opt(True, "rich progress bar on the main process")
    collective_timeout: int = opt(1800, "seconds a collective (all-reduce, barrier) may wait for the other "
                                  "ranks before the run fails instead of hanging on a dead or hung rank",
                                  min=1)


@dataclasses.dataclass(frozen=True)
class HubConfig:
    push_to_hub: str | None = opt(None, "Hugging Face Hub repo id to push best/ to")
    hub_private: bool = opt(False, "create the Hub repo private")
    hub_every: str = opt("best", "push when: 'epoch', 'best', or a number of steps")


TRAIN_SECTIONS: dict[str, type] = {"data": DataConfig, "model": ModelConfig, "optim": OptimConfig,
                                   "train": TrainConfig, "hub": HubConfig}


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """A training run's whole configuration, one frozen section per concern (TRAIN_SECTIONS).

    Frozen all the way down: what `config.json` records is what ran, and a stage that resolves a
    default (the device's precision, the per-rank batch) says so by building a new one (`replace`).
    """

    data: DataConfig
    model: ModelConfig
    optim: OptimConfig
    train: TrainConfig
    hub: HubConfig

    def replace(self, **sections: Any) -> "RunConfig":
        """A copy with whole sections swapped: `cfg.replace(data=dataclasses.replace(cfg.data, ...))`."""
        return dataclasses.replace(self, **sections)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain data, as saved in a run's config.json."""
        return to_dict({name: getattr(self, name) for name in TRAIN_SECTIONS})

    @classmethod
    def from_dict(cls, data: Any) -> "RunConfig":
        """Back from `to_dict` output (a config.json); keys unknown to this version are ignored."""
        return cls(**from_dict(TRAIN_SECTIONS, data))

# The recipe per task (the defaults above are genre's). Applied before YAML and flags.
# The seed notebooks' recipes (docs/seed.md, "Seed recipe vs options"): artist/genre run 10 epochs of a
# T_max=15 cosine; style 20 epochs with the restart at its epoch 7; combined 20 epochs (its
# notebook assigns unfreeze_epoch = 4 but never uses it).
TASK_PRESETS: dict[str, dict[str, Any]] = {
    "artist": {"epochs": 10, "balance": "inverse", "cosine_t_max": 15},
    "genre": {"epochs": 10, "balance": "inverse", "cosine_t_max": 15},
    "style": {"epochs": 20, "balance": "inverse", "unfreeze_epoch": 7},
    "combined": {"epochs": 20, "balance": "inverse"},
}


def parse_train_config(argv: Sequence[str] | None = None) -> RunConfig:
    cfg = RunConfig(**parse_config(TRAIN_SECTIONS, argv, "Train the WikiArt CNN-RNN classifier.",
                                   presets=TASK_PRESETS, preset_key="task", prog="train.py"))
    check_eval_resize(cfg.data.eval_resize, cfg.data.image_size)
    return cfg


def check_eval_resize(eval_resize: int | None, image_size: int) -> None:
    """Before any work: a centre crop larger than the resized image fails only in the loader."""
    if eval_resize is not None and eval_resize < image_size:
        raise ConfigError(f"--eval-resize {eval_resize}: smaller than the {image_size}-px centre crop "
                          f"(the model's image size); use at least {image_size}")


# ---------------------------------------------------------------------------------------------
# Evaluation and prediction (evaluate.py, wikiart-predict).
# ---------------------------------------------------------------------------------------------
CHECKPOINT_HELP = ("a save_pretrained directory, a Hugging Face Hub repo id, a training checkpoint "
                   "(RUN/checkpoints/step-*) or a run directory (uses its best/)")
EVAL_DESCRIPTION = "Evaluate a trained checkpoint on a split of the shards: metrics, reports, outliers."


@dataclasses.dataclass
class EvalConfig:
    checkpoint: str | None = opt(None, "model to evaluate: " + CHECKPOINT_HELP)
    shards: str | None = opt(None, SHARDS_HELP)
    shard_cache: str | None = opt(None, SHARD_CACHE_HELP)
    out: str | None = opt(None, "directory for metrics.json, reports and plots")
    split: str = opt("val", "split to score")
    batch_size: int = opt(64, "per-process batch size", min=1)
    workers: int = opt(2, "loader worker processes per rank", min=0)
    eval_resize: int | None = opt(None, "resize of the shorter side before the centre crop; none: the "
                                  "run's setting, else image size * 13/12", min=1)
    tta: str = opt("none", "test-time augmentation: 'flip' averages the logits of each image and "
                   "its mirror image", choices=("none", "flip"))
    mixed_precision: str | None = opt(None, "mixed precision: no, fp16 or bf16 (default: the accelerate "
                                      "launch config's, else bf16 on a GPU that has it, else no)", choices=("no", "fp16", "bf16"))
    ema: bool = opt(True, "training checkpoints: use their EMA weights when they hold some")
    outliers: bool = opt(False, "rank suspicious paintings (possible label errors) per task")
    centroids: str = opt("train", "split the outlier class centroids come from: 'train', or "
                         "'eval' (the scored split)", choices=("train", "eval"))
    outlier_top: int = opt(24, "paintings on each outlier contact sheet", min=1)
    worst: int = opt(10, "worst classes listed per task", min=1)
    explain_worst: int = opt(0, "ours: explain_worst_<task>.png, the N most confident mistakes per task with "
                             "where the model looked (attention and Grad-CAM overlays)", min=0)
    explain_outliers: bool = opt(False, "ours: the --outliers contact sheets show where the model looked "
                                 "beside each painting")
    card_gallery: int = opt(0, "ours: gallery/ in --out with N overlays of the split's first paintings (by key), "
                            "added to the model card by --push-to-hub", min=0)
    push_to_hub: str | None = opt(None, "Hub repo id whose model card gets these metrics")
    hub_private: bool = opt(False, "create that Hub repo private if it does not exist")


@dataclasses.dataclass
class PredictConfig:
    checkpoint: str | None = opt(None, "model: " + CHECKPOINT_HELP)
    top_k: int = opt(5, "classes shown per head", min=1)
    json: bool = opt(False, "print JSON instead of tables")
    batch_size: int = opt(16, "images per forward pass", min=1)
    device: str = opt("auto", "torch device: auto (CUDA when available), cpu, cuda, cuda:N")
    explain: str | None = opt(None, "ours: directory for one PNG per image of where the model looked "
                              "(the painting, its attention map and each head's Grad-CAM overlaid)")
    images: list[str] = dataclasses.field(default_factory=list)  # positional, added by the parser


def parse_eval_config(argv: Sequence[str] | None = None) -> EvalConfig:
    """evaluate.py's options; --checkpoint, --shards and --out are required (exit 2 if absent)."""
    sections = {"eval": EvalConfig}
    cfg = parse_config(sections, argv, EVAL_DESCRIPTION, prog="evaluate.py")["eval"]
    missing = [flag_name(f) for f in dataclasses.fields(cfg)
               if f.name in ("checkpoint", "shards", "out") and not getattr(cfg, f.name)]
    if missing:
        build_parser(sections, EVAL_DESCRIPTION, prog="evaluate.py").error(
            f"the following arguments are required: {', '.join(missing)}")
    return cfg


def parse_predict_config(argv: Sequence[str] | None = None) -> PredictConfig:
    """`wikiart-predict --checkpoint X IMAGE [IMAGE ...]`: the options plus positional images."""
    description = "Classify image files with a trained checkpoint (top-k classes per head)."
    parser = build_parser({"predict": PredictConfig}, description, prog="wikiart-predict",
                          with_config_file=False)
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, WebP, ...)")
    try:
        cfg = apply_values(PredictConfig(), vars(parser.parse_args(argv)), "command line")
        validate(cfg)
    except ConfigError as exc:
        parser.error(str(exc))
    if not cfg.checkpoint:
        parser.error("the following arguments are required: --checkpoint")
    return cfg


# What a run whose config.json predates an option ran with: that option's earlier behaviour.
EARLIER_DEFAULTS: dict[str, dict[str, Any]] = {
    "model": {"attention_pool": "mlp"},
    "optim": {"exclude_norm_bias_decay": True, "schedule": "step", "mix_partner": "flip"},
    "data": {"combined_data": "union", "erasing_fill": "uniform"},
}


def with_earlier_defaults(saved: dict[str, Any]) -> dict[str, Any]:
    """A run's saved config.json with the options it predates filled in as they then behaved."""
    return {sec: {**EARLIER_DEFAULTS.get(sec, {}), **values} if isinstance(values, dict) else values
            for sec, values in saved.items()}
