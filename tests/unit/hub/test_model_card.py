"""The model card: run facts, a Hub-valid YAML header (parsed back with ModelCard), metric updates."""

from __future__ import annotations

from huggingface_hub import ModelCard

from tests.support.hub import REPO
from wikiart.config.options import parse_train_config
from wikiart.formats.manifest import load_manifest
from wikiart.hub.card import METRICS_START, build_card, update_card_metrics

METRICS = {"step": 40, "genre/loss": 1.25, "genre/top1": 0.5, "genre/top5": 0.875, "genre/scored": 100,
           "score": 0.5, "loss": 1.25}


def test_card_carries_run_facts_and_a_valid_header(synthetic_shards):
    manifest = load_manifest(synthetic_shards)
    names = manifest.classes["genre"]
    cfg = parse_train_config(["--task", "genre", "--shards", str(synthetic_shards), "--batch-size", "8",
                              "--epochs", "3", "--lr", "0.002"])
    model_config = {"backbone": "resnet18", "class_names": {"genre": names}, "image_size": 32, "use_rnn": True,
                    "rnn_hidden": 16, "rnn_layers": 1, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    card = build_card(REPO, model_config, run_config=cfg.to_dict(), manifest=manifest, metrics=METRICS,
                      step=40, world_size=2, steps=120)
    parsed = ModelCard(str(card))
    data = parsed.data.to_dict()
    assert data["library_name"] == "wikiart" and data["pipeline_tag"] == "image-classification"
    assert {"wikiart", "genre", "resnet18"} <= set(data["tags"]) and data["metrics"] == ["accuracy"]
    assert "datasets" not in data  # synthetic shards are no Hub dataset
    results = data["model-index"][0]["results"]
    assert {m["name"]: m["value"] for r in results for m in r["metrics"]} == \
        {"genre top-1 accuracy": 0.5, "genre top-5 accuracy": 0.875}
    text = parsed.text
    assert all(f"`{n}`" in text for n in names) and f"| genre | {len(names)} |" in text
    for split in ("train", "val"):
        assert f"{split} {manifest.num_samples(split)} samples" in text
    assert "synthetic mini-WikiArt" in text
    assert "| training length | 120 optimizer steps, 3 epochs |" in text and "lr 0.002" in text
    assert "8 per process × 2 processes × 1 accumulation = 16" in text
    assert "| genre | 0.5000 | 0.8750 | 1.2500 | 100 |" in text and "| score | 0.5000 |" in text
    assert f'CNNRNNClassifier.from_pretrained("{REPO}")' in text
    assert f"wikiart-predict --checkpoint {REPO} painting.jpg" in text


def test_hf_dataset_source_becomes_card_metadata(synthetic_shards):
    manifest = load_manifest(synthetic_shards)
    manifest.source = {"type": "hf", "name": "huggan/wikiart", "split": "train"}
    card = build_card(REPO, {"class_names": {"genre": ["a", "b"]}}, manifest=manifest)
    assert ModelCard(str(card)).data.datasets == ["huggan/wikiart"]


def test_update_card_metrics_replaces_only_the_table():
    card = build_card(REPO, {"class_names": {"genre": ["a", "b"]}, "backbone": "resnet18"}, metrics=METRICS)
    new = update_card_metrics(ModelCard(str(card)), {"genre/top1": 0.75, "genre/f1": 0.5}, split="test")
    text = ModelCard(str(new)).text
    assert "| genre | 0.7500 | 0.5000 |" in text and "0.8750" not in text and "`test` split" in text
    assert text.count(METRICS_START) == 1 and "## How to use" in text
    assert ModelCard(str(new)).data.eval_results[0].metric_value == 0.75
