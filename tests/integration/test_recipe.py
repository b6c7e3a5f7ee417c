"""The task presets trained by train.py, epoch by epoch, against the notebooks' recipe (torch's
AdamW and CosineAnnealingLR driven as the notebooks drive them), and a resume before, at and
after the style restart ending bit-identical (the recipe functions: tests/unit/train/test_recipe.py)."""

from __future__ import annotations

import pytest
import torch
import torchvision
from safetensors.torch import load_file

from tests.support.training import final_weights, metrics_rows, run_train
from wikiart.formats import checkpoint as ckpt
from wikiart.config.options import ModelConfig
from wikiart.data.loader import train_batches_per_rank, train_samples_for
from wikiart.formats.manifest import load_manifest
from wikiart.model.classifier import from_config

SMALL_MODEL = ["--backbone", "resnet18", "--image-size", "32", "--proj-dim", "8", "--rnn-hidden", "8",
               "--rnn-layers", "1", "--workers", "0", "--no-progress", "--log-every", "1"]
BATCH = 16
# Each notebook's loop: (epochs, CosineAnnealingLR T_max, the 1-based epoch that unfreezes all).
NOTEBOOKS = {"artist": (10, 15, None), "genre": (10, 15, None), "style": (20, 20, 7), "combined": (20, 20, None)}
HEAD_MODULES = ("proj", "row_rnn", "col_rnn", "row_pool", "col_pool", "heads")  # the notebooks' head_params


@pytest.fixture(scope="module")
def tiny_shards(tmp_path_factory):
    """40 train paintings: 3 steps per epoch (batch 16), so a whole 20-epoch preset runs in seconds."""
    from wikiart.prep.synthetic import build_synthetic_shards
    out = tmp_path_factory.mktemp("recipe_shards")
    build_synthetic_shards(out, n=50, short_side=40, seed=3, max_side=48, val_frac=0.2, min_shards=2,
                           min_val_shards=1, workers=0)
    return out


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    """A resnet18 state dict standing in for the ImageNet file (loaded the way pretrained weights are)."""
    path = tmp_path_factory.mktemp("weights") / "resnet18-imagenet.pth"
    torch.manual_seed(11)
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return path


def seed_recipe(task: str, classes: dict[str, list[str]]) -> list[dict]:
    """Per epoch, what the notebook's loop trains with: torch's AdamW and CosineAnnealingLR driven
    as in its cells 7 and 9 (requires_grad flags, groups [head, backbone], scheduler.step() per
    epoch, the rebuild at `epoch == unfreeze_epoch`)."""
    epochs, t_max, unfreeze = NOTEBOOKS[task]
    model = from_config(ModelConfig(backbone="resnet18", pretrained=False, proj_dim=8, rnn_hidden=8, rnn_layers=1),
                        classes, 32)
    for module in (model.backbone.conv1, model.backbone.bn1, model.backbone.relu, model.backbone.maxpool):
        module.requires_grad_(False)  # stem[0:4]

    def build_optimizer():
        head = [p for m in HEAD_MODULES for p in getattr(model, m).parameters() if p.requires_grad]
        backbone = [p for p in model.backbone.parameters() if p.requires_grad]
        return torch.optim.AdamW([{"params": head, "lr": 8e-4, "weight_decay": 1e-4},
                                  {"params": backbone, "lr": 1.5e-4, "weight_decay": 1e-4}])

    optimizer = build_optimizer()
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=t_max, eta_min=1e-6)
    rows = []
    for epoch in range(1, epochs + 1):
        reset = epoch == unfreeze
        if reset:
            model.requires_grad_(True)
            optimizer = build_optimizer()
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs - epoch + 1, eta_min=1e-6)
        model.train()
        rows.append({"lr_new": optimizer.param_groups[0]["lr"], "lr_backbone": optimizer.param_groups[1]["lr"],
                     "frozen": sorted(n for n, p in model.named_parameters() if not p.requires_grad),
                     "eval_modules": [n for n, m in model.named_modules() if not m.training],
                     "optimizer_reset": reset})
        optimizer.step()  # no gradients: nothing moves; keeps torch's step-order check quiet
        scheduler.step()
    return rows


