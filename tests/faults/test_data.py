"""Damaged shards read through the training loader: corrupt samples are skipped and counted, a
truncated or damaged tar (compressed too) keeps the samples before the damage, a missing shard
file is named."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest

from tests.support.shards import keys_of, loader_config, make_shards, split_keys, train_epoch, write_tar
from wikiart.data.loader import build_eval_data, build_train_data
from wikiart.data.stream import iter_shard


# 3 workers on a 2-core machine is deliberate here.
pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")


CORRUPT = {3: "jpeg", 17: "truncated", 25: "json"}


@pytest.mark.faults
def test_corrupt_samples_are_skipped_and_counted(tmp_path, caplog):
    manifest = make_shards(tmp_path, {"train": [20, 20], "val": [20, 20]},
                           corrupt={"train": CORRUPT, "val": CORRUPT})
    bad = {f"val{i:05d}" for i in CORRUPT}
    info = build_eval_data(manifest, "val", loader_config(workers=2), rank=0, world_size=1)
    keys = keys_of(info.loader)
    assert sorted(keys) == sorted(set(split_keys(manifest, "val")) - bad)
    assert info.corrupt.count == 3  # counted across worker processes
    with caplog.at_level(logging.WARNING, logger="wikiart.formats.shard"):
        info, batches = train_epoch(manifest, loader_config(), world=1)
    assert len(batches) == info.num_batches == 5 and all(len(b["key"]) == 8 for b in batches)
    assert not {f"train{i:05d}" for i in CORRUPT} & set(keys_of(batches))
    assert info.corrupt.count >= 3
    assert "train00003" in caplog.text and "train00025" in caplog.text


@pytest.mark.faults
@pytest.mark.parametrize("extra", [0, 700])  # cut between members / inside a member
def test_damaged_tar_keeps_the_samples_before_the_damage(tmp_path, extra):
    manifest = make_shards(tmp_path, {"train": [16], "val": [12, 12]})
    path = manifest.shard_paths("val")[1]
    with open(path, "r+b") as fh:
        fh.truncate(os.path.getsize(path) // 2 + extra)
    info = build_eval_data(manifest, "val", loader_config(), rank=0, world_size=1)
    keys = keys_of(info.loader)
    assert keys == split_keys(manifest, "val")[:len(keys)] and 12 < len(keys) < 24
    assert info.corrupt.count == 24 - len(keys)  # lost samples are counted, no crash


@pytest.mark.faults
def test_missing_shard_file_is_named(tmp_path):
    manifest = make_shards(tmp_path, {"train": [8, 8], "val": [8]})
    os.remove(manifest.shard_paths("train")[1])
    with pytest.raises(FileNotFoundError, match="train-000001.tar"):
        build_train_data(manifest, loader_config(), rank=0, world_size=1, epoch=0, seed=0)


@pytest.mark.faults
@pytest.mark.parametrize("mode", ["w:gz", "w:xz", "w:bz2"])
@pytest.mark.parametrize("damage", ["truncate", "overwrite"])
def test_damaged_compressed_shard_keeps_the_samples_before_the_damage(tmp_path, caplog, mode, damage):
    rng = np.random.default_rng(0)  # incompressible payloads: the damage lands mid-shard
    members = [(f"{i:03d}.{ext}", rng.bytes(2000)) for i in range(30) for ext in ("jpg", "json")]
    path = tmp_path / "s.tar.x"
    write_tar(path, mode, members)
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2: len(data) // 2 + 300] = bytes(300)
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="wikiart.formats.shard"):
        samples = list(iter_shard(str(path)))
    # bzip2 compresses in 900 kB blocks: this whole shard is one, and any damage loses all of it.
    least = 0 if mode == "w:bz2" else 6
    assert least <= len(samples) < 30 and "is damaged" in caplog.text
    assert [s["__key__"] for s in samples] == [f"{i:03d}" for i in range(len(samples))]
    assert all(s["jpg"] == members[2 * i][1] for i, s in enumerate(samples))
