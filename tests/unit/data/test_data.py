"""Data streams on real tar shards with real DataLoader worker processes.

Ranks are simulated by building the loader of rank 0 and rank 1 of world size 2 in one process.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os

import numpy as np
import pytest
import torch

from tests.support.artgan import ARTGAN_IMAGES, ARTGAN_ROWS
from tests.support.shards import (CLASSES, keys_of, loader_config, make_shards, split_keys, train_epoch,
                                  write_tar)
from wikiart.config.options import DataConfig
from wikiart.data.loader import balance_task_for, build_eval_data, build_train_data, train_samples_for
from wikiart.data.stream import (CorruptSample, Sample, balance_weights, balanced, check_image_bytes,
                                 class_weigher, decode_image, iter_shard)
from wikiart.formats.manifest import ManifestError, load_manifest
from wikiart.data.transforms import AUG_SIZE


# 3 workers on a 2-core machine is deliberate here.
pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")
UNEVEN = [5, 50, 7, 90]  # 152 samples


def index_labels(index: int, rng: np.random.Generator) -> dict[str, int]:
    """Labels that can be recomputed from the key: checks labels travel with their image."""
    return {"artist": -1 if index % 10 == 0 else index % 3, "genre": index % 4, "style": index % 5}


def expected_labels(key: str) -> dict[str, int]:
    return index_labels(int(key[-5:]), np.random.default_rng())


@pytest.fixture(scope="module")
def uneven(tmp_path_factory):
    return make_shards(tmp_path_factory.mktemp("uneven"), {"train": UNEVEN, "val": UNEVEN},
                       label_fn=index_labels)


@pytest.mark.parametrize("workers", [0, 2, 3])
def test_every_rank_yields_the_same_number_of_full_batches(uneven, workers):
    cfg = loader_config(workers=workers)
    expected = 152 // (2 * 8)
    all_keys = []
    for rank in (0, 1):
        info, batches = train_epoch(uneven, cfg, rank=rank)
        assert info.num_batches == expected and len(info.loader) == expected
        assert len(batches) == expected  # not `workers` times too many, never short
        assert all(len(b["key"]) == 8 and b["image"].shape[0] == 8 for b in batches)
        all_keys += keys_of(batches)
    # Split by rank and worker: one epoch without balancing shows a sample at most once.
    assert len(all_keys) == len(set(all_keys)) == info.num_samples == expected * 16


@pytest.mark.parametrize("workers", [0, 2])
def test_a_single_task_epoch_reads_only_the_samples_labelled_for_it(uneven, workers):
    assert train_samples_for(uneven, "artist") == 152 - 16  # every 10th painting has no artist
    assert train_samples_for(uneven, "genre") == train_samples_for(uneven, "combined") == 152
    keys = []
    for rank in (0, 1):
        info, batches = train_epoch(uneven, loader_config(task="artist", workers=workers), rank=rank)
        assert info.num_batches == len(batches) == 136 // 16
        assert all(int(label) >= 0 for b in batches for label in b["labels"]["artist"])
        keys += keys_of(batches)
    assert len(keys) == len(set(keys)) == 8 * 16  # one pass, no sample twice


def test_a_reader_whose_range_has_no_labelled_sample_fills_its_batches_from_the_split(tmp_path):
    manifest = make_shards(tmp_path, {"train": [16, 16], "val": [8]},
                           label_fn=lambda i, rng: {"artist": 1 if i >= 16 else -1, "genre": 0, "style": 0})
    for rank in (0, 1):  # rank 0's range is the first shard: no artist label there
        info, batches = train_epoch(manifest, loader_config(task="artist"), rank=rank)
        assert info.num_batches == len(batches) == 1
        assert all(int(label) == 1 for label in batches[0]["labels"]["artist"])


def test_train_batch_format(uneven):
    info, batches = train_epoch(uneven, loader_config())
    batch = batches[0]
    assert batch["image"].dtype == torch.uint8 and batch["image"].shape == (8, 3, 32, 32)
    assert batch["image"].is_contiguous(memory_format=torch.channels_last)  # NHWC bytes: one copy to the GPU
    assert batch["aug"].shape == (8, AUG_SIZE) and batch["aug"].dtype == torch.float32
    assert set(batch["labels"]) == set(CLASSES)  # every task of the manifest, not only genre
    missing_artist = 0
    for b in batches:
        for i, key in enumerate(b["key"]):
            want = expected_labels(key)
            for task, tensor in b["labels"].items():
                assert tensor.dtype == torch.long and int(tensor[i]) == want[task], (key, task)
            missing_artist += want["artist"] == -1
    assert missing_artist > 0  # -1 travels through
    assert info.corrupt.count == 0


@pytest.mark.parametrize("world,workers,sizes", [(2, 2, UNEVEN), (2, 2, [37]), (3, 0, UNEVEN)])
def test_eval_scores_every_sample_exactly_once(tmp_path, world, workers, sizes):
    manifest = make_shards(tmp_path, {"train": [16], "val": sizes}, label_fn=index_labels)
    cfg = loader_config(workers=workers, eval_batch_size=6)
    keys = []
    for rank in range(world):
        info = build_eval_data(manifest, "val", cfg, rank=rank, world_size=world)
        batches = list(info.loader)
        assert len(batches) == info.num_batches
        assert all(1 <= len(b["key"]) <= 6 and b["image"].shape[1:] == (3, 32, 32) for b in batches)
        for b in batches:
            assert [int(g) for g in b["labels"]["genre"]] == [expected_labels(k)["genre"] for k in b["key"]]
        keys += keys_of(batches)
    assert info.num_samples == sum(sizes)
    assert len(keys) == len(set(keys)) and sorted(keys) == split_keys(manifest, "val")


def test_eval_images_are_deterministic(uneven):
    cfg = loader_config(workers=2)
    first = list(build_eval_data(uneven, "val", cfg, rank=1, world_size=2).loader)
    second = list(build_eval_data(uneven, "val", cfg, rank=1, world_size=2).loader)
    assert keys_of(first) == keys_of(second)
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(first, second))


def test_epochs_reshuffle_and_repeat_exactly(uneven):
    cfg = loader_config(workers=2)
    rng_before = torch.random.get_rng_state()
    _, epoch0 = train_epoch(uneven, cfg, epoch=0)
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # the trainer's RNG is untouched
    _, again = train_epoch(uneven, cfg, epoch=0)
    _, epoch1 = train_epoch(uneven, cfg, epoch=1)
    _, other_seed = train_epoch(uneven, cfg, epoch=0, seed=1)
    assert keys_of(epoch0) == keys_of(again)
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(epoch0, again))
    assert keys_of(epoch0) != keys_of(epoch1)
    assert keys_of(epoch0) != keys_of(other_seed)
    # Same keys in another order is not enough: the shard-to-rank assignment moves too.
    assert set(keys_of(epoch0)) != set(keys_of(epoch1))


@pytest.mark.parametrize("workers,skip", [(0, 5), (2, 3), (3, 4)])
def test_skip_batches_gives_the_rest_of_the_same_epoch(uneven, workers, skip):
    cfg = loader_config(workers=workers, balance="inverse")  # balancing draws must also line up
    _, full = train_epoch(uneven, cfg, rank=1, epoch=2, seed=7)
    info, rest = train_epoch(uneven, cfg, rank=1, epoch=2, seed=7, skip=skip)
    assert len(info.loader) == len(rest) == len(full) - skip
    assert keys_of(rest) == keys_of(full[skip:])
    for a, b in zip(rest, full[skip:]):
        assert torch.equal(a["image"], b["image"])  # same augmentations, not only same samples
        assert all(torch.equal(a["labels"][t], b["labels"][t]) for t in a["labels"])


def test_skip_past_the_end_yields_nothing(uneven):
    info, rest = train_epoch(uneven, loader_config(workers=2), skip=50)
    assert rest == [] and len(info.loader) == 0


SKEWED_COUNTS = [240, 120, 80, 40]  # genre
# Classes mixed over the shards, as the shard builder's shuffled records give.
SKEWED_GENRE = np.random.default_rng(5).permutation(np.repeat(np.arange(4), SKEWED_COUNTS))


def skewed_labels(index: int, rng: np.random.Generator) -> dict[str, int]:
    return {"artist": 0, "genre": int(SKEWED_GENRE[index]), "style": 0}


@pytest.fixture(scope="module")
def skewed(tmp_path_factory):
    return make_shards(tmp_path_factory.mktemp("skewed"), {"train": [100, 130, 90, 160], "val": [8]},
                       label_fn=skewed_labels, image_size=(36, 36))


@pytest.mark.parametrize("mode,power", [("inverse", 1.0), ("sqrt", 0.5), ("none", 0.0)])
def test_balanced_epoch_matches_target_histogram(skewed, mode, power):
    assert skewed.class_counts("train", "genre") == SKEWED_COUNTS
    cfg = loader_config(batch_size=16, balance=mode, shuffle_buffer=200)
    histogram = collections.Counter()
    for rank in (0, 1):
        info, batches = train_epoch(skewed, cfg, rank=rank, epoch=3)
        assert len(batches) == info.num_batches == 15  # balancing keeps the epoch length
        histogram.update(int(g) for b in batches for g in b["labels"]["genre"])
    target = np.asarray(SKEWED_COUNTS, dtype=float) ** (1 - power)
    target /= target.sum()
    observed = np.asarray([histogram[c] for c in range(4)]) / sum(histogram.values())
    np.testing.assert_allclose(observed, target, atol=0.045)


def test_balance_weights_and_repeat_drop():
    counts = [300, 100, 0, 50]
    for mode in ("inverse", "sqrt"):
        w = balance_weights(counts, mode)
        assert np.isclose(np.dot(counts, w), sum(counts))  # stream length unchanged
        assert w[2] == 0
    inverse = balance_weights(counts, "inverse")
    assert np.allclose(np.asarray(counts)[[0, 1, 3]] * inverse[[0, 1, 3]], 150)  # uniform
    weights = np.asarray([0.25, 2.5])
    samples = [Sample(f"k{i}", b"", {"style": i % 3 - 1}) for i in range(3000)]  # -1, 0, 1
    out = collections.Counter(s.key for s in balanced(samples, class_weigher("style", weights), np.random.default_rng(0)))
    by_label = {lab: [out[s.key] for s in samples if s.labels["style"] == lab] for lab in (-1, 0, 1)}
    assert set(by_label[-1]) == {1}  # missing label: weight 1
    assert set(by_label[1]) == {2, 3} and abs(np.mean(by_label[1]) - 2.5) < 0.08
    assert set(by_label[0]) == {0, 1} and abs(np.mean(by_label[0]) - 0.25) < 0.05


def test_balance_task_defaults_to_the_three_tasks_mean_on_the_intersection_and_style_on_the_union():
    assert balance_task_for(DataConfig(task="combined")) == "all"
    assert balance_task_for(DataConfig(task="combined", combined_data="union")) == "style"
    assert balance_task_for(DataConfig(task="genre")) == "genre"
    assert balance_task_for(DataConfig(task="combined", balance_task="artist")) == "artist"


def test_task_missing_from_manifest_is_a_manifest_error(tmp_path):
    classes = {t: CLASSES[t] for t in ("artist", "genre")}
    manifest = make_shards(tmp_path, {"train": [8], "val": [8]}, classes=classes)
    for task in ("style", "combined"):
        with pytest.raises(ManifestError, match="style"):
            build_train_data(manifest, loader_config(task=task), rank=0, world_size=1, epoch=0, seed=0)
        with pytest.raises(ManifestError, match="style"):
            build_eval_data(manifest, "val", loader_config(task=task), rank=0, world_size=1)
    with pytest.raises(ValueError, match="rank 2"):
        build_eval_data(manifest, "val", loader_config(), rank=2, world_size=2)


def test_small_world_gets_at_least_one_batch(tmp_path):
    manifest = make_shards(tmp_path, {"train": [3, 2], "val": [2]})
    cfg = dataclasses.replace(loader_config(workers=2), batch_size=4)
    for rank in (0, 1):
        info, batches = train_epoch(manifest, cfg, rank=rank)
        assert info.num_batches == len(batches) == 1 and len(batches[0]["key"]) == 4


def test_shards_from_the_shard_builder(synthetic_shards):
    """The contract end to end: the real builder's shards load, exactly once, full batches."""
    manifest = load_manifest(synthetic_shards)
    cfg = loader_config(task="combined", workers=2, balance="inverse", batch_size=16)
    keys = []
    for rank in (0, 1):
        info = build_eval_data(manifest, "val", cfg, rank=rank, world_size=2)
        keys += keys_of(info.loader)
        assert info.corrupt.count == 0
        info, batches = train_epoch(manifest, cfg, rank=rank)
        assert len(batches) == info.num_batches and all(len(b["key"]) == 16 for b in batches)
        assert set(batches[0]["labels"]) == set(manifest.tasks)
    assert len(keys) == len(set(keys)) == manifest.num_samples("val")


