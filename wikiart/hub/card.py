"""The model card (`README.md` of a pushed model): what was trained, on what, how, and how well.

`build_card` assembles it from the run: the model's `config.json` (tasks, class names,
preprocessing), the shard manifest (source, sample counts), the resolved training config
(recipe) and the latest metrics. The YAML header is written by `huggingface_hub.ModelCardData`,
so the Hub reads it. The metrics live between two HTML comments so `update_card_metrics`
(what `evaluate.py --push-to-hub` uses) can replace them without touching the rest.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Mapping

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..formats.manifest import Manifest
from ..config.options import EVAL_RESIZE_RATIO

METRICS_START = "<!-- wikiart:metrics:start -->"
METRICS_END = "<!-- wikiart:metrics:end -->"
_TASK_METRIC_ORDER = ("top1", "top5", "macro_f1", "f1", "balanced_accuracy", "loss", "scored")
_HUB_DATASET = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def flatten_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float | int]:
    """{"genre": {"top1": .5}} or {"genre/top1": .5} -> {"genre/top1": .5}; non-scalars dropped."""
    flat: dict[str, float | int] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_metrics(value, name + "/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[name] = value
    return flat


def _fmt(value: float | int) -> str:
    if isinstance(value, int):
        return str(value)
    return "–" if not math.isfinite(value) else f"{value:.4f}"


def metrics_markdown(metrics: Mapping[str, Any], split: str = "val", step: int | None = None) -> str:
    """Per-task table (rows: tasks, columns: metrics) and a table of run-level numbers."""
    flat = flatten_metrics(metrics)
    flat.pop("step", None)
    per_task: dict[str, dict[str, float | int]] = {}
    overall: dict[str, float | int] = {}
    for key, value in flat.items():
        task, _, name = key.rpartition("/")
        (per_task.setdefault(task, {}) if task else overall)[name] = value
    where = f"`{split}` split" + (f", optimizer step {step}" if step is not None else "")
    lines = [f"Evaluated on the {where}."]
    if per_task:
        names = sorted({n for row in per_task.values() for n in row},
                       key=lambda n: (_TASK_METRIC_ORDER.index(n) if n in _TASK_METRIC_ORDER else 99, n))
        lines += ["", "| task | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        for task, row in per_task.items():
            lines.append(f"| {task} | " + " | ".join(_fmt(row[n]) if n in row else "" for n in names) + " |")
    if overall:
        lines += ["", "| metric | value |", "|---|---|"]
        lines += [f"| {name} | {_fmt(value)} |" for name, value in overall.items()]
    if not flat:
        lines = ["No evaluation yet."]
    return "\n".join(lines)


def eval_results(metrics: Mapping[str, Any], dataset_id: str | None, dataset_name: str,
                 split: str) -> list[EvalResult]:
    """model-index entries (top-1 / top-5 per task) for the Hub's evaluation widget."""
    results = []
    kinds = {"top1": ("accuracy", "top-1 accuracy"), "top5": ("top_5_accuracy", "top-5 accuracy")}
    for key, value in flatten_metrics(metrics).items():
        task, _, name = key.rpartition("/")
        if task and name in kinds and isinstance(value, float) and math.isfinite(value):
            metric_type, label = kinds[name]
            results.append(EvalResult(task_type="image-classification", dataset_type=dataset_id or "wikiart",
                                      dataset_name=dataset_name, dataset_split=split, metric_type=metric_type,
                                      metric_value=round(value, 4), metric_name=f"{task} {label}"))
    return results


def dataset_of(manifest: Manifest | None) -> tuple[str | None, str]:
    """(Hub dataset id or None, human-readable description) of the shards' source."""
    source = manifest.source if manifest is not None else {}
    kind = source.get("type")
    if kind == "hf":
        name = str(source.get("name", ""))
        hub_id = name if _HUB_DATASET.match(name) else None
        return hub_id, f"Hugging Face dataset `{name if hub_id else 'local copy'}` (split `{source.get('split')}`)"
    if kind == "artgan":
        return None, "WikiArt with the ArtGAN split files (artist/genre/style CSVs)"
    if kind == "synthetic":
        return None, f"synthetic mini-WikiArt ({source.get('n')} procedurally generated paintings, seed {source.get('seed')})"
    return None, "WikiArt" if not kind else f"WikiArt ({kind})"


