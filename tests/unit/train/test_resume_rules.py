"""What a resume refuses, checked in-process on real files (tests/integration/test_resume.py and
test_preemption.py check the same through whole train.py runs): the batch layout a checkpoint's
counters are in (`wikiart.train.setup.check_data_layout`), the flags fixed at resume and the
earlier defaults of an old config.json (`wikiart.train.recipe.check_resume_recipe`,
`wikiart.config.options.with_earlier_defaults`), the class list and task
(`wikiart.model.load.check_class_names`), and the run directory (`check_run_dir`,
`prepare_run_dir`: what --overwrite removes, what --resume keeps). Last, `setup_job` itself:
each refusal stops a real resume before anything in --out is written."""

from __future__ import annotations

import json

import pytest
import torch
from accelerate import Accelerator

from tests.support.training import TINY
from wikiart.config.options import EARLIER_DEFAULTS, parse_train_config, with_earlier_defaults
from wikiart.formats import checkpoint as ckpt
from wikiart.formats.files import write_json
from wikiart.formats.manifest import load_manifest
from wikiart.formats.rundir import RunDir
from wikiart.model.load import check_class_names
from wikiart.train.recipe import FIXED_AT_RESUME, check_resume_recipe
from wikiart.train.setup import RunDirError, check_data_layout, check_run_dir, prepare_run_dir, save_training_state, setup_job

NO_OPTIMIZER = {"state": {}, "param_groups": []}


def saved_checkpoint(run_dir, **layout) -> tuple[ckpt.TrainState, object]:
    """A real checkpoint on disk with the given layout fields, loaded back as a resume loads it."""
    path = ckpt.save_checkpoint(run_dir, ckpt.TrainState(step=3, **layout), {"w": torch.zeros(1)}, NO_OPTIMIZER,
                                {"class_names": {"genre": ["a", "b"]}})
    return ckpt.load_checkpoint(path)[0], path


# ----------------------------------------------------------------------------------------------
# The batch layout: world size, --batch-size per rank, --grad-accum
# ----------------------------------------------------------------------------------------------
def test_a_checkpoint_resumes_in_the_layout_it_was_saved_in(tmp_path):
    state, path = saved_checkpoint(tmp_path, world_size=2, batch_size=8, grad_accum=3, epoch_workers=2)
    assert (state.world_size, state.batch_size, state.grad_accum) == (2, 8, 3)  # the file keeps them
    check_data_layout(state, path, world_size=2, batch_size=8, grad_accum=3)  # accepted: returns None


@pytest.mark.parametrize("now", [(1, 8, 3), (2, 4, 3), (2, 8, 1), (4, 4, 3)],
                         ids=["world-size", "batch-size", "grad-accum", "same-global-batch"])
def test_any_other_layout_is_refused_naming_both(tmp_path, now):
    state, path = saved_checkpoint(tmp_path, world_size=2, batch_size=8, grad_accum=3)
    with pytest.raises(ckpt.CheckpointError) as refused:
        check_data_layout(state, path, *now)
    message = str(refused.value)
    assert message.startswith(f"checkpoint {path} was saved by a run with world size 2, --batch-size 8 and "
                              f"--grad-accum 3; this run has {now[0]}, {now[1]} and {now[2]}.")
    assert message.endswith("resume with the same three (--workers may differ)")
    assert "\n" not in message  # one line


def test_a_checkpoint_from_before_the_layout_was_recorded_resumes_in_any_layout(tmp_path):
    state, path = saved_checkpoint(tmp_path)  # world_size, batch_size, grad_accum: None
    assert state.world_size is None
    for layout in [(1, 8, 1), (4, 2, 2)]:
        check_data_layout(state, path, *layout)


# ----------------------------------------------------------------------------------------------
# The flags fixed at resume, and the earlier defaults of an old config.json
# ----------------------------------------------------------------------------------------------
def saved_config(tmp_path, argv: list[str]) -> dict:
    """config.json as a run with `argv` writes it (prepare_run_dir's writer), read back."""
    run = RunDir(tmp_path / "saved")
    run.path.mkdir(parents=True, exist_ok=True)
    write_json(run.config, parse_train_config(argv).to_dict(), indent=2, sort_keys=True, ensure_ascii=True)
    return json.loads(run.config.read_text())


