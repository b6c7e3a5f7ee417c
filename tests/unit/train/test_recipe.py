"""The recipe decisions (train/recipe.py) in-process: --batch-scaling, an old run's earlier
defaults, unfreezing at the first epoch (whole preset runs: tests/integration/test_recipe.py)."""

from __future__ import annotations

import pytest

from wikiart.config.options import ModelConfig
from wikiart.model.classifier import from_config


@pytest.mark.parametrize("scaling, ranks, per_rank, lr_scale", [
    ("global", 1, 64, 1), ("global", 4, 16, 1), ("linear-lr", 4, 64, 4), ("per-rank", 4, 64, 1)])
def test_batch_scaling_keeps_the_seed_global_batch_or_scales_the_learning_rate(scaling, ranks, per_rank, lr_scale):
    from wikiart.config.options import parse_train_config
    from wikiart.train.recipe import resolve_batch_scaling
    cfg, line = resolve_batch_scaling(parse_train_config(["--task", "genre", "--batch-scaling", scaling]), ranks)
    assert cfg.data.batch_size == per_rank and cfg.data.batch_scaling == "per-rank"  # what config.json records
    assert (cfg.optim.lr, cfg.optim.backbone_lr) == pytest.approx((8e-4 * lr_scale, 1.5e-4 * lr_scale))
    assert f"global batch {per_rank * ranks} = {ranks} rank(s) x {per_rank}" in line and scaling in line


def test_a_global_batch_that_does_not_split_over_the_ranks_is_refused():
    from wikiart.config.options import parse_train_config
    from wikiart.train.recipe import resolve_batch_scaling
    with pytest.raises(ValueError, match="--batch-size 64 is the global batch .* over 3 ranks"):
        resolve_batch_scaling(parse_train_config(["--task", "genre"]), 3)


def test_a_run_older_than_the_seed_options_resumes_and_evaluates_as_it_ran():
    """A config.json written before an option existed ran with that option's earlier behaviour:
    resuming it under other flags is refused in one line; evaluation rebuilds the model it had."""
    from wikiart.config.options import RunConfig, parse_train_config
    from wikiart.train.recipe import check_resume_recipe, with_earlier_defaults
    old = {"model": {"backbone": "resnet18"}, "optim": {"lr": 0.001}, "data": {"task": "combined"}}
    assert RunConfig.from_dict(with_earlier_defaults(old)).model.attention_pool == "mlp"
    now = parse_train_config(["--task", "combined"])
    with pytest.raises(ValueError, match="--attention-pool mlp --exclude-norm-bias-decay --combined-data union"):
        check_resume_recipe(now, old, "checkpoint X")
    same = parse_train_config(["--task", "combined", "--attention-pool", "mlp", "--exclude-norm-bias-decay",
                               "--combined-data", "union"])
    check_resume_recipe(same, old, "checkpoint X")  # the flags it ran with: accepted
    check_resume_recipe(now, None, "checkpoint X")  # no config.json to compare with


def test_unfreezing_at_the_first_epoch_restarts_there():
    from wikiart.train.optim import FreezePlan
    model = from_config(ModelConfig(backbone="resnet18", pretrained=False, proj_dim=8, rnn_hidden=8, rnn_layers=1),
                        {"genre": ["a", "b"]}, 32)
    assert FreezePlan(model, freeze_stem=True, unfreeze_epoch=0).restart_epoch == 0