def _jpeg(w: int = 20, h: int = 12) -> bytes:
    import io

    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (10, 200, 30)).save(buf, "JPEG")
    return buf.getvalue()


def _png() -> bytes:
    import io

    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (9, 7), (1, 2, 3)).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("data, reason", [
    (b"\xff\xd8\xff\xe0" + b"\0" * 40 + b"\xff\xd9", "unreadable image header"),  # JPEG magic, no frame
    (_jpeg()[:-10], "truncated JPEG"),
    (b"this is not an image" * 5, "unreadable image header"),
    (_png()[:20], "unreadable image header"),
])
def test_header_check_rejects_broken_images_before_decoding(data, reason):
    with pytest.raises(CorruptSample, match=reason):
        check_image_bytes(data)


def test_header_check_accepts_jpeg_and_other_formats_and_both_decode():
    for data, shape in ((_jpeg(), (12, 20, 3)), (_png(), (7, 9, 3))):
        check_image_bytes(data)
        assert decode_image(data, 64).shape == shape  # smaller than 2 x 64: decoded at full size


@pytest.mark.parametrize("mode", ["w", "w:gz"])
def test_shard_reader_yields_samples_in_order_and_skips_directories_and_meta_files(tmp_path, mode):
    path = tmp_path / "s.tar"
    write_tar(path, mode, [("__meta__/index.json", b"{}"), ("a.jpg", b"A"), ("a.json", b"1"), ("sub", None),
                            ("b.jpg", b"B"), ("b.json", b"2")])
    samples = list(iter_shard(str(path)))
    assert [(s["__key__"], s["jpg"], s["json"]) for s in samples] == [("a", b"A", b"1"), ("b", b"B", b"2")]