def test_the_fixed_flags_are_the_model_the_optimizer_groups_and_the_combined_data():
    assert FIXED_AT_RESUME == (("model", "attention_pool"), ("optim", "exclude_norm_bias_decay"),
                               ("optim", "layer_decay"), ("data", "combined_data"))


@pytest.mark.parametrize("then, now, named", [
    (["--attention-pool", "mlp"], [], "--attention-pool mlp"),
    ([], ["--attention-pool", "mlp"], "--attention-pool linear"),
    (["--exclude-norm-bias-decay"], [], "--exclude-norm-bias-decay"),
    ([], ["--exclude-norm-bias-decay"], "--no-exclude-norm-bias-decay"),
    (["--combined-data", "union"], [], "--combined-data union"),
    (["--layer-decay", "0.75"], [], "--layer-decay 0.75"),
    ([], ["--layer-decay", "0.75"], "--layer-decay none"),
])
def test_a_fixed_flag_changed_at_resume_is_refused_in_one_line(tmp_path, then, now, named):
    saved = saved_config(tmp_path, ["--task", "combined", *then])
    with pytest.raises(ValueError) as refused:
        check_resume_recipe(parse_train_config(["--task", "combined", *now]), saved, "checkpoint C")
    assert str(refused.value) == (f"checkpoint C was trained with {named}; resume it with the same (they decide "
                                  f"the model's parameters, the optimizer's groups and the data position)")


def test_every_changed_fixed_flag_is_named_at_once(tmp_path):
    saved = saved_config(tmp_path, ["--task", "combined", "--attention-pool", "mlp", "--exclude-norm-bias-decay",
                                    "--combined-data", "union"])
    with pytest.raises(ValueError, match="trained with --attention-pool mlp --exclude-norm-bias-decay "
                                         "--combined-data union; resume it with the same"):
        check_resume_recipe(parse_train_config(["--task", "combined"]), saved, "checkpoint C")


@pytest.mark.parametrize("now", [
    ["--lr", "0.01", "--backbone-lr", "0.002", "--weight-decay", "0.5"],
    ["--ema-decay", "0.9", "--max-steps", "7", "--epochs", "9"],
    ["--workers", "3", "--batch-size", "4", "--seed", "11"],  # the layout is check_data_layout's
])
def test_the_other_flags_may_change_at_resume(tmp_path, now):
    saved = saved_config(tmp_path, ["--task", "combined"])
    check_resume_recipe(parse_train_config(["--task", "combined", *now]), saved, "checkpoint C")


def test_no_config_json_to_compare_with_is_accepted():
    check_resume_recipe(parse_train_config(["--task", "combined", "--attention-pool", "mlp"]), None, "checkpoint C")


def test_an_old_config_json_gets_the_earlier_defaults_of_the_options_it_predates(tmp_path):
    saved = saved_config(tmp_path, ["--task", "combined"])
    for section, names in EARLIER_DEFAULTS.items():
        for name in names:
            del saved[section][name]  # written before the option existed
    old = with_earlier_defaults(saved)
    assert old["model"]["attention_pool"] == "mlp" and old["optim"]["exclude_norm_bias_decay"] is True
    assert old["data"]["combined_data"] == "union" and old["optim"]["schedule"] == "step"
    assert old["data"]["erasing_fill"] == "uniform" and old["optim"]["mix_partner"] == "flip"
    # What the file does say is kept, and nothing else changes.
    assert old["model"]["backbone"] == saved["model"]["backbone"] and old["train"] == saved["train"]
    kept = with_earlier_defaults({"model": {"attention_pool": "linear"}, "note": "x"})
    assert kept == {"model": {"attention_pool": "linear"}, "note": "x"}
    # So the old run resumes only with the flags it ran with.
    with pytest.raises(ValueError, match="--attention-pool mlp --exclude-norm-bias-decay --combined-data union"):
        check_resume_recipe(parse_train_config(["--task", "combined"]), saved, "checkpoint C")
    check_resume_recipe(parse_train_config(["--task", "combined", "--attention-pool", "mlp",
                                            "--exclude-norm-bias-decay", "--combined-data", "union"]),
                        saved, "checkpoint C")


