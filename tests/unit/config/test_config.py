"""The config system: flags from dataclasses, presets < YAML < flags, errors that name the flag."""

import dataclasses
import json

import pytest

from wikiart.config.options import TRAIN_SECTIONS, ConfigError, RunConfig, load_yaml, parse_train_config


# Each notebook's recipe (shared/seed/*/..._final_wOutliers and combined/gcomb).
SEED = {"artist": dict(epochs=10, cosine_t_max=15, unfreeze_epoch=None),
        "genre": dict(epochs=10, cosine_t_max=15, unfreeze_epoch=None),
        "style": dict(epochs=20, cosine_t_max=None, unfreeze_epoch=7),
        "combined": dict(epochs=20, cosine_t_max=None, unfreeze_epoch=None)}


@pytest.mark.parametrize("task", list(SEED))
def test_the_task_presets_are_the_seed_recipes(task):
    cfg = parse_train_config(["--task", task])
    data, model, optim, train = cfg.data, cfg.model, cfg.optim, cfg.train
    assert (train.epochs, optim.cosine_t_max, optim.unfreeze_epoch) == tuple(SEED[task].values())
    assert (data.image_size, data.batch_size, data.batch_scaling, data.balance) == (384, 64, "global", "inverse")
    assert (data.rrc_scale, data.rrc_ratio, data.color_jitter) == ((0.7, 1.0), (0.85, 1.15), (0.12, 0.12, 0.10, 0.03))
    assert (data.erasing_p, data.hflip) == (0.2, True)
    assert model.pretrained and model.backbone == "resnet50" and model.attention_pool == "linear"
    assert (model.proj_dim, model.rnn_hidden, model.rnn_layers, model.rnn_dropout, model.head_dropout) == \
        (320, 256, 2, 0.2, 0.4)
    assert (optim.lr, optim.backbone_lr, optim.weight_decay, optim.eta_min) == (8e-4, 1.5e-4, 1e-4, 1e-6)
    assert (optim.schedule, optim.warmup_steps, optim.clip_grad, optim.label_smoothing) == ("epoch", 0, 1.0, 0.03)
    assert (optim.mixup_p, optim.mixup_alpha, optim.cutmix_p, optim.cutmix_alpha) == (0.35, 0.3, 0.35, 1.0)
    assert optim.freeze_stem and not optim.freeze_backbone_epochs and not optim.frozen_bn_eval
    assert not optim.exclude_norm_bias_decay and optim.ema_decay is None
    assert data.combined_data == "intersection" and data.balance_task is None


def test_yaml_overrides_preset_and_flags_override_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  unfreeze_epoch: 3\n  lr: 0.01\nbatch_size: 7\n")
    cfg = parse_train_config(["--task", "style", "--config", str(path), "--lr", "0.5"])
    assert cfg.optim.unfreeze_epoch == 3          # YAML beat the preset
    assert cfg.optim.lr == 0.5                    # the flag beat YAML
    assert cfg.data.batch_size == 7               # flat keys are routed to their section


def test_yaml_can_choose_the_task_and_its_preset(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  task: combined\n")
    cfg = parse_train_config(["--config", str(path)])
    assert cfg.data.task == "combined" and cfg.train.epochs == 20
    assert cfg.optim.unfreeze_epoch is None  # the notebook's unfreeze_epoch = 4 is never used


@pytest.mark.parametrize("argv, needle", [
    (["--task", "painter"], "--task"),
    (["--batch-size", "many"], "--batch-size"),
    (["--batch-size", "0"], "--batch-size"),
    (["--lr", "0"], "--lr"),
    (["--lr", "-1e-3"], "--lr"),
    (["--image-size", "-5"], "--image-size"),
    (["--no-such-flag", "1"], "--no-such-flag"),
    (["--mixed-precision", "fp8"], "--mixed-precision"),
])
def test_bad_flags_exit_2_naming_the_flag(argv, needle, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_train_config(argv)
    assert exc.value.code == 2
    assert needle in capsys.readouterr().err


def test_bad_yaml_key_and_type_are_named(tmp_path, capsys):
    bad_key = tmp_path / "k.yaml"
    bad_key.write_text("optim:\n  learning_rate: 0.1\n")
    with pytest.raises(SystemExit):
        parse_train_config(["--config", str(bad_key)])
    assert "learning_rate" in capsys.readouterr().err
    bad_type = tmp_path / "t.yaml"
    bad_type.write_text("epochs: three\n")
    with pytest.raises(SystemExit):
        parse_train_config(["--config", str(bad_type)])
    assert "epochs" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="not found"):
        load_yaml(tmp_path / "missing.yaml")


def test_optional_and_tuple_flags():
    cfg = parse_train_config(["--clip-grad", "none", "--rrc-scale", "0.5", "1.0", "--no-rnn"])
    assert cfg.optim.clip_grad is None
    assert cfg.data.rrc_scale == (0.5, 1.0)
    assert cfg.model.rnn is False


def test_resolved_config_round_trips_through_json():
    cfg = parse_train_config(["--task", "combined", "--image-size", "48"])
    data = json.loads(json.dumps(cfg.to_dict()))
    again = RunConfig.from_dict(data)
    assert again == cfg


def test_the_config_root_is_typed_and_frozen_all_the_way_down():
    """parse_train_config gives a RunConfig of the five sections; no stage can change what ran
    behind config.json's back: a resolved value is a new RunConfig, the original stays as it was."""
    cfg = parse_train_config(["--task", "style", "--batch-size", "16"])
    assert isinstance(cfg, RunConfig) and [f.name for f in dataclasses.fields(cfg)] == list(TRAIN_SECTIONS)
    assert all(isinstance(getattr(cfg, name), cls) for name, cls in TRAIN_SECTIONS.items())
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.data.batch_size = 8
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.data = cfg.data
    resolved = cfg.replace(data=dataclasses.replace(cfg.data, batch_size=8))
    assert (resolved.data.batch_size, cfg.data.batch_size) == (8, 16)
    assert resolved.optim is cfg.optim and resolved.to_dict()["data"]["batch_size"] == 8