def test_the_combined_intersection_counts_only_paintings_with_all_three_labels(synthetic_shards):
    from wikiart.data.loader import INTERSECTION, eval_samples_for
    from wikiart.data.stream import iter_shard
    from wikiart.data.census import census
    manifest = load_manifest(synthetic_shards)
    for split in ("train", "val"):
        labels = [json.loads(raw["json"])["labels"] for path in manifest.shard_paths(split)
                  for raw in iter_shard(path)]
        complete = [lab for lab in labels if all(lab[t] >= 0 for t in ("artist", "genre", "style"))]
        assert 0 < len(complete) < len(labels)  # the synthetic set leaves some labels out
        found = census(manifest, split, INTERSECTION)
        assert found.num_samples == len(complete)
        assert found.class_counts["style"] == [sum(lab["style"] == c for lab in complete)
                                               for c in range(manifest.num_classes("style"))]
    cfg = DataConfig(task="combined")
    assert train_samples_for(manifest, "combined", combined_data="intersection") == census(
        manifest, "train", INTERSECTION).num_samples
    assert eval_samples_for(manifest, "val", cfg) == census(manifest, "val", INTERSECTION).num_samples
    assert eval_samples_for(manifest, "val", DataConfig(task="combined", combined_data="union")) == \
        manifest.num_samples("val")


