"""Shard builder, in-process: round trip, determinism, parts + merge, other readers, bad CLI
(failed and killed builds: tests/faults/test_shards.py)."""

from __future__ import annotations

import io
import json
import sys
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from tests.support.artgan import ARTGAN_IMAGES, ARTGAN_VAL, write_artgan
from tests.support.hf_dataset import hf_dataset
from tests.support.shards import build_shards_with, build_small_synthetic, tar_contents
from wikiart.formats.images import target_size
from wikiart.formats.manifest import load_manifest
from wikiart.cli.build_shards import main
from wikiart.prep.build import BuildConfig, BuildError, build_shards, merge_manifests, parse_build_config, plan_shards
from wikiart.formats.shard import iter_shard_samples
from wikiart.prep.write import STATE_DIR, verify_shards
from wikiart.prep.sources import Record, SyntheticSource, make_key


# ---------------------------------------------------------------------------------------------
# Round trip
# ---------------------------------------------------------------------------------------------
def test_synthetic_round_trip_keys_labels_images(synthetic_shards):
    import webdataset as wds

    manifest = load_manifest(synthetic_shards)
    assert len(manifest.splits["train"].shards) >= 8 and len(manifest.splits["val"].shards) >= 4
    expected = {r.key: r for r in SyntheticSource(500, seed=0, max_side=96, val_frac=0.2).index()}
    seen = {}
    for split in ("train", "val"):
        dataset = wds.WebDataset(manifest.shard_paths(split), shardshuffle=False, empty_check=False)
        for sample in dataset:
            meta = json.loads(sample["json"])
            rec = expected[sample["__key__"]]
            assert meta["labels"] == rec.labels and rec.split == split == meta["split"]
            img = Image.open(io.BytesIO(sample["jpg"]))
            assert img.mode == "RGB" and img.size == target_size(tuple(meta["orig_size"]), 64, 192)
            seen[sample["__key__"]] = meta["labels"]
    assert seen.keys() == expected.keys()
    for split in ("train", "val"):
        counts = Counter(lab["genre"] for k, lab in seen.items() if expected[k].split == split)
        assert manifest.class_counts(split, "genre") == [counts[i] for i in range(6)]
        assert manifest.num_samples(split) == sum(1 for r in expected.values() if r.split == split)


def test_train_shards_mix_classes(synthetic_shards):
    manifest = load_manifest(synthetic_shards)
    for path in manifest.shard_paths("train"):
        genres = {meta["labels"]["genre"] for _, _, meta in iter_shard_samples([path])}
        assert len(genres - {-1}) >= 4, f"{path} holds too few genres: shuffled before writing?"


def test_plan_respects_shard_size_min_shards_and_seed():
    records = [Record(key=make_key(f"p{i}"), labels={"genre": i % 3}, split="train" if i % 10 else "val",
                      source=f"p{i}", pos=i) for i in range(2500)]
    cfg = BuildConfig(out="x", shard_size=1000, min_shards=8, min_val_shards=4)
    plans = plan_shards(records, cfg)
    sizes = [len(p.records) for p in plans if p.split == "train"]
    assert len(sizes) == 8 and max(sizes) - min(sizes) <= 1 and sum(sizes) == 2250
    assert sorted(len(p.records) for p in plans if p.split == "val") == [62, 62, 63, 63]
    assert len([p for p in plan_shards(records, BuildConfig(out="x", shard_size=100)) if p.split == "train"]) == 23
    tiny_mb = BuildConfig(out="x", short_side=448, shard_mb=10.0)   # ~98 kB per image -> ~100 per shard
    assert len([p for p in plan_shards(records, tiny_mb) if p.split == "train"]) == 23
    again = plan_shards(list(reversed(records)), cfg)
    assert [[r.key for r in p.records] for p in plans] == [[r.key for r in p.records] for p in again]
    other = plan_shards(records, BuildConfig(out="x", seed=1))
    assert [r.key for r in other[0].records] != [r.key for r in plans[0].records]
    assert len(plan_shards(records[:5], cfg)) == 5   # min shards only where the count allows
    huge = BuildConfig(out="x", short_side=0, shard_mb=0.001)  # originals' byte estimate: >> 1 shard each
    assert [len(p.records) for p in plan_shards(records[:30], huge)] == [1] * 30  # never an empty shard


def test_artgan_build_end_to_end(artgan, tmp_path):
    images, csvs = artgan
    manifest = build_shards_with(tmp_path / "out", "--images-root", str(images), "--csv-dir", str(csvs),
                     "--short-side", "16", "--workers", "0")
    assert manifest.moved_to_val == 3 and manifest.source["moved_by_task"] == {"artist": 1, "genre": 1, "style": 1}
    val = {meta["source"]: meta for _, _, meta in iter_shard_samples(manifest.shard_paths("val"))}
    assert set(val) == {ARTGAN_IMAGES[k] for k in ARTGAN_VAL}
    assert val[ARTGAN_IMAGES["B"]]["labels"] == {"artist": 4, "genre": 4, "style": 12}
    train = [meta for _, jpg, meta in iter_shard_samples(manifest.shard_paths("train"))]
    assert len(train) == 5 and all(meta["size"] == [21, 16] and meta["orig_size"] == [40, 30] for meta in train)
    assert manifest.class_counts("train", "style")[20] == 1 and manifest.class_counts("val", "style")[20] == 1
    assert verify_shards(tmp_path / "out") == []


