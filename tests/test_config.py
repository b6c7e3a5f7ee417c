"""The config system: flags from dataclasses, presets < YAML < flags, errors that name the flag."""

import json

import pytest

from wikiart.config import (TASK_PRESETS, TRAIN_SECTIONS, ConfigError, from_dict, load_yaml,
                            parse_train_config, to_dict)


def test_defaults_follow_the_task_preset():
    cfg = parse_train_config(["--task", "style"])
    assert cfg["optim"].unfreeze_epoch == TASK_PRESETS["style"]["unfreeze_epoch"] == 7
    assert cfg["train"].epochs == 14
    genre = parse_train_config(["--task", "genre"])
    assert genre["optim"].unfreeze_epoch is None
    assert genre["data"].image_size == 384 and genre["optim"].lr == pytest.approx(8e-4)


def test_yaml_overrides_preset_and_flags_override_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  unfreeze_epoch: 3\n  lr: 0.01\nbatch_size: 7\n")
    cfg = parse_train_config(["--task", "style", "--config", str(path), "--lr", "0.5"])
    assert cfg["optim"].unfreeze_epoch == 3          # YAML beat the preset
    assert cfg["optim"].lr == 0.5                    # the flag beat YAML
    assert cfg["data"].batch_size == 7               # flat keys are routed to their section


def test_yaml_can_choose_the_task_and_its_preset(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  task: combined\n")
    cfg = parse_train_config(["--config", str(path)])
    assert cfg["data"].task == "combined" and cfg["data"].balance_task == "style"
    assert cfg["optim"].unfreeze_epoch == 4


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
    assert cfg["optim"].clip_grad is None
    assert cfg["data"].rrc_scale == (0.5, 1.0)
    assert cfg["model"].rnn is False


def test_resolved_config_round_trips_through_json():
    cfg = parse_train_config(["--task", "combined", "--image-size", "48"])
    data = json.loads(json.dumps(to_dict(cfg)))
    again = from_dict(TRAIN_SECTIONS, data)
    assert again == cfg
