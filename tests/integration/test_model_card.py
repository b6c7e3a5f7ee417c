"""The card in a trained run's best/ is ours, not the save_pretrained mixin's placeholder (the
card itself: tests/unit/hub/test_model_card.py)."""

from __future__ import annotations

import json

from huggingface_hub import ModelCard

from wikiart.hub.card import METRICS_START


def test_trainers_best_holds_our_card_not_the_mixins_placeholder(trained_run):
    best = trained_run / "best"
    card = ModelCard((best / "README.md").read_text())
    text, data = card.text, card.data.to_dict()
    names = json.loads((best / "config.json").read_text())["class_names"]
    metrics = json.loads((best / "metrics.json").read_text())
    assert "More Information Needed" not in str(card)
    assert data["library_name"] == "wikiart" and data["model-index"][0]["name"] == trained_run.name == "run"
    assert text.lstrip().startswith("# run\n")  # named after the run, not "best"
    assert text.count(METRICS_START) == 1 and f"optimizer step {metrics['step']}" in text
    assert f"| score | {metrics['score']:.4f} |" in text  # the run's metrics, not "No evaluation yet."
    for task in ("artist", "genre", "style"):
        assert f"| {task} | {len(names[task])} |" in text and all(f"`{n}`" in text for n in names[task])
    assert "| task | combined |" in text and "| image size | 32 |" in text and "20 optimizer steps" in text
    assert "synthetic mini-WikiArt" in text  # the run's shard manifest
    # No Hub repo: the usage examples load best/ by its path.
    assert f'CNNRNNClassifier.from_pretrained("{best}")' in text
