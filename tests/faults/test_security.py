"""Security (issue #8): paths from CSVs and manifests stay inside their roots, and loading a
checkpoint never executes code (safetensors for weights, torch.load(weights_only=True) for the
rest). The Hub token grep of real runs is in test_hub.py (`assert_no_token`)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shlex
from pathlib import Path

import pytest
import torch

from tests.support.artgan import write_artgan
from tests.support.training import ROOT
from wikiart.formats import checkpoint as ckpt
from wikiart.formats.manifest import ManifestError, load_manifest
from wikiart.prep.sources import SourceError, check_relpath
from wikiart.prep.write import verify_shards

pytestmark = pytest.mark.faults


def quiet(fn, *args):
    """(return value, stderr) of fn(*args), stdout discarded; SystemExit becomes its code."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            result = fn(*args)
        except SystemExit as exc:
            result = exc.code
    return result, err.getvalue()


# ---------------------------------------------------------------------------------------------
# CSV paths cannot escape --images-root
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rel", ["../outside.jpg", "../../outside.jpg", "Realism/../../outside.jpg",
                                 "Realism\\..\\..\\outside.jpg", "ABSOLUTE", "C:/outside.jpg"])
@pytest.mark.parametrize("allow_missing", [False, True])
def test_a_csv_path_outside_the_image_root_is_refused_and_never_read(rel, allow_missing, tmp_path):
    from PIL import Image

    from wikiart.cli.build_shards import main

    images, csvs = write_artgan(tmp_path / "dl")
    outside = images.parent / "outside.jpg"   # a real image just outside --images-root
    Image.new("RGB", (40, 30), (10, 200, 30)).save(outside, "JPEG")
    (images.parent.parent / "outside.jpg").write_bytes(outside.read_bytes())
    rel = str(outside) if rel == "ABSOLUTE" else rel
    split_file = csvs / "genre_train.csv"
    lines = split_file.read_text().splitlines()
    split_file.write_text("\n".join([*lines, f"{rel},4"]) + "\n")
    out = tmp_path / "shards"
    argv = ["--images-root", str(images), "--csv-dir", str(csvs), "--out", str(out), "--workers", "0",
            "--no-progress", *(["--allow-missing"] if allow_missing else [])]
    code, stderr = quiet(main, argv)
    assert code != 0
    (line,) = stderr.strip().splitlines()
    assert line.startswith("wikiart-build-shards: error: ")
    assert f"genre_train.csv:{len(lines) + 1}" in line and "escapes the image root" in line
    assert not out.exists()   # refused while indexing: no image was read, nothing packed


@pytest.mark.parametrize("rel", ["../x.jpg", "a/../../x.jpg", "/etc/passwd", "C:\\x.jpg", "a\\..\\..\\x.jpg",
                                 "", ".."])
def test_check_relpath_rejects_every_escape(rel):
    with pytest.raises(SourceError, match="escapes the image root"):
        check_relpath(rel, "f.csv:1")


def test_check_relpath_keeps_ordinary_paths():
    assert check_relpath(" Realism/ivan-shishkin_rye.jpg ", "f.csv:1") == "Realism/ivan-shishkin_rye.jpg"
    assert check_relpath("Cubism\\picasso_guitar,-glass.jpg", "f.csv:1") == "Cubism/picasso_guitar,-glass.jpg"
    assert check_relpath("a/./b.jpg", "f.csv:1") == "a/b.jpg"


# ---------------------------------------------------------------------------------------------
# Manifest shard names cannot escape the shards directory
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["../outside.tar", "../../outside.tar", "sub/../../outside.tar", "ABSOLUTE",
                                  "..", "sub/train-000000.tar", "..\\outside.tar", "C:outside.tar"])
