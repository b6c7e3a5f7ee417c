"""evaluate in-process on an untrained checkpoint: bad input is one clear line and writes
nothing, a rerun replaces the earlier reports, command-line errors, the confusion heat map
(evaluating a trained run: tests/integration/test_evaluate.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.support.outputs import strict_json
from wikiart.cli.evaluate import main as evaluate_main
from wikiart.formats.checkpoint import CheckpointError
from wikiart.model.load import load_model
from wikiart.model.classifier import CNNRNNClassifier
from wikiart.evaluate.report import plot_confusion


def renamed_class_shards(src: Path, dst: Path) -> Path:
    """The same shards with one genre class renamed in the manifest."""
    dst.mkdir()
    manifest = json.loads((src / "manifest.json").read_text())
    manifest["classes"]["genre"][0] += "_renamed"
    (dst / "manifest.json").write_text(json.dumps(manifest))
    for tar in src.glob("*.tar"):
        (dst / tar.name).symlink_to(tar)
    return dst


@pytest.fixture(scope="module")
def untrained_checkpoint(synthetic_shards, tmp_path_factory) -> Path:
    """A save_pretrained directory of an untrained tiny model with the shards' classes (~1 s)."""
    classes = json.loads((synthetic_shards / "manifest.json").read_text())["classes"]
    model = CNNRNNClassifier(backbone="resnet18", class_names={"genre": classes["genre"]}, proj_dim=8,
                             rnn_hidden=8, rnn_layers=1, image_size=32)
    path = tmp_path_factory.mktemp("untrained") / "model"
    model.save_pretrained(path)
    return path


@pytest.mark.parametrize("case, needle", [
    ("class_mismatch", "do not match the shards' manifest"),
    ("missing", "no such file or directory"),
    ("not_a_checkpoint", "not a checkpoint"),
    ("offline_hub_id", "Hugging Face Hub could not provide it"),
    ("unknown_split", "--split test: "),
])
def test_bad_input_is_one_clear_line_and_writes_nothing(case, needle, untrained_checkpoint, synthetic_shards,
                                                        tmp_path, capsys):
    checkpoint, shards, extra = str(untrained_checkpoint), synthetic_shards, []
    if case == "class_mismatch":
        shards = renamed_class_shards(synthetic_shards, tmp_path / "renamed")
    elif case == "missing":
        checkpoint = str(tmp_path / "nowhere")
    elif case == "not_a_checkpoint":
        (tmp_path / "empty").mkdir()
        checkpoint = str(tmp_path / "empty")
    elif case == "offline_hub_id":
        checkpoint = "no-such-user/no-such-wikiart-model"   # tests run with HF_HUB_OFFLINE=1
    else:
        extra = ["--split", "test"]
    out = tmp_path / "out"
    capsys.readouterr()
    rc = evaluate_main(["--checkpoint", checkpoint, "--shards", str(shards), "--out", str(out), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert len(err) == 1 and err[0].startswith("evaluate.py: error:") and needle in err[0], err
    assert not out.exists()


def test_an_earlier_evaluations_reports_in_out_are_replaced_not_mixed_in(untrained_checkpoint, synthetic_shards,
                                                                         tmp_path):
    """A genre-only model evaluated into an --out that holds a combined model's reports: only its
    own reports remain (and metrics.json says fp32 ran); files evaluate does not write stay."""
    out = tmp_path / "out"
    out.mkdir()
    stale = ["classification_report_artist.txt", "classification_report_genre.txt", "per_class_recall_style.csv",
             "confusion_artist.png", "outliers_genre.csv", "outliers_genre.png"]
    for name in [*stale, "notes.txt", "confusion_matrix_paper.png"]:
        (out / name).write_text("an earlier evaluation\n")
    rc = evaluate_main(["--checkpoint", str(untrained_checkpoint), "--shards", str(synthetic_shards),
                        "--out", str(out), "--workers", "0", "--mixed-precision", "no"])
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "classification_report_genre.txt", "confusion_genre.png", "confusion_matrix_paper.png", "metrics.json",
        "notes.txt", "per_class_recall_genre.csv"]
    assert "earlier" not in (out / "classification_report_genre.txt").read_text()
    metrics = strict_json(out / "metrics.json")
    assert metrics["mixed_precision"] == "no" and metrics["weights"] == "model"


def test_required_flags_and_bad_values_are_command_line_errors(capsys):
    with pytest.raises(SystemExit) as exc:
        evaluate_main(["--checkpoint", "x", "--shards", "y"])
    assert exc.value.code == 2 and "required: --out" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        evaluate_main(["--checkpoint", "x", "--shards", "y", "--out", "z", "--tta", "rotate"])
    assert exc.value.code == 2 and "--tta" in capsys.readouterr().err


def test_offline_hub_id_is_a_checkpoint_error():
    with pytest.raises(CheckpointError, match="no-such-user/model"):
        load_model("no-such-user/model")


def test_confusion_heat_map_scales_with_the_class_count(tmp_path):
    sizes = {}
    rng = np.random.default_rng(0)
    for n in (10, 129):
        cm = rng.integers(0, 4, (n, n)) + np.diag(rng.integers(5, 30, n))
        cm[3] = 0  # a class without samples: a zero row, not NaN
        path = tmp_path / f"cm{n}.png"
        plot_confusion(path, cm.tolist(), [f"class_name_{i}" for i in range(n)], f"{n} classes")
        with Image.open(path) as png:
            sizes[n] = png.size
    assert 400 <= min(sizes[10]) and max(sizes[10]) <= 1200
    assert sizes[129][0] > 2.5 * sizes[10][0] and max(sizes[129]) <= 5000