def _classes_section(class_names: Mapping[str, list[str]]) -> list[str]:
    lines = ["## Tasks and classes", "", "| task | classes |", "|---|---|"]
    lines += [f"| {task} | {len(names)} |" for task, names in class_names.items()]
    for task, names in class_names.items():
        lines += ["", f"<details><summary>{task}: {len(names)} classes (head output order)</summary>", "",
                  ", ".join(f"`{n}`" for n in names), "", "</details>"]
    return lines


def _data_section(manifest: Manifest | None, description: str) -> list[str]:
    lines = ["## Data", "", f"- Source: {description}"]
    if manifest is not None:
        counts = ", ".join(f"{split} {info.num_samples} samples ({len(info.shards)} shards)"
                           for split, info in manifest.splits.items())
        lines.append(f"- Splits (from the shard manifest): {counts}")
        fingerprint = manifest.build.get("fingerprint")
        if fingerprint:
            lines.append(f"- Shard set fingerprint: `{str(fingerprint)[:16]}`")
    return lines


def _recipe_rows(model_config: Mapping[str, Any], run_config: Mapping[str, Mapping[str, Any]],
                 world_size: int, steps: int | None) -> list[tuple[str, str]]:
    data, model = run_config.get("data", {}), run_config.get("model", {})
    optim, train = run_config.get("optim", {}), run_config.get("train", {})
    rows = [("backbone", f"{model_config.get('backbone')} ({_backbone_init(model_config, model)})"),
            ("RNN branch", f"row + column BiGRU, hidden {model_config.get('rnn_hidden')}, "
                           f"{model_config.get('rnn_layers')} layers" if model_config.get("use_rnn") else "off (GAP only)"),
            ("image size", str(model_config.get("image_size")))]
    if data:
        per_rank = data.get("batch_size", 0)
        accum = train.get("grad_accum", 1)
        rows += [("task", str(data.get("task"))), ("class balancing", str(data.get("balance"))),
                 ("batch size", f"{per_rank} per process × {world_size} processes × {accum} accumulation "
                                f"= {per_rank * world_size * accum}")]
    if train:
        capped = ", capped by max_steps" if train.get("max_steps") else ""
        rows.append(("training length", (f"{steps} optimizer steps, " if steps else "")
                     + f"{train.get('epochs')} epochs{capped}"))
        rows += [("mixed precision", str(train.get("mixed_precision"))), ("seed", str(train.get("seed")))]
    if optim:
        rows += [("optimizer", f"AdamW, lr {optim.get('lr')} (new modules) / {optim.get('backbone_lr')} "
                               f"(backbone), weight decay {optim.get('weight_decay')}"),
                 ("schedule", f"{optim.get('warmup_steps')} warmup steps, cosine per {optim.get('schedule', 'step')} "
                              f"to {optim.get('eta_min')}, T_max {optim.get('cosine_t_max') or 'the run'}"
                              + (" epochs" if optim.get("cosine_t_max") else "")),
                 ("regularisation", f"label smoothing {optim.get('label_smoothing')}, MixUp p {optim.get('mixup_p')} "
                                    f"α {optim.get('mixup_alpha')}, CutMix p {optim.get('cutmix_p')} "
                                    f"α {optim.get('cutmix_alpha')}, clip grad {optim.get('clip_grad')}"),
                 ("stem unfrozen, AdamW and cosine restarted at epoch", str(optim.get("unfreeze_epoch"))),
                 ("backbone frozen", "the whole run (--freeze-backbone)" if optim.get("freeze_backbone")
                  else f"the first {optim.get('freeze_backbone_epochs') or 0} epochs"),
                 ("layer-wise lr decay", str(optim.get("layer_decay"))),
                 ("EMA decay", str(optim.get("ema_decay")))]
    return rows