def test_the_intersection_streams_read_only_fully_labelled_paintings(synthetic_shards):
    manifest = load_manifest(synthetic_shards)
    cfg = DataConfig(task="combined", shards=str(synthetic_shards), image_size=32, batch_size=8, workers=0,
                     balance="inverse")
    batch = next(iter(build_train_data(manifest, cfg, rank=0, world_size=1, epoch=0, seed=0).loader))
    assert all((batch["labels"][t] >= 0).all() for t in ("artist", "genre", "style"))
    from wikiart.data.loader import eval_filter, eval_samples_for
    keys = [k for b in build_eval_data(manifest, "val", cfg, rank=0, world_size=1,
                                       keep=eval_filter(cfg)).loader for k in b["key"]]
    assert len(keys) == len(set(keys)) == eval_samples_for(manifest, "val", cfg)


def test_the_seed_combined_sampler_weighs_the_mean_of_three_inverse_frequencies():
    """WeightedRandomSampler(w_i = mean_t 1/n_t(label_t), N draws): expected count N w_i / sum w."""
    from wikiart.data.stream import mean_class_weigher
    rows = [{"artist": a, "genre": g, "style": s} for a, g, s in
            [(0, 0, 0), (0, 0, 1), (0, 1, 1), (1, 1, 1), (1, 0, 2), (0, 1, 2), (2, 1, 0)]]
    counts = {t: np.bincount([r[t] for r in rows]).tolist() for t in ("artist", "genre", "style")}
    weigh = mean_class_weigher(counts, "inverse")
    seed = np.array([np.mean([1.0 / counts[t][r[t]] for t in counts]) for r in rows])
    expected = len(rows) * seed / seed.sum()
    np.testing.assert_allclose([weigh(r) for r in rows], expected, rtol=1e-12)
    assert sum(weigh(r) for r in rows) == pytest.approx(len(rows))  # stream length unchanged
    import pickle  # loader workers started by spawn or forkserver unpickle it
    assert [pickle.loads(pickle.dumps(weigh))(r) for r in rows] == [weigh(r) for r in rows]
    with pytest.raises(ValueError, match="--combined-data intersection"):
        from wikiart.data.loader import balance_weigher
        balance_weigher(None, DataConfig(task="combined", combined_data="union", balance="inverse",
                                         balance_task="all"))