def test_short_side_zero_keeps_original_jpeg_bytes(artgan, tmp_path):
    images, csvs = artgan
    manifest = build_shards_with(tmp_path / "out", "--images-root", str(images), "--csv-dir", str(csvs),
                     "--short-side", "0", "--workers", "0")
    for _, jpg, meta in iter_shard_samples(manifest.shard_paths("train")):
        assert jpg == (images / meta["source"]).read_bytes()


def test_short_side_zero_stores_a_jpeg_with_trailing_bytes_up_to_its_end_marker(tmp_path):
    """Bytes after a JPEG's end-of-image marker (padding, vendor data) decode fine, but the loader
    takes a JPEG without the marker near its end for truncated: such a file is stored without them,
    and the loader reads every sample the manifest counts."""
    from wikiart.data.stream import check_image_bytes
    images, csvs = write_artgan(tmp_path / "src")
    padded = images / ARTGAN_IMAGES["A"]
    original = padded.read_bytes()
    padded.write_bytes(original + b"\x00" * 200)
    manifest = build_shards_with(tmp_path / "out", "--images-root", str(images), "--csv-dir", str(csvs),
                     "--short-side", "0", "--workers", "0")
    stored = {meta["source"]: jpg for split in ("train", "val")
              for _, jpg, meta in iter_shard_samples(manifest.shard_paths(split))}
    assert len(stored) == manifest.num_samples("train") + manifest.num_samples("val") == len(ARTGAN_IMAGES)
    assert stored[ARTGAN_IMAGES["A"]] == original
    for jpg in stored.values():
        check_image_bytes(jpg)  # raises CorruptSample for what the loader would skip


def test_hf_parquet_build_matches_save_to_disk_build(tmp_path):

    ds = hf_dataset(40)
    ds.save_to_disk(str(tmp_path / "disk"))
    ds.to_parquet(str(tmp_path / "data.parquet"))
    common = ["--short-side", "16", "--workers", "0", "--val-frac", "0.25", "--min-shards", "3", "--min-val-shards", "2"]
    disk = build_shards_with(tmp_path / "a", "--hf-dataset", str(tmp_path / "disk"), *common)
    stream = build_shards_with(tmp_path / "b", "--hf-dataset", str(tmp_path / "data.parquet"), *common)
    assert disk.classes == stream.classes and disk.classes["artist"] == ["claude-monet", "rembrandt"]
    for split in ("train", "val"):
        for a, b in zip(disk.shard_paths(split), stream.shard_paths(split)):
            keys_a = {k: meta["labels"] for k, _, meta in iter_shard_samples([a])}
            keys_b = [(k, meta["labels"]) for k, _, meta in iter_shard_samples([b])]
            assert dict(keys_b) == keys_a
            assert [k for k, _ in keys_b] == sorted(k for k, _ in keys_b)   # streamed: source order
    assert disk.num_samples("val") == 10


# ---------------------------------------------------------------------------------------------
# Determinism, parts, resume, verify
# ---------------------------------------------------------------------------------------------
def test_build_is_byte_identical_across_worker_counts(tmp_path):
    one = build_small_synthetic(tmp_path / "w0")
    two = build_small_synthetic(tmp_path / "w2", 60, "--workers", "2")
    assert tar_contents(tmp_path / "w0") == tar_contents(tmp_path / "w2")
    assert one.to_json() == two.to_json()


def test_parts_plus_merge_equal_single_build(tmp_path):
    single = build_small_synthetic(tmp_path / "single")
    out = tmp_path / "parts"
    for part in (0, 2):
        assert build_small_synthetic(out, 60, "--num-parts", "3", "--part", str(part)) is None
    with pytest.raises(ValueError, match=r"parts \[1\] of 3 have not finished"):
        merge_manifests(out)
    assert not (out / "manifest.json").exists()
    build_small_synthetic(out, 60, "--num-parts", "3", "--part", "1")
    assert main(["--out", str(out), "--merge-manifests"]) == 0
    assert tar_contents(out) == tar_contents(tmp_path / "single")
    assert json.loads((out / "manifest.json").read_text()) == single.to_json()
    # Cut again into 2 parts: the 3-part manifests go, the merge counts every shard once.
    for part in (0, 1):
        build_small_synthetic(out, 60, "--num-parts", "2", "--part", str(part))
    assert sorted(p.name for p in out.glob("manifest-part-*")) == [
        "manifest-part-0000-of-0002.json", "manifest-part-0001-of-0002.json"]
    assert main(["--out", str(out), "--merge-manifests"]) == 0
    assert json.loads((out / "manifest.json").read_text()) == single.to_json()
    (out / "manifest-part-0000-of-0003.json").write_text((out / "manifest-part-0000-of-0002.json").read_text()
                                                         .replace('"num_parts": 2', '"num_parts": 3'))
    with pytest.raises(BuildError, match=r"part manifests of --num-parts \[2, 3\]"):
        merge_manifests(out)