def _grid_word(model_config: Mapping[str, Any]) -> str:
    """A patch-based backbone's (ViT, Swin) output is a grid of patch features; a CNN's a feature map."""
    patched = int((model_config.get("backbone_info") or {}).get("input_multiple") or 1) > 1
    return "patch-feature grid" if patched else "feature map"


def _backbone_init(model_config: Mapping[str, Any], run_model: Mapping[str, Any]) -> str:
    """What the backbone started from: config.json's `pretrained_weights` (a timm backbone's Hub
    repo, torchvision's weights enum, a local file), else, for models saved before it, the run's flags."""
    if model_config.get("pretrained_weights"):
        return f"started from {model_config['pretrained_weights']}"
    if "pretrained_weights" in model_config or not (run_model.get("pretrained") or run_model.get("pretrained_path")):
        return "random init"
    return "ImageNet weights"


def _usage_section(repo_id: str, model_config: Mapping[str, Any], eval_resize: int) -> list[str]:
    size = model_config.get("image_size")
    interpolation = model_config.get("interpolation") or "bilinear"
    resize = (f"T.Resize({eval_resize})" if interpolation == "bilinear" else
              f"T.Resize({eval_resize}, interpolation=T.InterpolationMode.{interpolation.upper()})")
    return ["## How to use", "", "```python", "import torch", "from PIL import Image",
            "from torchvision import transforms as T", "from wikiart.model.classifier import CNNRNNClassifier", "",
            f'model = CNNRNNClassifier.from_pretrained("{repo_id}").eval()',
            f"prep = T.Compose([{resize}, T.CenterCrop({size}), T.ToTensor(), "
            "T.Normalize(model.mean, model.std)])",
            'x = prep(Image.open("painting.jpg").convert("RGB")).unsqueeze(0)',
            "with torch.no_grad():", "    logits = model(x)  # {task: (1, classes)}",
            "print({t: model.class_names[t][int(v.argmax(1))] for t, v in logits.items()})", "```", "",
            "From the command line (top-k per task):", "", "```bash",
            f"wikiart-predict --checkpoint {repo_id} painting.jpg", "```", "",
            f"Preprocessing as in validation: resize the shorter side to {eval_resize} ({interpolation}), "
            f"centre-crop {size} × {size}, normalise with mean {model_config.get('mean')} and std "
            f"{model_config.get('std')} (image size, resize filter, mean and std are stored in `config.json`)."]


def _eval_resize(model_config: Mapping[str, Any], run_config: Mapping[str, Any]) -> int:
    size = int(model_config.get("image_size") or 384)
    return (model_config.get("eval_resize") or run_config.get("data", {}).get("eval_resize")
            or round(size * EVAL_RESIZE_RATIO))


def build_card(repo_id: str, model_config: Mapping[str, Any], *, run_config: Mapping[str, Any] | None = None,
               manifest: Manifest | None = None, metrics: Mapping[str, Any] | None = None, split: str = "val",
               step: int | None = None, world_size: int = 1, steps: int | None = None,
               title: str | None = None) -> ModelCard:
    """The card of a model whose `config.json` is `model_config`, trained with `run_config`.

    `repo_id` is what loads the model (a Hub repo id, or a local path: the usage examples name
    it); `title` names the model when the last part of `repo_id` would not (a run's `best`)."""
    class_names = dict(model_config.get("class_names") or {})
    dataset_id, description = dataset_of(manifest)
    tasks = list(class_names)
    name = title or repo_id.split("/")[-1]
    data = ModelCardData(
        library_name="wikiart", pipeline_tag="image-classification", model_name=name,
        tags=list(dict.fromkeys(["wikiart", "painting-classification", "image-classification", "cnn-rnn",
                                  "model_hub_mixin", "pytorch_model_hub_mixin", *tasks,
                                  str(model_config.get("backbone"))])),
        datasets=[dataset_id] if dataset_id else None, metrics=["accuracy"],
        eval_results=eval_results(metrics or {}, dataset_id, "WikiArt", split) or None)
    recipe = _recipe_rows(model_config, run_config or {}, world_size, steps)
    body = [f"# {name}", "",
            f"A CNN-RNN painting classifier ({model_config.get('backbone')} {_grid_word(model_config)} read row "
            f"by row and column by column by bidirectional GRUs, attention pooling, one head per task) for "
            f"{', '.join(f'**{t}**' for t in tasks)}, trained with the `wikiart` pipeline.", "",
            *_classes_section(class_names), "", *_data_section(manifest, description), "",
            "## Training recipe", "", "| setting | value |", "|---|---|",
            *[f"| {k} | {v} |" for k, v in recipe], "",
            "## Evaluation", "", METRICS_START, metrics_markdown(metrics or {}, split, step), METRICS_END, "",
            *_usage_section(repo_id, model_config, _eval_resize(model_config, run_config or {})), ""]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body))