def test_the_combined_intersection_is_the_seeds_inner_joins_of_the_artgan_files(artgan, tmp_path):
    """The seed inner-joins the three train files and the three val files apart; B, C and D (val
    in one task, train in another) carry three labels in our val split but are in neither join."""
    from wikiart.data.loader import INTERSECTION
    from wikiart.data.census import census
    from wikiart.prep.build import build_shards, parse_build_config
    from wikiart.prep.sources import make_key
    images, csvs = artgan
    out = tmp_path / "shards"
    manifest = build_shards(parse_build_config(["--out", str(out), "--images-root", str(images), "--csv-dir",
                                                str(csvs), "--short-side", "16", "--no-progress"]))
    for split in ("train", "val"):
        joined = set.intersection(*({k for k, _ in ARTGAN_ROWS[(t, split)]} for t in ("artist", "genre", "style")))
        assert census(manifest, split, INTERSECTION).num_samples == len(joined)
        keys = [k for b in build_eval_data(manifest, split, DataConfig(task="combined", shards=str(out),
                                                                       image_size=8, workers=0),
                                           rank=0, world_size=1, keep=INTERSECTION).loader for k in b["key"]]
        assert sorted(keys) == sorted(make_key(ARTGAN_IMAGES[k]) for k in joined)
    assert census(manifest, "val", INTERSECTION).num_samples == 1  # E; B, C, D have a train-file label
    assert census(manifest, "val", dataclasses.replace(INTERSECTION, own_split=False)).num_samples == 4
    # evaluate.py's joint numbers of a combined model cover the same population
    from wikiart.evaluate.score import EvalOutputs
    from wikiart.evaluate.run import seed_population
    val_keys = sorted(make_key(ARTGAN_IMAGES[k]) for k in "BCDEH")
    logits = {t: np.zeros((5, 3), np.float32) for t in ("artist", "genre", "style")}
    mask = seed_population(manifest, "val", EvalOutputs(val_keys, logits, {t: np.zeros(5, np.int64) for t in logits}))
    assert [k for k, m in zip(val_keys, mask) if m] == [make_key(ARTGAN_IMAGES["E"])]


