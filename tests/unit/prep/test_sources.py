"""Sources: the ArtGAN reader on files in the real quirky format, the leak rule, the HF source
on local copies (save_to_disk and parquet), and the deterministic stratified val split."""

from __future__ import annotations

import io
import random
import time
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from tests.support.artgan import ARTGAN_IMAGES, ARTGAN_ROWS, ARTGAN_TRAIN, ARTGAN_VAL, write_artgan
from tests.support.hf_dataset import HF_ARTISTS, HF_GENRES, HF_STYLES, hf_dataset
from wikiart.formats.labels import ARTGAN_ARTISTS
from wikiart.prep.sources import (ArtGANSource, SourceError, make_key, read_split_file, stratified_val_split)


def by_path(records):
    return {r.source: r for r in records}


# ---------------------------------------------------------------------------------------------
# ArtGAN
# ---------------------------------------------------------------------------------------------
def test_artgan_joins_task_files_into_one_record_per_image(artgan):
    images, csvs = artgan
    source = ArtGANSource(images, csvs)
    records = by_path(source.index())
    assert set(records) == set(ARTGAN_IMAGES.values())
    assert source.classes["artist"] == list(ARTGAN_ARTISTS)
    a = records[ARTGAN_IMAGES["A"]]
    assert a.labels == {"artist": 4, "genre": 4, "style": 12}
    assert records[ARTGAN_IMAGES["G"]].labels == {"artist": -1, "genre": 4, "style": 21}
    assert records[ARTGAN_IMAGES["H"]].labels == {"artist": -1, "genre": -1, "style": 12}
    # the path with a comma and the "(1)" survive parsing
    assert records[ARTGAN_IMAGES["F"]].labels["style"] == 7
    assert records[ARTGAN_IMAGES["C"]].labels == {"artist": 22, "genre": 4, "style": 20}
    assert source.stats["duplicate_rows"] == 1 and source.stats["conflicting_labels"] == 0
    keys = [r.key for r in records.values()]
    assert len(set(keys)) == len(keys) and not any("." in k or "/" in k for k in keys)


def test_a_painting_in_both_splits_of_a_task_takes_the_val_files_label(tmp_path):
    """It goes to val (the leak rule), so the label it is scored on must be the val file's, even
    though the train file is read first by name."""
    rows = {key: list(entries) for key, entries in ARTGAN_ROWS.items()}
    rows[("genre", "train")].append(("C", 9))   # genre_val.csv says 4
    images, csvs = write_artgan(tmp_path, rows)
    source = ArtGANSource(images, csvs)
    c = by_path(source.index())[ARTGAN_IMAGES["C"]]
    assert c.split == "val" and c.labels["genre"] == 4
    assert source.stats["conflicting_labels"] == 1
    assert source.stats["conflict_examples"] == [f"genre_train.csv:8 {ARTGAN_IMAGES['C']}"]


def test_leak_rule_moves_val_images_of_any_task_out_of_train(artgan):
    source = ArtGANSource(*artgan)
    records = by_path(source.index())
    split_of = {letter: records[rel].split for letter, rel in ARTGAN_IMAGES.items()}
    assert {k for k, s in split_of.items() if s == "train"} == ARTGAN_TRAIN
    assert {k for k, s in split_of.items() if s == "val"} == ARTGAN_VAL
    assert source.moved_to_val == 3
    assert source.stats["moved_by_task"] == {"artist": 1, "genre": 1, "style": 1}
    # a moved image keeps the labels of the task that listed it for training
    assert records[ARTGAN_IMAGES["B"]].labels == {"artist": 4, "genre": 4, "style": 12}


def test_header_blank_line_and_double_comma_are_parsed(tmp_path):
    path = tmp_path / "artist_train"
    path.write_text("(Path to image),, (Groundtruth class)\n\nRealism/a.jpg,,3\r\nRealism/b, c.jpg,,0\n")
    assert read_split_file(path, 23) == [("Realism/a.jpg", 3, 3), ("Realism/b, c.jpg", 0, 4)]


def test_only_genre_and_style_files_give_those_tasks(tmp_path):
    rows = {k: v for k, v in ARTGAN_ROWS.items() if k[0] != "artist"}
    source = ArtGANSource(*write_artgan(tmp_path, rows))
    records = source.index()
    assert list(source.classes) == ["genre", "style"]
    assert all(set(r.labels) == {"genre", "style"} for r in records)
    assert source.moved_to_val == 2   # B no longer val (its artist file is absent)


def test_split_files_in_per_task_subfolders_are_found(artgan):
    images, csvs = artgan
    for task in ("Artist", "Genre", "Style"):
        (csvs / task).mkdir()
        for path in csvs.glob(f"{task.lower()}_*"):
            path.rename(csvs / task / path.name)
    (csvs / "Style" / "style_class.txt").write_text("".join(f"{i} s{i}\n" for i in range(27)))
    source = ArtGANSource(images, csvs)
    assert len(source.index()) == 10 and source.moved_to_val == 3
    assert source.stats["split_files"]["genre_val"] == "Genre/genre_val.csv"
    assert source.classes["style"][0] == "s0"


