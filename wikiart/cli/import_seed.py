"""`wikiart-import-seed`: bring a model trained by the seed notebooks into `save_pretrained` form.

    wikiart-import-seed best_genre_rowcol_bigru.pt --task genre --classes genre_class.txt --out models/genre

The input is a notebook's `torch.save(model.state_dict(), path)` of `ResNet50_RowColBiGRU` (`head`)
or `ResNet50_RowColBiGRU_MultiTask` (`style_head`, `artist_head`, `genre_head`). Its tensors are
renamed to `CNNRNNClassifier`'s and the architecture (ResNet depth, projection, GRU size and depth,
class counts) is read from their shapes, so the imported model gives the seed model's logits.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import torch
import torchvision

from ..formats import checkpoint as ckpt
from ..runtime.errors import run_cli
from ..formats.rundir import record_weights_kind
from ..formats.labels import BASE_TASKS, TASKS, heads_for_task
from ..formats.manifest import MANIFEST_NAME, load_manifest, sha256_file
from ..model.classifier import CNNRNNClassifier
from ..hub.card import build_card

PROG = "wikiart-import-seed"
RESNETS = ("resnet50", "resnet18", "resnet34", "resnet101", "resnet152")  # resnet50 (the seed's) first
PAD_BIAS = -1e4  # logit of a class the seed head never had: exp(-1e4) is 0 even next to fp16 logits
# Seed module prefix -> ours; the notebooks' `stem` is resnet50's children up to layer4, in order.
_RENAMES = (("stem.0.", "backbone.conv1."), ("stem.1.", "backbone.bn1."), ("stem.4.", "backbone.layer1."),
            ("stem.5.", "backbone.layer2."), ("stem.6.", "backbone.layer3."), ("stem.7.", "backbone.layer4."),
            ("proj.", "proj."), ("row_gru.", "row_rnn."), ("col_gru.", "col_rnn."),
            ("row_pool.w.", "row_pool.score."), ("col_pool.w.", "col_pool.score."))


class SeedImportError(ValueError):
    """The input is not a seed model, or does not fit the class lists or --out."""


def read_class_file(path: Path) -> list[str]:
    """A seed `*_class.txt` (`INDEX NAME` per line, parsed like the notebooks) -> names by index."""
    names: dict[int, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        parts = line.strip().split(None, 1)
        if not parts:
            continue
        if not re.fullmatch(r"\d+", parts[0]) or int(parts[0]) in names:
            raise SeedImportError(f"{path}:{number}: expected 'INDEX NAME' with a new index, got {line.strip()!r}")
        # a line holding only an index names the class by that index, as gcomb.code.txt reads it
        names[int(parts[0])] = parts[1] if len(parts) > 1 else parts[0]
    if sorted(names) != list(range(len(names))) or not names:
        raise SeedImportError(f"{path}: class indices must run 0..N-1 without gaps (got {sorted(names)[:8]}...)")
    return [names[i] for i in range(len(names))]


def class_lists(specs: Sequence[str], task: str) -> dict[str, list[str]]:
    """--classes values (`[TASK=]PATH`, PATH a class file, a manifest or its directory) -> names per head."""
    heads, found = heads_for_task(task), {}
    for spec in specs:
        named, sep, rest = spec.partition("=")
        given, path = (named, Path(rest)) if sep and named in BASE_TASKS else (None, Path(spec))
        if not path.exists():
            raise SeedImportError(f"--classes {spec}: no such file or directory")
        if path.is_dir() or path.name == MANIFEST_NAME:
            manifest = load_manifest(path if path.is_dir() else path.parent)
            lists = {t: manifest.class_names(t) for t in ([given] if given else heads)}
        elif given or len(heads) == 1:
            lists = {given or heads[0]: read_class_file(path)}
        else:
            raise SeedImportError(f"--classes {spec}: for --task combined give a manifest, or "
                                  f"artist=FILE genre=FILE style=FILE")
        for head, names in lists.items():
            if head not in heads or head in found:
                raise SeedImportError(f"--classes {spec}: {head} classes are "
                                      f"{'given twice' if head in found else f'not a head of --task {task}'}")
            found[head] = names
    missing = [h for h in heads if h not in found]
    if missing:
        raise SeedImportError(f"--classes gives no class names for {', '.join(missing)}")
    return {h: found[h] for h in heads}


def load_state(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a notebook `torch.save(model.state_dict())` (also wrapped or DataParallel)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for files that are not checkpoints
        raise SeedImportError(f"{path}: not a PyTorch state dict that loads with weights_only=True "
                              f"({type(exc).__name__})") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SeedImportError(f"{path}: expected a state dict (names -> tensors), got {type(state).__name__}")
    return {str(k).removeprefix("module."): v for k, v in state.items()}


def _renames(task: str) -> tuple[tuple[str, str], ...]:
    heads = (tuple((f"{h}_head.", f"heads.{h}.") for h in BASE_TASKS) if task == "combined"
             else (("head.", f"heads.{task}."),))
    return _RENAMES + heads


def seed_name(ours_name: str, task: str) -> str:
    """The notebooks' name of one of our tensors (for messages)."""
    return next((old + ours_name[len(new):] for old, new in _renames(task) if ours_name.startswith(new)), ours_name)