def test_the_census_counts_a_damaged_shard_as_the_loader_reads_it_and_names_a_missing_one(synthetic_shards, tmp_path):
    """A shard cut short keeps the samples before the damage (as the loader's iter_shard does)
    instead of failing the run; a shard that is gone is an error naming it."""
    import shutil
    from wikiart.data.loader import INTERSECTION
    from wikiart.data.census import census
    copy = tmp_path / "shards"
    shutil.copytree(synthetic_shards, copy)
    first = load_manifest(copy).shard_paths("val")[0]
    data = open(first, "rb").read()
    open(first, "wb").write(data[: len(data) // 2])
    manifest = load_manifest(copy)
    labels = [json.loads(raw["json"])["labels"] for path in manifest.shard_paths("val") for raw in iter_shard(path)
              if "json" in raw]  # a sample cut between its members has no json
    assert len(labels) < manifest.num_samples("val")  # the cut lost samples
    complete = sum(1 for lab in labels if all(lab[t] >= 0 for t in ("artist", "genre", "style")))
    assert census(manifest, "val", INTERSECTION).num_samples == complete
    os.remove(first)
    with pytest.raises(FileNotFoundError):
        census(load_manifest(copy), "val", dataclasses.replace(INTERSECTION, own_split=False))


def test_the_shard_reader_groups_members_as_webdataset_does(tmp_path):
    """formats.shard replaces webdataset's group_by_keys + base_plus_ext (whose import loads torch):
    consecutive members sharing the name before the first dot form a sample, extensions lower-cased,
    dotless members skipped, a repeated extension ends the shard as damage."""
    import io
    import tarfile
    from webdataset.tariterators import group_by_keys
    from wikiart.formats.shard import iter_shard
    names = ["a.jpg", "a.json", "README", "b.JPG", "b.json", "dir/c.jpg", "c.json", "d.jpg", "d.jpg"]
    path = tmp_path / "s.tar"
    with tarfile.open(path, "w") as tar:
        for i, name in enumerate(names):
            info = tarfile.TarInfo(name)
            info.size = 2
            tar.addfile(info, io.BytesIO(b"%02d" % i))
    ours = [{k: v for k, v in s.items() if k != "__url__"} for s in iter_shard(path)]
    theirs = []
    files = [{"fname": n, "data": b"%02d" % i, "__url__": str(path)} for i, n in enumerate(names)]
    try:
        for s in group_by_keys(iter(files)):
            theirs.append({k: v for k, v in s.items() if k != "__url__"})
    except ValueError:
        pass  # the repeated d.jpg: webdataset raises, our reader logs and ends the shard
    assert ours == theirs == [{"__key__": "a", "jpg": b"00", "json": b"01"}, {"__key__": "b", "jpg": b"03", "json": b"04"},
                              {"__key__": "dir/c", "jpg": b"05"}, {"__key__": "c", "json": b"06"}]
