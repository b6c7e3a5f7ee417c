"""Fixtures shared by every test directory (unit, integration, faults, slurm, gpu); the helpers
they build on are in tests/support. Session-scoped: `synthetic_shards` (built in-process) and
`trained_run` (one train.py run), each built once per test process."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.artgan import write_artgan
from tests.support.hub import TOKEN
from tests.support.training import run_train

# Tests never reach the network: `datasets` and the hub client stay offline.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

FAULTS_DIR = Path(__file__).resolve().parent / "faults"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything in tests/faults is the fault suite: `-m faults` and `make faults` select the same."""
    for item in items:
        if FAULTS_DIR in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.faults)


@pytest.fixture(scope="session")
def synthetic_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of ~400 train + ~100 val synthetic samples (short side <= 64 px, long side <= 96),
    8 train and 4 val shards, with manifest.json. Built once per session, in-process (~2 s)."""
    from wikiart.prep.synthetic import build_synthetic_shards

    out = tmp_path_factory.mktemp("synthetic_shards")
    manifest = build_synthetic_shards(out, n=500, short_side=64, seed=0, max_side=96, val_frac=0.2,
                                      min_shards=8, min_val_shards=4, workers=0)
    assert len(manifest.splits["train"].shards) >= 8 and len(manifest.splits["val"].shards) >= 4
    return out


@pytest.fixture(scope="session")
def trained_run(synthetic_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run directory of a tiny `combined` model (3 heads) trained 20 steps by train.py on
    `synthetic_shards`: checkpoints/step-00000020/ and best/ hold the same weights. ~20 s.
    Trained once per `pytest -n` run, not once per worker: the first worker to ask trains it
    under a file lock in the directory the workers share; the tests only read it (the
    synthetic shards every worker builds are identical: same seed)."""
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp().parent if os.environ.get("PYTEST_XDIST_WORKER") \
        else tmp_path_factory.getbasetemp()
    out = shared / "trained" / "run"
    with FileLock(str(shared / "trained.lock")):
        if not (out / "best" / "model.safetensors").is_file():
            run_train(["--shards", str(synthetic_shards), "--out", str(out), "--task", "combined", "--epochs", "1",
                       "--max-steps", "20", "--workers", "1", "--backbone", "resnet18", "--image-size", "32",
                       "--batch-size", "8", "--proj-dim", "16", "--rnn-hidden", "16", "--rnn-layers", "1",
                       "--shuffle-buffer", "50", "--no-progress", "--balance", "none", "--no-pretrained"])
    return out


@pytest.fixture(scope="session")
def val_jpegs(synthetic_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """key -> a file holding that val painting's JPEG bytes exactly as stored in the shard."""
    from wikiart.formats.manifest import load_manifest
    from wikiart.formats.shard import iter_shard_samples

    out = tmp_path_factory.mktemp("predict_images")
    manifest = load_manifest(synthetic_shards)
    files = {}
    for key, jpg, _ in iter_shard_samples(manifest.shard_paths("val")[:1]):
        files[key] = out / f"{key}.jpg"
        files[key].write_bytes(jpg)
        if len(files) == 3:
            return files
    raise AssertionError("fewer than 3 val paintings")


@pytest.fixture
def artgan(tmp_path: Path) -> tuple[Path, Path]:
    """(images_root, csv_dir) of a 10-image ArtGAN download in the real quirky format."""
    return write_artgan(tmp_path)


# ----------------------------------------------------------------------------------------------
# The Hub: a token in the environment, and HfApi replaced by the recording double
# ----------------------------------------------------------------------------------------------
@pytest.fixture
def token(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    return TOKEN


@pytest.fixture
def double(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, token: str):
    """HfApi replaced in this process by a RecordingHfApi whose remote is under tmp_path."""
    from tests.support.hub_double import RecordingHfApi
    from wikiart.hub import repo as hub_repo

    api = RecordingHfApi(tmp_path / "hub_double")
    monkeypatch.setattr(hub_repo, "API_FACTORY", api)
    return api
