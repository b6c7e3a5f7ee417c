"""wikiart-predict: top-k per head on good files of any format, bad files reported by name."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.support.outputs import run_predict
from wikiart.config.options import DataConfig
from wikiart.data.loader import build_eval_data
from wikiart.data.device import Normalizer, eval_images
from wikiart.formats.manifest import load_manifest
from wikiart.model.classifier import CNNRNNClassifier


def reference_top(run: Path, shards: Path, keys: set[str], k: int = 5) -> dict[str, dict[str, list]]:
    """Top-k per head of `keys` through the evaluation loader (what evaluate.py scores)."""
    model = CNNRNNClassifier.from_pretrained(str(run / "best")).eval()
    cfg = DataConfig(task="combined", image_size=model.image_size, batch_size=16, workers=0)
    info = build_eval_data(load_manifest(shards), "val", cfg, rank=0, world_size=1)
    found = {}
    with torch.no_grad():
        for batch in info.loader:
            logits = model(eval_images(batch["image"], torch.device("cpu"), Normalizer(model.mean, model.std)))
            for i, key in enumerate(batch["key"]):
                if key in keys:
                    found[key] = {}
                    for t, names in model.class_names_dict().items():
                        probs = logits[t][i].softmax(0)
                        values, idx = probs.topk(min(k, len(names)))
                        found[key][t] = [(names[j], float(v)) for v, j in zip(values, idx)]
    return found


def other_formats(src: Path, out: Path) -> list[Path]:
    """The same painting as RGBA PNG, grey PNG, 16-bit PNG, palette PNG, WebP."""
    img = Image.open(src).convert("RGB")
    paths = []
    for name, converted in (("rgba.png", img.convert("RGBA")), ("grey.png", img.convert("L")),
                            ("palette.png", img.convert("P")), ("painting.webp", img)):
        paths.append(out / name)
        converted.save(paths[-1])
    deep = (np.asarray(img.convert("L"), dtype=np.uint16) * 257)
    paths.append(out / "deep16.png")
    Image.fromarray(deep).save(paths[-1])
    return paths


@pytest.mark.slow
def test_predict_matches_evaluation_and_reports_bad_files(trained_run, synthetic_shards, val_jpegs,
                                                          tmp_path, capsys):
    good = list(val_jpegs.values()) + other_formats(next(iter(val_jpegs.values())), tmp_path)
    (tmp_path / "garbage.jpg").write_bytes(b"not an image at all" * 20)
    (tmp_path / "empty.png").write_bytes(b"")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(next(iter(val_jpegs.values())).read_bytes()[:300])
    bad = [tmp_path / "garbage.jpg", tmp_path / "empty.png", truncated, tmp_path / "missing.webp"]
    files = [str(p) for p in good[:2] + bad[:2] + good[2:] + bad[2:]]  # bad ones in the middle
    rc, out, err = run_predict(["--checkpoint", str(trained_run / "best"), "--json", *files], capsys)
    assert rc == 1
    result = json.loads(out)  # stdout is pure JSON
    assert [p["image"] for p in result["predictions"]] == [str(p) for p in good]
    assert sorted(e["image"] for e in result["errors"]) == sorted(str(p) for p in bad)
    assert len(err) == len(bad) and all(any(str(p) in line for line in err) for p in bad)
    reference = reference_top(trained_run, synthetic_shards, set(val_jpegs))
    by_image = {p["image"]: p["predictions"] for p in result["predictions"]}
    for key, path in val_jpegs.items():
        for task, ranked in by_image[str(path)].items():
            expected = reference[key][task]
            assert [r["class"] for r in ranked] == [name for name, _ in expected], (key, task)
            assert [r["probability"] for r in ranked] == pytest.approx([p for _, p in expected], abs=1e-5)
    for item in result["predictions"]:
        assert set(item["predictions"]) == {"artist", "genre", "style"}
        for ranked in item["predictions"].values():
            probs = [r["probability"] for r in ranked]
            assert len(ranked) == 5 and probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6


@pytest.mark.slow
def test_predict_prints_tables_and_caps_top_k(trained_run, val_jpegs, capsys):
    path = str(next(iter(val_jpegs.values())))
    rc, out, err = run_predict(["--checkpoint", str(trained_run), path], capsys)
    assert rc == 0 and not err
    assert path in out and "probability" in out and "genre" in out
    rc, out, _ = run_predict(["--checkpoint", str(trained_run), "--json", "--top-k", "100", path], capsys)
    counts = json.loads((trained_run / "best" / "config.json").read_text())["num_classes"]
    ranked = json.loads(out)["predictions"][0]["predictions"]
    assert rc == 0 and {t: len(v) for t, v in ranked.items()} == counts