def test_class_files_override_builtin_names(artgan):
    images, csvs = artgan
    (csvs / "genre_class.txt").write_text("".join(f"{i} g{i}\n" for i in range(10)))
    source = ArtGANSource(images, csvs)
    source.index()
    assert source.classes["genre"] == [f"g{i}" for i in range(10)]
    assert source.stats["class_files"]["genre"] == "genre_class.txt"
    assert source.stats["class_files"]["style"] == "built-in"


@pytest.mark.parametrize("line, message", [
    ("../outside.jpg,3", "escapes the image root"),
    ("/etc/passwd,3", "escapes the image root"),
    ("Realism/x.jpg,10", "label 10 out of range 0..9"),
    ("Realism/x.jpg", "expected 'relative/path.jpg,label'"),
])
def test_bad_csv_lines_name_file_and_line(tmp_path, line, message):
    images, csvs = write_artgan(tmp_path)
    path = csvs / "genre_train.csv"
    path.write_text(path.read_text() + line + "\n")
    with pytest.raises(SourceError, match=message) as err:
        ArtGANSource(images, csvs).index()
    assert f"genre_train.csv:{len(ARTGAN_ROWS[('genre', 'train')]) + 1}" in str(err.value)


def test_empty_split_file_is_an_error(artgan):
    images, csvs = artgan
    (csvs / "style_val.csv").write_text("\n")
    with pytest.raises(SourceError, match="style_val.csv: no rows"):
        ArtGANSource(images, csvs).index()


def test_missing_images_fail_with_count_and_examples_unless_allowed(artgan):
    images, csvs = artgan
    (images / ARTGAN_IMAGES["E"]).unlink()
    (images / ARTGAN_IMAGES["J"]).unlink()
    with pytest.raises(SourceError, match=r"2 of 10 images .* missing \(e\.g\. .*rembrandt_night-watch"):
        ArtGANSource(images, csvs).index()
    source = ArtGANSource(images, csvs, allow_missing=True)
    records = source.index()
    assert len(records) == 8
    assert sorted(s["source"] for s in source.skipped) == sorted([ARTGAN_IMAGES["E"], ARTGAN_IMAGES["J"]])
    assert all(s["reason"].startswith("missing") for s in source.skipped)


def test_missing_roots_and_empty_csv_dir_are_errors(tmp_path, artgan):
    images, csvs = artgan
    with pytest.raises(SourceError, match="--images-root: directory not found"):
        ArtGANSource(tmp_path / "nope", csvs)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SourceError, match="no split files"):
        ArtGANSource(images, empty).index()
    for name in ("artist_train", "artist_val"):
        (csvs / name).unlink()
    with pytest.raises(SourceError, match=r"--tasks: \['artist'\] not available"):
        ArtGANSource(images, csvs, tasks=["genre", "artist"]).index()
    only_genre = ArtGANSource(images, csvs, tasks=["genre"])
    assert all(set(r.labels) == {"genre"} for r in only_genre.index())


def test_make_key_is_stable_unique_and_dot_free():
    a, b = make_key("Cubism/x.y.jpg"), make_key("Cubism/x_y.jpg")
    assert a == make_key("Cubism/x.y.jpg") and a != b
    assert "." not in a and len(make_key("x" * 500)) < 80


# ---------------------------------------------------------------------------------------------
# Stratified split
# ---------------------------------------------------------------------------------------------
def test_stratified_split_is_deterministic_order_free_and_proportional():
    keys = [f"hf-{i:07d}" for i in range(3000)]
    strata = [i % 7 if i % 3 else 0 for i in range(3000)]   # imbalanced: class 0 is large
    split = stratified_val_split(keys, strata, 0.1)
    order = list(range(3000))
    random.Random(1).shuffle(order)
    shuffled = stratified_val_split([keys[i] for i in order], [strata[i] for i in order], 0.1)
    assert {keys[i] for i, v in zip(order, shuffled) if v} == {k for k, v in zip(keys, split) if v}
    for cls, total in Counter(strata).items():
        in_val = sum(v for v, s in zip(split, strata) if s == cls)
        assert in_val == round(0.1 * total)
    # not simply the first keys of each class
    assert not all(split[i] for i in range(10))


