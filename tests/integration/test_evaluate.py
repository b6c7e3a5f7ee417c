"""evaluate.py end to end: metrics and report files, checkpoint forms, 2 ranks = 1 rank, bad input."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.support.outputs import strict_json
from tests.support.training import ROOT
from wikiart.cli.evaluate import main as evaluate_main
from wikiart.model.load import load_model
from wikiart.formats.shard import iter_shard_samples

TASKS = ("artist", "genre", "style")


def val_labels(shards: Path) -> dict[str, np.ndarray]:
    """Labels of the val split read straight from the tars (independent of the loader)."""
    manifest = json.loads((shards / "manifest.json").read_text())
    paths = [shards / s["name"] for s in manifest["splits"]["val"]["shards"]]
    metas = [meta for _, _, meta in iter_shard_samples(paths)]
    return {t: np.array([m["labels"][t] for m in metas]) for t in TASKS}


@pytest.fixture(scope="module")
def evaluated(trained_run, synthetic_shards, tmp_path_factory) -> tuple[Path, str]:
    """evaluate.py on the run directory (-> best/), in process, with the trainer's batch size."""
    out = tmp_path_factory.mktemp("evaluated") / "out"
    capture = tmp_path_factory.mktemp("evaluated") / "stdout.txt"
    with capture.open("w") as fh:
        saved, sys.stdout = sys.stdout, fh
        try:
            rc = evaluate_main(["--checkpoint", str(trained_run), "--shards", str(synthetic_shards),
                                "--out", str(out), "--batch-size", "8", "--workers", "1"])
        finally:
            sys.stdout = saved
    assert rc == 0
    return out, capture.read_text()


@pytest.mark.slow
def test_metrics_agree_with_training_validation_and_the_shards(evaluated, trained_run, synthetic_shards):
    out, _ = evaluated
    metrics = strict_json(out / "metrics.json")
    trainer = json.loads((trained_run / "best" / "metrics.json").read_text())
    labels = val_labels(synthetic_shards)
    assert metrics["checkpoint_kind"] == "pretrained" and metrics["checkpoint_path"].endswith("best")
    assert metrics["split"] == "val" and metrics["num_samples"] == metrics["manifest_samples"] == 101
    for t in TASKS:
        m = metrics["tasks"][t]
        known = labels[t][labels[t] >= 0]
        assert m["scored"] == len(known) and m["missing"] == int((labels[t] < 0).sum()) > 0
        support = np.bincount(known, minlength=m["num_classes"])
        assert [row["support"] for row in m["per_class"]] == support.tolist()
        cm = np.array(m["confusion"])
        assert cm.sum(axis=1).tolist() == support.tolist()
        assert np.trace(cm) == round(m["top1"] * m["scored"])
        recalls = [row["recall"] for row in m["per_class"]]
        assert recalls == pytest.approx([cm[i, i] / s if s else 0.0 for i, s in enumerate(support)])
        assert 0.0 <= m["macro_f1"] <= 1.0 and 0.0 <= m["weighted_f1"] <= 1.0
    # The cross-head numbers are over the paintings labelled for every head (the seed's population).
    # The trainer validated the combined model on exactly those (--combined-data intersection, the
    # default) and evaluate.py scored every painting: the cross-head numbers agree, and so the same
    # model on the same paintings gave the same predictions. (The losses differ by design: the
    # trainer's are smoothed with the run's label smoothing, as the seed's, evaluate.py's are not.)
    combined = metrics["combined"]
    every = np.logical_and.reduce([labels[t] >= 0 for t in TASKS])
    assert combined["joint_scored"] == int(every.sum()) == trainer["joint_scored"]
    assert 0 < combined["joint_scored"] < min(metrics["tasks"][t]["scored"] for t in TASKS)
    for key in ("joint_exact_match", "mean_top1", "mean_top5", "mean_macro_f1", "mean_weighted_f1"):
        assert combined[key] == pytest.approx(trainer[key], abs=1e-6), key
    assert trainer["score"] == trainer["joint_exact_match"]


@pytest.mark.slow
def test_report_files_are_written_and_well_formed(evaluated, trained_run):
    out, stdout = evaluated
    metrics = strict_json(out / "metrics.json")
    names = json.loads((trained_run / "best" / "config.json").read_text())["class_names"]
    for t in TASKS:
        m = metrics["tasks"][t]
        report = (out / f"classification_report_{t}.txt").read_text()
        assert f"scored: {m['scored']} paintings ({m['missing']} without a {t} label" in report
        assert all(name in report for name in names[t]) and "macro avg" in report
        with (out / f"per_class_recall_{t}.csv").open() as fh:
            rows = list(csv.DictReader(fh))
        assert [r["class"] for r in rows] == names[t]
        assert [float(r["recall"]) for r in rows] == pytest.approx([r["recall"] for r in m["per_class"]], abs=1e-6)
        assert [int(r["correct"]) for r in rows] == [m["confusion"][i][i] for i in range(len(rows))]
        with Image.open(out / f"confusion_{t}.png") as png:
            assert 400 <= png.width <= 3000 and 400 <= png.height <= 3000
    assert "val metrics" in stdout and "worst" in stdout and "joint exact match" in stdout


@pytest.mark.slow
def test_training_checkpoint_and_run_directory_load_the_same_model(trained_run):
    # max-steps 20 ends inside the first epoch: best/ and step-20 hold the same weights.
    from_step = load_model(str(trained_run / "checkpoints" / "step-00000020"))
    from_run = load_model(str(trained_run))
    assert from_step.kind == "training-state" and from_step.step == 20 and from_step.weights == "model"
    assert from_run.kind == "pretrained" and from_run.path == str(trained_run / "best")
    assert from_step.model.class_names_dict() == from_run.model.class_names_dict()
    assert from_step.model.image_size == from_run.model.image_size == 32
    a, b = from_step.model.state_dict(), from_run.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not from_step.model.training and from_step.eval_resize is None  # the run's default