def test_parts_overwriting_a_build_of_more_shards_leave_none_of_its_shards(tmp_path):
    """A single build of 4+ shards, replaced by a 2-part build of fewer: the old build's extra
    shards and state records go, so a finished part re-run is verified (not refused as another
    build) and the merged manifest stays."""
    out = tmp_path / "out"
    old = build_small_synthetic(out, 60, "--seed", "1")  # another build
    new_args = ["--min-shards", "2", "--min-val-shards", "1", "--overwrite"]
    for part in (0, 1):
        build_small_synthetic(out, 60, "--num-parts", "2", "--part", str(part), *new_args)
    assert main(["--out", str(out), "--merge-manifests"]) == 0
    merged = load_manifest(out)
    planned = {s["name"] for split in ("train", "val") for s in merged.to_json()["splits"][split]["shards"]}
    assert len(planned) < len(old.shard_paths("train")) + len(old.shard_paths("val"))
    assert {p.name for p in out.glob("*.tar")} == planned
    assert {p.name.removesuffix(".json") for p in (out / STATE_DIR).glob("*.json")} == planned
    assert build_small_synthetic(out, 60, "--num-parts", "2", "--part", "0", "--min-shards", "2", "--min-val-shards", "1") is None
    assert load_manifest(out).to_json() == merged.to_json()
    assert verify_shards(out) == []


def test_different_build_in_same_out_needs_overwrite(tmp_path):
    out = tmp_path / "out"
    build_small_synthetic(out, 60)
    with pytest.raises(ValueError, match="different build .* --overwrite"):
        build_small_synthetic(out, 40)
    manifest = build_small_synthetic(out, 40, "--overwrite", "--min-shards", "2")
    assert set(tar_contents(out)) == {s.name for split in manifest.splits.values() for s in split.shards}
    assert manifest.num_samples("train") + manifest.num_samples("val") == 40


# ---------------------------------------------------------------------------------------------
# Other readers
# ---------------------------------------------------------------------------------------------
def test_datasets_library_reads_the_shards(synthetic_shards, tmp_path):
    import datasets

    manifest = load_manifest(synthetic_shards)
    loaded = datasets.load_dataset("webdataset", data_files={"val": manifest.shard_paths("val")}, split="val",
                                   cache_dir=str(tmp_path / "cache"))
    assert loaded.num_rows == manifest.num_samples("val")
    row = loaded[0]
    assert row["jpg"].mode == "RGB" and set(row["json"]["labels"]) == {"artist", "genre", "style"}
    genres = Counter(r["labels"]["genre"] for r in loaded["json"])
    assert [genres[i] for i in range(6)] == manifest.class_counts("val", "genre")


# ---------------------------------------------------------------------------------------------
# Bad command lines
# ---------------------------------------------------------------------------------------------
def _bad_inputs(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    images, csvs = write_artgan(tmp_path / "data")
    bad_label = tmp_path / "bad_label"
    bad_label.mkdir()
    (bad_label / "style_train.csv").write_text(f"{ARTGAN_IMAGES['A']},27\n")
    empty = tmp_path / "empty_csv"
    empty.mkdir()
    (empty / "genre_train.csv").write_text("")
    return {
        "no source": ([], "give exactly one source"),
        "missing root": (["--images-root", str(tmp_path / "nope"), "--csv-dir", str(csvs)], "--images-root"),
        "unknown task": (["--synthetic", "10", "--tasks", "colour"], "--tasks: unknown task"),
        "label range": (["--images-root", str(images), "--csv-dir", str(bad_label)], "style_train.csv:1"),
        "empty csv": (["--images-root", str(images), "--csv-dir", str(empty)], "genre_train.csv: no rows"),
        "bad part": (["--synthetic", "10", "--num-parts", "2", "--part", "2"], "--part"),
        "two sources": (["--synthetic", "10", "--hf-dataset", "x"], "exactly one source"),
    }


def test_bad_cli_inputs_exit_nonzero_with_one_line_and_write_nothing(tmp_path, capsys):
    for name, (args, message) in _bad_inputs(tmp_path).items():
        out = tmp_path / f"out_{name.replace(' ', '_')}"
        assert main(["--out", str(out), "--no-progress", *args]) == 2, name
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, (name, err)
        assert not out.exists(), name


def test_help_and_progress_bar(tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_build_config(["--help"])
    assert exit_info.value.code == 0 and "--num-parts" in capsys.readouterr().out

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    build_shards(parse_build_config(["--out", str(tmp_path / "out"), "--synthetic", "30", "--synthetic-max-side",
                                     "32", "--short-side", "16", "--workers", "0", "--progress"]))
    assert "img/s" in terminal.getvalue() and "skipped 0" in terminal.getvalue()