# ---------------------------------------------------------------------------------------------
# Hugging Face datasets (local copies, offline)
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hf_copies(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    ds = hf_dataset()
    ds.save_to_disk(str(root / "disk"))
    (root / "parquet").mkdir()
    ds.select(range(25)).to_parquet(str(root / "parquet" / "train-00000-of-00002.parquet"))
    ds.select(range(25, 40)).to_parquet(str(root / "parquet" / "train-00001-of-00002.parquet"))
    return root


def test_hf_local_copy_maps_classes_and_drops_unknown(hf_copies):
    from wikiart.prep.sources_hf import HFSource

    source = HFSource(str(hf_copies / "disk"), val_frac=0.25)
    records = source.index()
    assert source.classes == {"artist": ["claude-monet", "rembrandt"], "genre": ["landscape", "portrait"],
                              "style": HF_STYLES}
    assert not source.sequential
    row4 = next(r for r in records if r.pos == 4)   # artist 1 -> 0, genre 1 -> 1, style 1 (i % 4 == 0)
    assert row4.labels == {"artist": 0, "genre": 1, "style": 1}
    row3 = next(r for r in records if r.pos == 3)   # Unknown Artist (0) -> -1
    assert row3.labels["artist"] == -1 and row3.labels["genre"] == 0
    assert Counter(r.split for r in records) == Counter({"train": 30, "val": 10})
    image = next(iter(source.iter_images([row4]))).image
    assert np.asarray(Image.open(io.BytesIO(image)))[0, 0, 0] == pytest.approx(24, abs=3)

    keep = HFSource(str(hf_copies / "disk"), keep_unknown=True)
    keep.index()
    assert keep.classes["artist"] == HF_ARTISTS and keep.classes["genre"] == HF_GENRES


def test_hf_parquet_streams_with_the_same_keys_labels_and_split(hf_copies):
    from wikiart.prep.sources_hf import HFSource

    disk = HFSource(str(hf_copies / "disk"), val_frac=0.25)
    stream = HFSource(str(hf_copies / "parquet"), val_frac=0.25)
    assert stream.sequential
    disk_records, stream_records = disk.index(), stream.index()
    assert [(r.key, r.labels, r.split) for r in disk_records] == [(r.key, r.labels, r.split) for r in stream_records]
    wanted = [stream_records[30], stream_records[2]]
    got = list(stream.iter_images(wanted))
    assert [r.pos for r in got] == [2, 30]   # streamed in source order
    expected = {r.pos: r.image for r in disk.iter_images(wanted)}
    assert all(r.image == expected[r.pos] for r in got)
    # running again (another process or machine) gives the same val split
    again = HFSource(str(hf_copies / "parquet"), val_frac=0.25).index()
    assert [r.split for r in again] == [r.split for r in stream_records]


def test_hf_parquet_folder_of_several_splits_reads_only_the_asked_one(tmp_path):
    """The Hub's layout: data/<split>-NNNNN-of-NNNNN.parquet. --hf-split picks the files."""
    from wikiart.prep.sources_hf import HFSource

    ds = hf_dataset(40)
    (tmp_path / "data").mkdir()
    ds.select(range(30)).to_parquet(str(tmp_path / "data" / "train-00000-of-00001.parquet"))
    ds.select(range(30, 40)).to_parquet(str(tmp_path / "data" / "test-00000-of-00001.parquet"))
    assert len(HFSource(str(tmp_path)).index()) == 30
    assert len(HFSource(str(tmp_path), split="test").index()) == 10
    with pytest.raises(SourceError, match=r"no parquet files of split 'validation' \(it has \['test', 'train'\]"):
        HFSource(str(tmp_path), split="validation")
    # datasets would quietly drop a file named after no split once others are: refused instead
    (tmp_path / "more").mkdir()
    ds.select(range(5)).to_parquet(str(tmp_path / "more" / "part2.parquet"))
    with pytest.raises(SourceError, match=r"1 parquet file\(s\) belong to no split .*more/part2.parquet"):
        HFSource(str(tmp_path))


def test_a_file_that_is_not_utf8_is_named_with_its_line_after_a_byte_order_mark(tmp_path):
    from wikiart.prep.sources import read_text_lines

    path = tmp_path / "genre_train.csv"
    path.write_bytes(b"\xef\xbb\xbfa.jpg,1\nb.jpg,2\n\xe7.jpg,3\n")
    with pytest.raises(SourceError, match=r"genre_train.csv:3: not UTF-8 text \(byte 0xe7 at offset 19\)"):
        read_text_lines(path)
    path.write_bytes(b"\xef\xbb\xbfa.jpg,1\n")
    assert read_text_lines(path) == ["a.jpg,1"]


def test_hf_hub_name_offline_fails_fast_with_instructions(monkeypatch):
    from wikiart.prep.sources_hf import HFSource

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(SourceError, match=r"not reachable .*--hf-dataset DIR"):
        HFSource("huggan/wikiart")
    assert time.monotonic() - start < 5


def test_hf_directory_without_a_dataset_is_an_error(tmp_path):
    from wikiart.prep.sources_hf import HFSource

    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(SourceError, match="neither a save_to_disk directory nor parquet"):
        HFSource(str(tmp_path))


def test_hub_probe_reports_an_unreachable_endpoint_quickly(monkeypatch):
    from wikiart.prep.sources_hf import _hub_unreachable

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")   # discard port: nothing listens
    start = time.monotonic()
    reason = _hub_unreachable(timeout=1.0)
    assert reason and "127.0.0.1" in reason and time.monotonic() - start < 3