def rename(state: dict[str, torch.Tensor], task: str) -> dict[str, torch.Tensor]:
    """The tensors under our names; a name no rule covers is refused."""
    ours, unknown = {}, []
    for name, tensor in state.items():
        rule = next(((old, new) for old, new in _renames(task) if name.startswith(old)), None)
        if rule is None:
            unknown.append(name)
        else:
            ours[rule[1] + name[len(rule[0]):]] = tensor
    if unknown:
        heads = [k for k in unknown if k.split("_head.")[0] in BASE_TASKS or k.startswith("head.")]
        kind = ("not a seed model" if not heads else "a single-head seed model: use --task artist, genre or style"
                if task == "combined" else "a combined (three-head) seed model: use --task combined")
        raise SeedImportError(f"{kind} (unknown keys {_few(unknown)})")
    return ours


def _few(names: Sequence[str]) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def infer_backbone(ours: dict[str, torch.Tensor]) -> str:
    """The torchvision ResNet whose tensors (names and shapes) the seed's `stem` holds."""
    have = {(k[len("backbone."):], tuple(v.shape)) for k, v in ours.items() if k.startswith("backbone.")}

    def differences(name: str) -> int:
        with torch.device("meta"):  # shapes only: no memory, no init time
            want = torchvision.models.get_model(name).state_dict()
        return len(have ^ {(k, tuple(v.shape)) for k, v in want.items() if not k.startswith("fc.")})
    # 0 for the right one; otherwise the closest (ties: resnet50), and load_into names what differs
    return min(RESNETS, key=differences)


def _need(ours: dict[str, torch.Tensor], key: str, task: str) -> torch.Tensor:
    if key not in ours:
        raise SeedImportError(f"not a seed model (missing keys {seed_name(key, task)})")
    return ours[key]


def build_model(ours: dict[str, torch.Tensor], class_names: dict[str, list[str]], task: str) -> CNNRNNClassifier:
    """Our classifier with the seed's architecture, as read from the tensor shapes."""
    proj = _need(ours, "proj.0.weight", task)
    hidden = _need(ours, "row_rnn.weight_hh_l0", task).shape[1]
    layers = 1 + max(int(m.group(1)) for k in ours if (m := re.fullmatch(r"row_rnn\.\w+_l(\d+)", k)))
    # The notebooks' eval transform is Resize(416) + CenterCrop(384); dropouts as in the notebooks.
    return CNNRNNClassifier(backbone=infer_backbone(ours), class_names=class_names, proj_dim=proj.shape[0],
                            rnn_hidden=hidden, rnn_layers=layers, rnn_dropout=0.2, head_dropout=0.4,
                            use_rnn=True, image_size=384, eval_resize=416, attention_pool="linear")


def pad_heads(ours: dict[str, torch.Tensor], class_names: dict[str, list[str]], task: str) -> list[str]:
    """Give a head with fewer outputs than class names never-predicted rows for the last classes.

    gcomb sizes each head as max label + 1 over the intersection of the three splits, so style
    has 26 outputs for style_class.txt's 27 names (Ukiyo_e, the last, never occurs there).
    """
    notes = []
    for head, names in class_names.items():
        weight = _need(ours, f"heads.{head}.weight", task)
        bias = _need(ours, f"heads.{head}.bias", task)
        extra = len(names) - weight.shape[0]
        if extra < 0:
            raise SeedImportError(f"the {head} head has {weight.shape[0]} outputs but --classes names "
                                  f"{len(names)} {head} classes")
        if extra > 0:
            ours[f"heads.{head}.weight"] = torch.cat([weight, weight.new_zeros(extra, weight.shape[1])])
            ours[f"heads.{head}.bias"] = torch.cat([bias, bias.new_full((extra,), PAD_BIAS)])
            notes.append(f"seed's {head} head has {weight.shape[0]} outputs for {len(names)} classes: "
                         f"{_few(names[-extra:])} padded with bias {PAD_BIAS:g}, never predicted")
    return notes