def write_card(folder: str | Path, repo_id: str, **context: Any) -> ModelCard:
    """build_card's card of the model saved in `folder` (its config.json, and metrics.json when
    there is one) written to folder/README.md; `context`: build_card's keywords (run config, ...)."""
    folder = Path(folder)
    model_config = json.loads((folder / "config.json").read_text())
    metrics_file = folder / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    card = build_card(repo_id, model_config, metrics=metrics, step=metrics.get("step"), **context)
    (folder / "README.md").write_text(str(card), encoding="utf-8")
    return card


GALLERY_START = "<!-- wikiart:gallery:start -->"
GALLERY_END = "<!-- wikiart:gallery:end -->"


def gallery_markdown(names: list[str], split: str = "val") -> str:
    """The "where the model looks" section for the PNGs `names` (paths in the repo)."""
    lines = ["## Where the model looks", "",
             f"The first {len(names)} `{split}` paintings (by key), as the model saw them (centre crop), with the "
             "row × column attention of its RNN branch (shared by the heads) and each head's Grad-CAM of its "
             "predicted class overlaid; below each, the top classes per head. Made with "
             "`evaluate.py --card-gallery N --push-to-hub`; `wikiart-predict --explain DIR` does the same for "
             "your own images.", ""]
    return "\n".join(lines + [f"![{Path(n).stem}]({n})" for n in names])


def update_card_gallery(card: ModelCard, names: list[str], split: str = "val") -> ModelCard:
    """The same card with its gallery section (between GALLERY_START and GALLERY_END) replaced by
    one showing `names`, appended when it has none."""
    return ModelCard(replace_section(card.content, GALLERY_START, GALLERY_END, gallery_markdown(names, split)))


def replace_section(text: str, start_marker: str, end_marker: str, body: str, heading: str = "") -> str:
    """`text` with the part between the two markers replaced by `body`, or (no such part yet) the
    markers and `body` appended under `heading`."""
    section = f"{start_marker}\n{body}\n{end_marker}"
    start, end = text.find(start_marker), text.find(end_marker)
    if 0 <= start < end:
        return text[:start] + section + text[end + len(end_marker):]
    return text.rstrip("\n") + "\n\n" + heading + section + "\n"


def update_card_metrics(card: ModelCard, metrics: Mapping[str, Any], split: str = "val",
                        step: int | None = None) -> ModelCard:
    """The same card with its metrics table and model-index replaced by `metrics`."""
    text = replace_section(card.text, METRICS_START, METRICS_END, metrics_markdown(metrics, split, step),
                           heading="## Evaluation\n\n")
    data = card.data
    datasets = data.datasets if isinstance(data.datasets, list) else [data.datasets] if data.datasets else []
    results = eval_results(metrics, datasets[0] if datasets else None, "WikiArt", split)
    data.eval_results = results or None
    if results and not data.model_name:
        data.model_name = "wikiart-model"
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{text}")
