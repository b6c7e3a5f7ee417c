"""Where the model looked, from the commands: wikiart-predict --explain DIR, and evaluate.py's
--explain-worst N, --explain-outliers and --card-gallery N (through the recording Hub double)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.support.hub_double import RecordingHfApi
from wikiart.cli.evaluate import main as evaluate_main
from wikiart.cli.predict import main as predict_main
from wikiart.formats.manifest import load_manifest
from wikiart.formats.shard import iter_shard_samples
from wikiart.hub import repo as hub_repo
from wikiart.model.classifier import CNNRNNClassifier

EVAL = ["--batch-size", "16", "--workers", "0"]


@pytest.fixture(scope="module")
def paintings(synthetic_shards, tmp_path_factory) -> list[Path]:
    """Two val paintings as files, one of them under a second directory with the same name."""
    out = tmp_path_factory.mktemp("explain_images")
    samples = iter_shard_samples(load_manifest(synthetic_shards).shard_paths("val")[:1])
    (key_a, jpg_a, _), (_, jpg_b, _) = next(samples), next(samples)
    (out / "b").mkdir()
    paths = [out / f"{key_a}.jpg", out / "b" / f"{key_a}.jpg"]
    paths[0].write_bytes(jpg_a)
    paths[1].write_bytes(jpg_b)
    return paths


def run(main, args: list[str], capsys) -> tuple[int, str, list[str]]:
    capsys.readouterr()
    rc = main(args)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err.strip().splitlines()


def picture_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        image.load()  # the whole PNG decodes: not truncated
        return image.size


@pytest.mark.slow
def test_predict_explain_writes_a_picture_per_image_and_names_it_in_the_json(trained_run, paintings, tmp_path,
                                                                              capsys):
    bad = tmp_path / "garbage.jpg"
    bad.write_bytes(b"not an image" * 10)
    out = tmp_path / "maps" / "deeper"  # created on demand
    rc, stdout, err = run(predict_main, ["--checkpoint", str(trained_run), "--json", "--explain", str(out),
                                         str(paintings[0]), str(bad), str(paintings[1])], capsys)
    assert rc == 1 and len(err) == 1 and str(bad) in err[0]  # the unreadable one: one line, no picture
    result = json.loads(stdout)
    names = [Path(p["explain"]).name for p in result["predictions"]]
    assert names == [paintings[0].stem + ".png", paintings[0].stem + "-2.png"]  # same stem: numbered
    assert sorted(p.name for p in out.iterdir()) == sorted(names)  # no temporaries, nothing for the bad file
    heads = 3
    for item in result["predictions"]:
        width, height = picture_size(Path(item["explain"]))
        assert width == 224 * (2 + heads) and height > 224  # painting, attention, a Grad-CAM per head
    rc, stdout, _ = run(predict_main, ["--checkpoint", str(trained_run), "--explain", str(out), str(paintings[0])],
                        capsys)
    assert rc == 0 and str(out) in stdout and "genre" in stdout


def test_predict_explain_into_an_unwritable_place_fails_before_anything(trained_run, paintings, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    for target, why in ((blocker, "exists and is not a directory"), (blocker / "sub", "is not a writable directory")):
        rc, stdout, err = run(predict_main, ["--checkpoint", str(trained_run), "--explain", str(target),
                                             str(paintings[0])], capsys)
        assert rc == 1 and not stdout and len(err) == 1, err
        assert err[0].startswith(f"wikiart-predict: error: --explain {target}") and why in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"] and blocker.read_text() == "x"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only directory")
def test_predict_explain_into_a_read_only_directory_fails_clearly(trained_run, paintings, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        rc, _, err = run(predict_main, ["--checkpoint", str(trained_run), "--explain", str(locked / "maps"),
                                        str(paintings[0])], capsys)
        assert rc == 1 and len(err) == 1 and "is not a writable directory" in err[0]
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o700)


def test_predict_explain_of_a_no_rnn_model_offers_grad_cam_only(synthetic_shards, paintings, tmp_path, capsys):
    model = CNNRNNClassifier("resnet18", class_names={"genre": ["a", "b", "c"]}, image_size=32, use_rnn=False)
    model.save_pretrained(tmp_path / "gap")
    rc, stdout, _ = run(predict_main, ["--checkpoint", str(tmp_path / "gap"), "--json", "--explain",
                                       str(tmp_path / "maps"), str(paintings[0])], capsys)
    picture = Path(json.loads(stdout)["predictions"][0]["explain"])
    assert rc == 0 and picture_size(picture)[0] == 224 * 3
    with Image.open(picture) as image:  # the attention panel is the grey "no attention" placeholder
        attention = np.asarray(image.convert("RGB"))[60:260, 224 + 2:448 - 2]
    assert (attention == 225).all(axis=2).mean() > 0.8


@pytest.fixture
def hub_double(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> RecordingHfApi:
    monkeypatch.setenv("HF_TOKEN", "hf_wikiartSecretTestToken0123456789abcd")
    api = RecordingHfApi(tmp_path / "hub_double")
    monkeypatch.setattr(hub_repo, "API_FACTORY", api)
    return api


@pytest.mark.slow
def test_evaluate_explains_worst_mistakes_outliers_and_the_card_gallery(trained_run, synthetic_shards, tmp_path,
                                                                       hub_double, capsys):
    out, repo = tmp_path / "eval", "painter/wikiart-explained"
    base = ["--checkpoint", str(trained_run), "--shards", str(synthetic_shards), "--out", str(out), *EVAL,
            "--push-to-hub", repo]
    rc, _, err = run(evaluate_main, [*base, "--outliers", "--centroids", "eval", "--outlier-top", "4",
                                     "--explain-outliers", "--explain-worst", "3", "--card-gallery", "2"], capsys)
    assert rc == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    for task in ("artist", "genre", "style"):
        worst = metrics["explain_worst"][task]
        assert 1 <= len(worst) <= 3  # an untrained-ish model makes mistakes on every head
        assert picture_size(out / f"explain_worst_{task}.png")[0] >= 3 * 224  # painting | attention | Grad-CAM
        assert picture_size(out / f"outliers_{task}.png")[0] >= 3 * 224
    assert picture_size(out / "outliers_joint.png")[0] >= 5 * 224  # attention and three Grad-CAMs per cell
    keys = sorted(k for k, _, _ in iter_shard_samples(load_manifest(synthetic_shards).shard_paths("val")))[:2]
    gallery = [f"gallery/{k}.png" for k in keys]
    assert metrics["gallery"] == gallery and sorted(p.name for p in (out / "gallery").iterdir()) == \
        [f"{k}.png" for k in keys]
    push = hub_double.calls("upload_folder")[-1]
    assert sorted(push["files"]) == sorted(["README.md", *gallery])  # the card and its pictures: one commit
    assert all(f"]({name})" in push["readme"] for name in gallery) and "Where the model looks" in push["readme"]
    remote = hub_double.remote(repo)
    assert all(picture_size(remote / name)[0] == 224 * 5 for name in gallery)
    # Again with one picture: the card's gallery is replaced, not appended; --out's gallery too.
    rc, _, err = run(evaluate_main, [*base, "--card-gallery", "1"], capsys)
    readme = hub_double.calls("upload_folder")[-1]["readme"]
    assert rc == 0 and readme.count("Where the model looks") == 1 and gallery[1] not in readme
    assert [p.name for p in (out / "gallery").iterdir()] == [f"{keys[0]}.png"]
    assert not (out / "explain_worst_genre.png").exists()  # not asked this time: the old sheet is gone


def test_evaluate_explain_outliers_needs_outliers(trained_run, synthetic_shards, tmp_path, capsys):
    rc, _, err = run(evaluate_main, ["--checkpoint", str(trained_run), "--shards", str(synthetic_shards),
                                     "--out", str(tmp_path / "eval"), "--explain-outliers"], capsys)
    assert rc == 1 and len(err) == 1 and "--explain-outliers" in err[0] and "--outliers" in err[0]
    assert not (tmp_path / "eval").exists()