def test_a_manifest_shard_name_outside_the_directory_is_refused(name, synthetic_shards, tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    outside = tmp_path / "outside.tar"
    outside.write_bytes((synthetic_shards / "train-000000.tar").read_bytes())   # a real shard, outside
    name = str(outside) if name == "ABSOLUTE" else name
    manifest = json.loads((synthetic_shards / "manifest.json").read_text())
    for tar in synthetic_shards.glob("*.tar"):
        (shards / tar.name).symlink_to(tar)
    manifest["splits"]["train"]["shards"][0]["name"] = name
    (shards / "manifest.json").write_text(json.dumps(manifest))

    with pytest.raises(ManifestError) as err:
        load_manifest(shards)
    message = str(err.value)
    assert str(shards / "manifest.json") in message and repr(name) in message and len(message.splitlines()) == 1
    assert verify_shards(shards) == [message]   # --verify reports it, reads no shard


def test_train_refuses_a_manifest_that_escapes_before_writing_anything(synthetic_shards, tmp_path):
    import runpy
    import sys

    shards = tmp_path / "shards"
    shards.mkdir()
    manifest = json.loads((synthetic_shards / "manifest.json").read_text())
    manifest["splits"]["val"]["shards"][0]["name"] = "../../etc/passwd"
    (shards / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "run"
    saved = sys.argv
    sys.argv = ["train.py", "--shards", str(shards), "--out", str(out), "--task", "genre"]
    try:
        code, stderr = quiet(runpy.run_path, str(ROOT / "train.py"), None, "__main__")
    finally:
        sys.argv = saved
    assert code == 1
    (line,) = stderr.strip().splitlines()
    assert line.startswith("train.py: error: ") and "'../../etc/passwd'" in line
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# Loading a checkpoint never executes code
# ---------------------------------------------------------------------------------------------
class Payload:
    """Unpickling this runs a shell command (what a malicious optimizer.pt would carry)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def tiny_model(synthetic_shards: Path):
    from wikiart.model.classifier import CNNRNNClassifier

    genre = json.loads((synthetic_shards / "manifest.json").read_text())["classes"]["genre"]
    return CNNRNNClassifier(backbone="resnet18", class_names={"genre": genre}, proj_dim=8, rnn_hidden=8,
                            rnn_layers=1, image_size=32)


@pytest.fixture
def poisoned_run(synthetic_shards, tmp_path) -> tuple[Path, Path, Path]:
    """(run dir, checkpoint, marker): a complete training checkpoint of a tiny genre model whose
    optimizer.pt and extra.pt unpickle into a command that creates `marker`."""
    from wikiart.config.options import parse_train_config

    run = tmp_path / "run"
    model = tiny_model(synthetic_shards)
    path = ckpt.save_checkpoint(run, ckpt.TrainState(step=1), model.state_dict(), {"state": {}, "param_groups": []},
                                {"class_names": model.class_names_dict()})
    cfg = parse_train_config(["--task", "genre", "--backbone", "resnet18", "--image-size", "32", "--proj-dim", "8",
                              "--rnn-hidden", "8", "--rnn-layers", "1", "--no-pretrained"])
    (run / "config.json").write_text(json.dumps(cfg.to_dict()))
    marker = tmp_path / "PWNED"
    torch.save({"state": {}, "param_groups": [], "evil": Payload(marker)}, path / "optimizer.pt")
    torch.save({"class_names": model.class_names_dict(), "evil": Payload(marker)}, path / "extra.pt")
    return run, path, marker


def test_the_poisoned_pickle_really_executes_code_when_loaded_unsafely(poisoned_run):
    _, path, marker = poisoned_run
    torch.load(path / "optimizer.pt", weights_only=False)   # what the project must never do
    assert marker.exists()


def test_load_checkpoint_refuses_a_pickle_that_would_execute_code(poisoned_run):
    _, path, marker = poisoned_run
    with pytest.raises(ckpt.CheckpointError, match="could not read checkpoint") as err:
        ckpt.load_checkpoint(path)
    assert str(path) in str(err.value)
    assert not marker.exists()


def test_train_resume_refuses_the_poisoned_checkpoint_and_writes_nothing(poisoned_run, synthetic_shards, tmp_path):
    import runpy
    import sys

    run, path, marker = poisoned_run
    out = tmp_path / "resumed"
    saved = sys.argv
    sys.argv = ["train.py", "--shards", str(synthetic_shards), "--out", str(out), "--task", "genre",
                "--backbone", "resnet18", "--image-size", "32", "--proj-dim", "8", "--rnn-hidden", "8",
                "--rnn-layers", "1", "--workers", "0", "--max-steps", "1", "--no-pretrained", "--resume", str(path)]
    try:
        code, stderr = quiet(runpy.run_path, str(ROOT / "train.py"), None, "__main__")
    finally:
        sys.argv = saved
    assert code == 1, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    line = lines[0]
    assert line.startswith("train.py: error: could not read checkpoint") and str(path) in line
    assert "refused to unpickle" in line and "weights_only" not in line   # no advice to load it unsafely
    assert not marker.exists() and not out.exists()


@pytest.mark.parametrize("spec", ["checkpoint", "run"])
def test_evaluate_and_predict_refuse_the_poisoned_checkpoint(spec, poisoned_run, synthetic_shards, tmp_path):
    from wikiart.cli.evaluate import main as evaluate_main
    from wikiart.cli.predict import main as predict_main

    run, path, marker = poisoned_run
    target = str(path if spec == "checkpoint" else run)
    out = tmp_path / "eval"
    code, stderr = quiet(evaluate_main, ["--checkpoint", target, "--shards", str(synthetic_shards), "--out", str(out)])
    assert code == 1 and "could not read checkpoint" in stderr and len(stderr.strip().splitlines()) == 1
    assert "refused to unpickle" in stderr and "weights_only" not in stderr
    image = tmp_path / "p.jpg"
    from PIL import Image
    Image.new("RGB", (40, 30)).save(image)
    code, stderr = quiet(predict_main, ["--checkpoint", target, str(image)])
    assert code == 1 and "could not read checkpoint" in stderr and len(stderr.strip().splitlines()) == 1
    assert not marker.exists() and not out.exists()


def test_pretrained_weights_load_through_safetensors_only(synthetic_shards, tmp_path):
    """A save_pretrained directory whose weights come as a pickle (pytorch_model.bin) is not
    loaded from at all: the local loader requires model.safetensors."""
    from wikiart.model.load import load_model

    model = tiny_model(synthetic_shards)
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "PWNED"
    torch.save({"evil": Payload(marker)}, folder / "pytorch_model.bin")
    with pytest.raises(ckpt.CheckpointError, match="not a checkpoint"):
        load_model(str(folder))
    assert not marker.exists()