def load_into(model: CNNRNNClassifier, ours: dict[str, torch.Tensor], task: str) -> None:
    """Load strictly; a missing, extra or misshapen tensor is one line in the seed's names."""
    want = model.state_dict()
    missing = [seed_name(k, task) for k in want if k not in ours]
    unknown = [seed_name(k, task) for k in ours if k not in want]
    if missing or unknown:
        parts = [f"{what} keys {_few(keys)}" for what, keys in (("missing", missing), ("unknown", unknown)) if keys]
        raise SeedImportError(f"not a seed model ({'; '.join(parts)})")
    bad = [k for k in want if ours[k].shape != want[k].shape]
    if bad:
        raise SeedImportError(f"not a seed model this importer understands: {seed_name(bad[0], task)} has shape "
                              f"{tuple(ours[bad[0]].shape)}, expected {tuple(want[bad[0]].shape)}")
    model.load_state_dict(ours, strict=True)


def check_out(out: Path, overwrite: bool) -> None:
    """--out: new or empty, or a saved model to replace with --overwrite; never anything else."""
    if out.exists() and not out.is_dir():
        raise SeedImportError(f"--out {out} is a file")
    if out.is_dir() and any(out.iterdir()):
        if not ((out / "config.json").is_file() or (out / "model.safetensors").is_file()):
            raise SeedImportError(f"--out {out} is a non-empty directory that holds no model; not replacing it")
        if not overwrite:
            raise SeedImportError(f"--out {out} already holds a model; pass --overwrite to replace it")


def model_card(model: CNNRNNClassifier, out: Path, source: Path, notes: list[str]) -> str:
    """build_card's card (no run config: its recipe table is the architecture) plus the weights' origin."""
    card = str(build_card(str(out), model.hub_config(), run_config={"model": {"pretrained": True}}))
    card = card.replace("trained with the `wikiart` pipeline", "trained by the seed notebooks")
    return card.replace("## Training recipe", "## Architecture").rstrip("\n") + "\n\n## Origin\n\n" + (
        f"Imported with `{PROG}` from `{source.name}` (sha256 `{sha256_file(source)}`), a state dict saved "
        f"by a seed notebook (trained from ImageNet weights).{''.join(f' The {n}.' for n in notes)}\n")


def write_model(model: CNNRNNClassifier, out: Path, card: str) -> None:
    """save_pretrained into a temporary sibling, renamed into place: a failure leaves no half model."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        record_weights_kind(tmp, "model")
        (tmp / "README.md").write_text(card, encoding="utf-8")
        ckpt.replace_directory(tmp, out)
    except OSError as exc:
        raise SeedImportError(f"could not write {out}: {exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def import_seed(weights: str | Path, task: str, classes: Sequence[str], out: str | Path,
                overwrite: bool = False) -> CNNRNNClassifier:
    """Convert the seed state dict `weights` and save it to `out`; returns the model (eval mode)."""
    source, out = Path(weights), Path(out)
    check_out(out, overwrite)
    if not source.is_file():
        raise SeedImportError(f"{source}: no such file")
    names = class_lists(classes, task)
    ours = rename(load_state(source), task)
    model = build_model(ours, names, task)
    notes = pad_heads(ours, names, task)
    for note in notes:
        print(f"{PROG}: the {note}", flush=True)
    load_into(model, ours, task)
    write_model(model.eval(), out, model_card(model, out, source, notes))
    heads = ", ".join(f"{t} {len(n)}" for t, n in names.items())
    print(f"{PROG}: wrote {out} ({model.backbone_name}, proj {model.proj[0].out_channels}, GRU "
          f"{model.row_rnn.hidden_size} x {model.row_rnn.num_layers}; classes: {heads})", flush=True)
    return model


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("weights", help="state dict saved by a seed notebook (torch.save(model.state_dict()))")
    parser.add_argument("--task", required=True, choices=TASKS,
                        help="the notebook's task: artist, genre or style (one head) or combined (gcomb)")
    parser.add_argument("--classes", required=True, nargs="+", action="extend", metavar="[TASK=]PATH",
                        help="a seed *_class.txt ('INDEX NAME' lines), or a shards manifest.json or its folder; "
                             "--task combined: a manifest, or artist=FILE genre=FILE style=FILE (one --classes "
                             "or three). Names past a head's outputs are padded, never predicted")
    parser.add_argument("--out", required=True, help="directory for config.json, model.safetensors and README.md")
    parser.add_argument("--overwrite", action="store_true", help="replace the model directory --out")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (`wikiart-import-seed`, `python -m wikiart.cli.import_seed`)."""
    args = build_parser().parse_args(argv)

    def run() -> int:
        import_seed(args.weights, args.task, args.classes, args.out, args.overwrite)
        return 0
    return run_cli(PROG, run)


if __name__ == "__main__":
    sys.exit(main())
