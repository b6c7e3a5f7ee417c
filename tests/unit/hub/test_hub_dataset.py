"""`wikiart-build-shards --push-to-hub`: a finished build as a dataset repo (wikiart.hub.dataset),
through the recording Hub double; the pushed folder is read back with `datasets.load_dataset`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from tests.support.hub_double import RecordingHfApi
from wikiart.cli.build_shards import main as build_main
from wikiart.formats.manifest import load_manifest
from wikiart.hub import repo
from wikiart.hub.client import RetryPolicy
from wikiart.hub.dataset import push_shards

REPO = "someone/wikiart-shards"
QUICK = RetryPolicy(attempts=3, base_delay=0.01)


@pytest.fixture
def build(synthetic_shards, tmp_path) -> Path:
    """A private copy of the synthetic build (the push writes its card into the folder)."""
    return Path(shutil.copytree(synthetic_shards, tmp_path / "shards"))


@pytest.fixture
def hub(tmp_path, monkeypatch) -> RecordingHfApi:
    api = RecordingHfApi(tmp_path / "hub")
    monkeypatch.setattr(repo, "API_FACTORY", api)
    return api


def tar_names(build: Path) -> list[str]:
    return sorted(p.name for p in build.glob("*.tar"))


def test_a_build_is_pushed_shards_first_then_manifest_and_card(build, hub, tmp_path):
    push_shards(build, REPO, policy=QUICK, echo=lambda line: None)
    remote = hub.remote(REPO)
    assert sorted(p.name for p in remote.iterdir()) == sorted([*tar_names(build), "README.md", "manifest.json"])
    assert all((remote / n).read_bytes() == (build / n).read_bytes() for n in tar_names(build))
    uploads = hub.calls("upload_folder")
    assert uploads[-1]["files"] == ["README.md", "manifest.json"]  # last: a reader never sees absent shards
    assert sorted(f for call in uploads[:-1] for f in call["files"]) == tar_names(build)
    assert hub.calls("create_repo")[0]["repo_type"] == "dataset"
    card = (remote / "README.md").read_text()
    header = yaml.safe_load(card.split("---")[1])
    assert header["license"] == "cc0-1.0" and header["configs"][0]["data_files"] == [
        {"split": "train", "path": "train-*.tar"}, {"split": "validation", "path": "val-*.tar"}]
    manifest = load_manifest(build)
    assert f"| train | {manifest.num_samples('train')} | {len(manifest.split('train').shards)} |" in card
    assert f"--shards hf://datasets/{REPO}" in card


def test_datasets_reads_the_pushed_repo_as_webdataset(build, hub, tmp_path):
    import datasets

    push_shards(build, REPO, policy=QUICK, echo=lambda line: None)
    loaded = datasets.load_dataset(str(hub.remote(REPO)), cache_dir=str(tmp_path / "hf-cache"))
    manifest = load_manifest(build)
    assert {name: len(split) for name, split in loaded.items()} == {
        "train": manifest.num_samples("train"), "validation": manifest.num_samples("val")}
    row = loaded["validation"][0]
    assert {"__key__", "jpg", "json"} <= set(row) and row["jpg"].size[0] > 0
    assert set(row["json"]["labels"]) == {"artist", "genre", "style"}


def test_a_push_resumes_sending_only_what_the_repo_lacks(build, hub):
    names = tar_names(build)
    remote = hub.remote(REPO)
    remote.mkdir(parents=True)
    for name in names[:5]:  # committed by an earlier, interrupted push
        shutil.copy2(build / name, remote / name)
    (remote / names[5]).write_bytes(b"an older build's shard")  # same name, other bytes: sent again
    hub.fail_times = 1  # and the first call (create_repo) fails once: retried
    push_shards(build, REPO, policy=QUICK, echo=lambda line: None)
    sent = sorted(f for call in hub.calls("upload_folder")[:-1] for f in call["files"])
    assert sent == names[5:]
    assert (remote / names[5]).read_bytes() == (build / names[5]).read_bytes()
    assert len(hub.calls("create_repo")) == 2


def test_the_command_checks_the_push_flags_before_building(tmp_path, monkeypatch, capsys, hub):
    out = tmp_path / "new"
    common = ["--out", str(out), "--synthetic", "40", "--synthetic-max-side", "64", "--short-side", "32",
              "--workers", "0", "--no-progress"]
    assert build_main([*common, "--push-to-hub", "not a repo id"]) == 2
    assert "--push-to-hub 'not a repo id': not a valid repo id" in capsys.readouterr().err
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "no-token-home"))
    assert build_main([*common, "--push-to-hub", REPO]) == 2
    assert "no Hugging Face token" in capsys.readouterr().err and not out.exists()  # nothing built
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    assert build_main([*common, "--verify", "--push-to-hub", REPO]) == 0
    assert json.loads((hub.remote(REPO) / "manifest.json").read_text()) == json.loads((out / "manifest.json").read_text())


def test_a_build_pushes_its_shards_while_it_runs_and_each_once(tmp_path, monkeypatch, hub):
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    out = tmp_path / "built"
    assert build_main(["--out", str(out), "--synthetic", "160", "--synthetic-max-side", "64", "--short-side", "32",
                       "--workers", "0", "--no-progress", "--shard-size", "10", "--push-to-hub", REPO]) == 0
    uploads = hub.calls("upload_folder")
    # The first shards went up from the background thread while the build was still writing the
    # others: the manifest (written at the end of the build) was not there yet.
    assert "manifest.json" not in uploads[0]["present"] and uploads[0]["files"][0].endswith(".tar")
    assert uploads[-1]["files"] == ["README.md", "manifest.json"]
    sent = [f for call in uploads[:-1] for f in call["files"]]
    assert sorted(sent) == tar_names(out)  # every shard once: the final push skipped those already there