# ----------------------------------------------------------------------------------------------
# The class list and the task
# ----------------------------------------------------------------------------------------------
def test_the_checkpoints_classes_and_heads_must_be_the_shards(synthetic_shards):
    manifest = load_manifest(synthetic_shards)
    genre = manifest.classes["genre"]
    check_class_names({"genre": genre}, manifest, "checkpoint C", heads=("genre",))
    with pytest.raises(ckpt.CheckpointError) as refused:
        check_class_names({"genre": list(reversed(genre))}, manifest, "checkpoint C", heads=("genre",))
    assert str(refused.value) == (f"checkpoint C: its genre classes ({len(genre)}) do not match the shards' "
                                  f"manifest ({len(genre)}); use shards built with the same class list")
    with pytest.raises(ckpt.CheckpointError, match=r"^checkpoint C has the heads \['genre'\], not \['artist', "
                                                   r"'genre', 'style'\] of this --task; resume only a run"):
        check_class_names({"genre": genre}, manifest, "checkpoint C", heads=("artist", "genre", "style"))
    with pytest.raises(ckpt.CheckpointError, match="has the heads none, not"):
        check_class_names({}, manifest, "checkpoint C", heads=("genre",))


def test_a_head_the_shards_do_not_label_is_refused(synthetic_shards, tmp_path):
    manifest = load_manifest(synthetic_shards)
    manifest.classes.pop("artist")  # as shards built for genre and style only
    with pytest.raises(ckpt.CheckpointError, match="^checkpoint C has a 'artist' head but the shards have no "
                                                   "'artist' labels$"):
        check_class_names({"artist": ["x"]}, manifest, "checkpoint C")


# ----------------------------------------------------------------------------------------------
# The run directory: a run there is refused, continued (--resume) or replaced (--overwrite)
# ----------------------------------------------------------------------------------------------
def config_for(out, *flags: str) -> dict:
    return parse_train_config(["--task", "genre", "--shards", "unused", "--out", str(out), *flags])


def tree(root) -> dict[str, bytes | None]:
    return {p.relative_to(root).as_posix(): (p.read_bytes() if p.is_file() else None) for p in root.rglob("*")}


def test_an_out_that_is_a_file_is_refused_whatever_the_flags(tmp_path):
    out = tmp_path / "out.txt"
    out.write_text("mine")
    for flags in ([], ["--overwrite"], ["--resume", "auto"]):
        with pytest.raises(RunDirError, match=f"^--out {out} is a file, not a directory$"):
            check_run_dir(config_for(out, *flags), Accelerator(cpu=True))
    assert out.read_text() == "mine"


@pytest.mark.parametrize("left", ["config.json", "checkpoints"])
def test_a_directory_holding_a_run_is_refused_without_resume_or_overwrite(tmp_path, left):
    out = tmp_path / "run"
    out.mkdir()
    if left == "checkpoints":
        (out / left).mkdir()  # a run that left checkpoints but no config.json
    else:
        (out / left).write_text("{}")
    before = tree(out)
    with pytest.raises(RunDirError) as refused:
        check_run_dir(config_for(out), Accelerator(cpu=True))
    assert str(refused.value) == (f"--out {out} already holds a run; pass --resume auto to continue it or "
                                  f"--overwrite to start over")
    assert tree(out) == before


def test_a_directory_without_a_run_is_used_as_it_is(tmp_path):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "best").mkdir()  # a best/ alone (copied in by hand) is no run: no config, no checkpoints
    assert check_run_dir(config_for(out), Accelerator(cpu=True)) == out
    prepare_run_dir(config_for(out), Accelerator(cpu=True))
    assert sorted(p.name for p in out.iterdir()) == ["best", "config.json", "notes.txt"]