@pytest.mark.slow
@pytest.mark.parametrize("task", list(NOTEBOOKS))
def test_the_preset_trains_the_notebooks_recipe_epoch_by_epoch(task, tiny_shards, weights_file, tmp_path):
    out = tmp_path / task
    run_train(["--task", task, "--shards", str(tiny_shards), "--out", str(out), "--batch-size", str(BATCH),
               "--pretrained-path", str(weights_file), *SMALL_MODEL])
    manifest = load_manifest(tiny_shards)
    classes = {t: manifest.class_names(t) for t in (("artist", "genre", "style") if task == "combined" else (task,))}
    expected = seed_recipe(task, classes)
    logged = metrics_rows(out, "epoch")
    assert [r["epoch"] for r in logged] == list(range(NOTEBOOKS[task][0]))
    for epoch, (want, got) in enumerate(zip(expected, logged)):
        assert got["lr_new"] == pytest.approx(want["lr_new"], rel=1e-9), epoch
        assert got["lr_backbone"] == pytest.approx(want["lr_backbone"], rel=1e-9), epoch
        assert sorted(got["frozen"]) == want["frozen"], epoch
        assert got["eval_modules"] == want["eval_modules"] == [], epoch
        assert got["optimizer_reset"] == want["optimizer_reset"], epoch

    # Every logged training step ran at its epoch's learning rate (the cosine is stepped per epoch).
    steps = train_batches_per_rank(train_samples_for(manifest, task, combined_data="intersection"), 1, BATCH)
    for row in metrics_rows(out, "train"):
        assert row["lr"] == pytest.approx(expected[(row["step"] - 1) // steps]["lr_new"], rel=1e-9)

    # The weights agree: conv1/bn1 weights stay the file's unless the stem was unfrozen; bn1 in
    # train mode moved its running statistics either way.
    start, final = torch.load(weights_file, weights_only=True), final_weights(out)
    stem_trained = NOTEBOOKS[task][2] is not None
    for name in ("conv1.weight", "bn1.weight", "bn1.bias"):
        assert torch.equal(final[f"backbone.{name}"], start[name]) is not stem_trained, name
    assert not torch.equal(final["backbone.bn1.running_mean"], start["bn1.running_mean"])
    # AdamW's step count: every step of the run, or the steps since the style rebuild.
    optimizer = torch.load(ckpt.latest_checkpoint(out) / "optimizer.pt", weights_only=True)
    counts = {int(s["step"]) for s in optimizer["state"].values()}
    epochs, _, unfreeze = NOTEBOOKS[task]
    assert counts == {steps * (epochs - (unfreeze - 1 if unfreeze else 0))}


@pytest.mark.slow
def test_a_run_resumed_before_at_or_after_the_restart_ends_identical(tiny_shards, weights_file, tmp_path):
    """Style's restart (stem unfrozen, AdamW rebuilt, cosine restarted) moved to epoch 3 of 4:
    stopping before it, exactly at it (the last step before it) and after it, and resuming each
    time, ends with the uninterrupted run's weights and optimizer state, bit for bit."""
    common = ["--task", "style", "--shards", str(tiny_shards), "--batch-size", str(BATCH), "--epochs", "4",
              "--unfreeze-epoch", "3", "--pretrained-path", str(weights_file), "--keep-last", "1", *SMALL_MODEL]
    steps = train_batches_per_rank(train_samples_for(load_manifest(tiny_shards), "style"), 1, BATCH)
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    run_train([*common, "--out", str(whole)])
    run_train([*common, "--out", str(parts), "--stop-at-step", str(steps + 1)], check=False)  # before
    for stop in (2 * steps, 2 * steps + 1):  # at the restart, after it
        run_train([*common, "--out", str(parts), "--resume", "auto", "--stop-at-step", str(stop)], check=False)
        assert ckpt.load_checkpoint(ckpt.latest_checkpoint(parts))[0].step == stop
    run_train([*common, "--out", str(parts), "--resume", "auto"])
    for name, value in final_weights(whole).items():
        assert torch.equal(value, final_weights(parts)[name]), name
    a, b = (torch.load(ckpt.latest_checkpoint(d) / "optimizer.pt", weights_only=True) for d in (whole, parts))
    assert a["state"].keys() == b["state"].keys()
    for key, state in a["state"].items():
        assert all(torch.equal(v, b["state"][key][k]) for k, v in state.items()), key
    resets = [r["epoch"] for r in metrics_rows(parts, "epoch") if r["optimizer_reset"]]
    assert resets == [2]  # logged once, though the run was resumed right at it
    assert load_file(str(whole / "best" / "model.safetensors")).keys() == final_weights(whole).keys()