@pytest.mark.slow
def test_describe_says_what_was_loaded_in_plain_words(trained_run, evaluated):
    best, step = trained_run / "best", trained_run / "checkpoints" / "step-00000020"
    assert load_model(str(trained_run)).describe() == f"the model in {best} (saved model, raw weights, no EMA)"
    assert load_model(str(step)).describe() == \
        f"the training checkpoint {step} (optimizer step 20, raw weights, no EMA)"
    # The Hub and EMA forms need a download or an EMA run to load: same object, other fields.
    loaded = load_model(str(best))
    hub = dataclasses.replace(loaded, kind="hub", path="painter/wikiart-genre", weights="ema")
    assert hub.describe() == "the Hub model painter/wikiart-genre (EMA weights)"
    assert dataclasses.replace(loaded, weights="ema").describe() == f"the model in {best} (saved model, EMA weights)"
    flat = " ".join(evaluated[1].split())  # rich wraps long lines (paths) where it likes
    assert "evaluating the model in " in flat and "(saved model, raw weights, no EMA) on val of" in flat


def outlier_csv(path: Path) -> dict[str, dict[str, str]]:
    with path.open() as fh:
        return {row["key"]: row for row in csv.DictReader(fh)}


def launch_two_ranks(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(ROOT / "accelerate_configs" / "cpu_ddp.yaml"), "--num_processes", "2",
           "--main_process_port", str(29400 + os.getpid() % 200), str(ROOT / "evaluate.py"), *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def evaluate_one_thread(args: list[str]) -> int:
    """In process with one intra-op thread, as each rank of the launch runs (OMP_NUM_THREADS=1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return evaluate_main(args)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_two_ranks_give_exactly_the_numbers_of_one(trained_run, synthetic_shards, evaluated, tmp_path, capsys):
    # Readers take whole batches (batch i = paintings [16i, 16i+16) for any world size and worker
    # count), so even the float logits agree bit for bit (a conv's rounding depends on its batch):
    # 101 paintings = 7 batches over 2 ranks x 2 workers here, over 1 worker in the single run.
    common = ["--checkpoint", str(trained_run), "--shards", str(synthetic_shards), "--batch-size", "16",
              "--tta", "flip", "--outliers", "--outlier-top", "4", "--explain-worst", "2"]
    two = launch_two_ranks([*common, "--workers", "2", "--out", str(tmp_path / "two")])
    flat = " ".join(two.stdout.split())  # rich wraps long lines (paths) where it likes
    assert "world size 2" in flat and flat.count("val metrics") == 1  # only rank 0 prints
    capsys.readouterr()
    assert evaluate_one_thread([*common, "--workers", "1", "--out", str(tmp_path / "one")]) == 0
    assert "world size 1" in " ".join(capsys.readouterr().out.split())
    a, b = strict_json(tmp_path / "one" / "metrics.json"), strict_json(tmp_path / "two" / "metrics.json")
    assert (a.pop("world_size"), b.pop("world_size")) == (1, 2)
    a_out, b_out = a.pop("outliers"), b.pop("outliers")
    assert a == b  # the --explain-worst keys too: the same confident mistakes, picked from all ranks' logits
    assert all(len(keys) == 2 for keys in a["explain_worst"].values())
    for t in TASKS:  # drawn by rank 0 alone, from the same paintings and maps
        sheets = [(tmp_path / d / f"explain_worst_{t}.png").read_bytes() for d in ("one", "two")]
        assert sheets[0] == sheets[1], t
    # Training-split centroids are sums reduced across ranks over differently cut batches: equal
    # up to float rounding (the scored split itself matched exactly above).
    for t in TASKS:
        one, two = (outlier_csv(tmp_path / d / f"outliers_{t}.csv") for d in ("one", "two"))
        assert one.keys() == two.keys() and len(one) == a["tasks"][t]["scored"]
        for key, row in one.items():
            assert row["predicted"] == two[key]["predicted"] and row["nearest_other"] == two[key]["nearest_other"]
            for col in ("own_similarity", "other_similarity", "margin", "score"):
                assert float(row[col]) == pytest.approx(float(two[key][col]), abs=1e-5), (t, key, col)
        assert a_out["tasks"][t]["scored"] == b_out["tasks"][t]["scored"]
    # The joint ranking of the three heads: same rows and order, over the fully labelled paintings
    one, two = (list(outlier_csv(tmp_path / d / "outliers_joint.csv").values()) for d in ("one", "two"))
    assert [r["key"] for r in one] == [r["key"] for r in two]
    assert len(one) == a["combined"]["joint_scored"] == a_out["joint"]["scored"] == b_out["joint"]["scored"]
    scores = [(float(r["combined_outlier_score"]), int(r["mismatch_count"])) for r in one]
    assert scores == sorted(scores, reverse=True)
    for r in one:
        p_true = [float(r[f"{t}_p_true"]) for t in TASKS]
        assert float(r["combined_outlier_score"]) == pytest.approx(np.mean([1 - p for p in p_true]), abs=1e-5)
        assert int(r["mismatch_count"]) == sum(r[f"{t}_mismatch"] == "True" for t in TASKS)
    all_right = np.mean([r["mismatch_count"] == "0" for r in one])
    assert all_right == pytest.approx(a["combined"]["joint_exact_match"])  # one population, one prediction
    assert (tmp_path / "one" / "outliers_joint.png").is_file()
    plain = strict_json(evaluated[0] / "metrics.json")
    assert a["tta"] == "flip" and a["tasks"]["genre"]["loss"] != plain["tasks"]["genre"]["loss"]