def test_resume_keeps_the_previous_run_and_answers_its_stop(tmp_path):
    out = tmp_path / "run"
    run = RunDir(out)
    saved_checkpoint(out, world_size=1, batch_size=8, grad_accum=1)
    run.best.mkdir()
    (run.best / "model.safetensors").write_bytes(b"weights")
    run.metrics.write_text('{"kind": "train", "step": 3}\n')
    run.config.write_text("{}")
    run.stopped.write_text('{"step": 3, "reason": "SIGUSR1"}\n')
    cfg = config_for(out, "--resume", "auto")
    assert check_run_dir(cfg, Accelerator(cpu=True)) == out
    prepare_run_dir(cfg, Accelerator(cpu=True))
    assert sorted(p.name for p in out.iterdir()) == ["best", "checkpoints", "config.json", "metrics.jsonl"]
    assert (run.best / "model.safetensors").read_bytes() == b"weights"
    assert run.metrics.read_text() == '{"kind": "train", "step": 3}\n'  # the logger trims it, not this
    assert json.loads(run.config.read_text())["train"]["resume"] == "auto"  # this run's config
    assert ckpt.latest_checkpoint(out).name == "step-00000003"


# ----------------------------------------------------------------------------------------------
# setup_job: a real resume in this process stops at each refusal before writing to --out
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def started_run(synthetic_shards, tmp_path_factory):
    """A tiny genre run set up in-process and checkpointed at step 0 (world size 1, batch 8)."""
    out = tmp_path_factory.mktemp("resume_rules") / "run"
    args = ["--shards", str(synthetic_shards), "--out", str(out), "--task", "genre", "--workers", "0", *TINY]
    job = setup_job(parse_train_config(args))
    assert save_training_state(job) == out / "checkpoints" / "step-00000000"
    return out, args


@pytest.mark.parametrize("flags, error, needles", [
    (["--batch-size", "4"], ckpt.CheckpointError,
     ["world size 1, --batch-size 8 and --grad-accum 1; this run has 1, 4 and 1"]),
    (["--grad-accum", "2"], ckpt.CheckpointError,
     ["world size 1, --batch-size 8 and --grad-accum 1; this run has 1, 8 and 2"]),
    (["--attention-pool", "mlp"], ValueError, ["was trained with --attention-pool linear; resume it with the same"]),
    (["--exclude-norm-bias-decay"], ValueError, ["was trained with --no-exclude-norm-bias-decay"]),
    (["--proj-dim", "8"], ckpt.CheckpointError, ["does not fit the model of this command line"]),
    (["--task", "style"], ckpt.CheckpointError, ["has the heads ['genre'], not ['style'] of this --task"]),
])
def test_setup_job_refuses_the_resume_before_writing(started_run, flags, error, needles):
    out, args = started_run
    before = tree(out)
    with pytest.raises(error) as refused:
        setup_job(parse_train_config([*args, "--resume", "auto", *flags]))
    assert str(refused.value).startswith(f"checkpoint {out / 'checkpoints' / 'step-00000000'}")
    assert all(needle in str(refused.value) for needle in needles), str(refused.value)
    assert tree(out) == before  # not even config.json was rewritten


def test_setup_job_without_resume_refuses_the_directory_of_the_run(started_run):
    out, args = started_run
    before = tree(out)
    with pytest.raises(RunDirError, match="already holds a run"):
        setup_job(parse_train_config(args))
    assert tree(out) == before


def test_setup_job_resumes_with_the_same_layout_and_flags(started_run, capsys):
    out, args = started_run
    job = setup_job(parse_train_config([*args, "--resume", "auto", "--workers", "1", "--lr", "0.01"]))
    assert job.state.step == 0 and (job.state.world_size, job.state.batch_size) == (1, 8)
    assert f"resuming from {out / 'checkpoints' / 'step-00000000'} at step 0" in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["optim"]["lr"] == 0.01  # this run's config
