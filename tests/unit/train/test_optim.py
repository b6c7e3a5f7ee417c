"""Optimizer groups, the lr schedule by hand, freezing without touching requires_grad, EMA."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from wikiart.config.options import OptimConfig
from wikiart.train.losses import hard_targets, multitask_loss
from wikiart.model.classifier import CNNRNNClassifier
from wikiart.train.optim import FreezePlan, LRSchedule, ModelEMA, apply_lr, build_optimizer, lr_at, lr_factor


def tiny_model() -> CNNRNNClassifier:
    torch.manual_seed(0)
    return CNNRNNClassifier("resnet18", num_classes={"genre": 3}, proj_dim=8, rnn_hidden=4, rnn_layers=1,
                            image_size=32)


def test_schedule_by_hand():
    # warmup 10 steps, cosine over the next 100
    assert lr_factor(0, 110, 10, 0.0) == pytest.approx(0.1)
    assert lr_factor(4, 110, 10, 0.0) == pytest.approx(0.5)
    assert lr_factor(9, 110, 10, 0.0) == pytest.approx(1.0)
    assert lr_factor(10, 110, 10, 0.0) == pytest.approx(1.0)
    assert lr_factor(35, 110, 10, 0.0) == pytest.approx(0.5 * (1 + math.sqrt(0.5)))  # quarter way
    assert lr_factor(60, 110, 10, 0.0) == pytest.approx(0.5)                         # half way
    assert lr_factor(110, 110, 10, 0.0) == pytest.approx(0.0)
    assert lr_factor(500, 110, 10, 0.0) == pytest.approx(0.0)
    assert lr_factor(0, 100, 0, 0.0) == pytest.approx(1.0)  # no warmup: full lr on the first step
    assert lr_at(60, 1e-3, 110, 10, 1e-5) == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5)
    assert lr_at(110, 1e-3, 110, 10, 1e-5) == pytest.approx(1e-5)
    assert lr_at(4, 1e-3, 110, 10, 1e-5) == pytest.approx(5e-4)


def test_optimizer_groups_and_apply_lr():
    model = tiny_model()
    seed = {g["name"]: g for g in build_optimizer(model, OptimConfig(weight_decay=0.05)).param_groups}
    assert set(seed) == {"new", "backbone"}  # the seed's two groups, every parameter decayed
    assert seed["new"]["weight_decay"] == seed["backbone"]["weight_decay"] == 0.05
    assert id(model.backbone.bn1.weight) in {id(p) for p in seed["backbone"]["params"]}
    cfg = OptimConfig(lr=8e-4, backbone_lr=1.5e-4, weight_decay=0.05, eta_min=1e-6, exclude_norm_bias_decay=True)
    opt = build_optimizer(model, cfg)
    assert isinstance(opt, torch.optim.AdamW)
    groups = {g["name"]: g for g in opt.param_groups}
    assert set(groups) == {"new", "new_no_decay", "backbone", "backbone_no_decay"}
    backbone = {id(p) for n in ("backbone", "backbone_no_decay") for p in groups[n]["params"]}
    assert backbone == {id(p) for p in model.backbone_parameters()}
    assert groups["backbone"]["base_lr"] == 1.5e-4 and groups["new"]["base_lr"] == 8e-4
    assert groups["new"]["weight_decay"] == 0.05 and groups["new_no_decay"]["weight_decay"] == 0.0
    assert id(model.backbone.bn1.weight) in {id(p) for p in groups["backbone_no_decay"]["params"]}
    lrs = apply_lr(opt, LRSchedule("step", 110, 11, 10, warmup_steps=10, eta_min=cfg.eta_min), 60, 5)
    for group, lr in zip(opt.param_groups, lrs):
        assert group["lr"] == lr == pytest.approx(lr_at(60, group["base_lr"], 110, 10, 1e-6))
    assert groups["new"]["lr"] == pytest.approx(1e-6 + (8e-4 - 1e-6) / 2)


def test_freeze_plan_phases():
    model = tiny_model()
    backbone = {id(p) for p in model.backbone_parameters()}
    stem = {id(p) for p in model.stem_parameters()}
    style = FreezePlan(model, freeze_stem=True, unfreeze_epoch=6)  # the seed's 1-based epoch 7
    assert [style.phase(e) for e in (0, 5, 6, 19)] == [FreezePlan.STEM_FROZEN] * 2 + [FreezePlan.NONE_FROZEN] * 2
    assert {id(p) for p in style.frozen_parameters(5)} == stem and style.frozen_parameters(6) == []
    assert style.frozen_names(0) == ["backbone.conv1.weight", "backbone.bn1.weight", "backbone.bn1.bias"]
    assert style.restart_epoch == 6
    ours = FreezePlan(model, freeze_stem=True, backbone_frozen_epochs=2)
    assert [ours.phase(e) for e in range(4)] == [0, 0, 1, 1] and ours.restart_epoch is None
    assert {id(p) for p in ours.frozen_parameters(1)} == backbone
    assert {id(p) for p in ours.frozen_parameters(2)} == stem
    assert FreezePlan(model, freeze_stem=False, unfreeze_epoch=2).frozen_parameters(5) == []
    assert FreezePlan(model, freeze_stem=False, unfreeze_epoch=2).restart_epoch is None  # nothing to unfreeze


def test_the_seed_leaves_the_frozen_bn1_in_train_mode_and_ours_puts_it_in_eval():
    model = tiny_model()
    for bn_eval in (False, True):
        model.train()
        FreezePlan(model, freeze_stem=True, frozen_bn_eval=bn_eval).apply_bn_mode(model, 0)
        assert model.backbone.bn1.training is not bn_eval and model.backbone.layer1[0].bn1.training


def test_the_task_presets_freeze_only_a_pretrained_backbone():
    from wikiart.config.options import parse_train_config
    from wikiart.train.recipe import freeze_stem_for, unfreeze_epoch_for
    style = parse_train_config(["--task", "style", "--shards", "s", "--no-pretrained"])
    assert style.optim.unfreeze_epoch == 7 and unfreeze_epoch_for(style) is None  # random: trains at once
    assert not freeze_stem_for(style)
    for flags in ([], ["--pretrained-path", "w.pth"]):  # []: ImageNet weights by default
        cfg = parse_train_config(["--task", "style", "--shards", "s", *flags])
        assert unfreeze_epoch_for(cfg) == 7 and freeze_stem_for(cfg)
    combined = parse_train_config(["--task", "combined", "--shards", "s"])
    assert unfreeze_epoch_for(combined) is None and freeze_stem_for(combined)


@pytest.mark.parametrize("epochs, t_max, restart", [(10, 15, None), (20, None, 6), (20, None, None), (4, 4, 2)])
def test_the_epoch_schedule_is_torchs_cosine_annealing_stepped_per_epoch(epochs, t_max, restart):
    """The seed's loop: CosineAnnealingLR(T_max, eta_min=1e-6).step() after each epoch; at its
    restart epoch a new AdamW and a CosineAnnealingLR(T_max=epochs - epoch + 1)."""
    steps_per_epoch = 3
    schedule = LRSchedule("epoch", epochs * steps_per_epoch, steps_per_epoch, epochs, eta_min=1e-6,
                          t_max_epochs=t_max, restart_epoch=restart)
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in range(2)]

    def seed_scheduler(span):
        opt = torch.optim.AdamW([{"params": [params[0]], "lr": 8e-4}, {"params": [params[1]], "lr": 1.5e-4}])
        return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=span, eta_min=1e-6)

    opt, sched = seed_scheduler(t_max or epochs)
    for epoch in range(epochs):
        if epoch == restart:
            opt, sched = seed_scheduler(epochs - epoch)
        for step in range(epoch * steps_per_epoch, (epoch + 1) * steps_per_epoch):
            for group, peak in zip(opt.param_groups, (8e-4, 1.5e-4)):
                assert schedule.lr(peak, step, epoch) == pytest.approx(group["lr"], rel=1e-12, abs=1e-15)
        opt.step()  # no gradients: nothing moves; keeps torch's step-order check quiet
        sched.step()
    if (epochs, t_max) == (10, 15):  # artist/genre: the last epoch trains near 35 % of the peak
        assert schedule.lr(8e-4, 29, 9) / 8e-4 == pytest.approx(0.35, abs=0.01)


def test_the_step_schedule_restarts_its_cosine_at_the_restart_epoch():
    schedule = LRSchedule("step", 40, 10, 4, eta_min=0.0, restart_epoch=2)
    assert schedule.lr(1.0, 0, 0) == 1.0 and schedule.lr(1.0, 10, 1) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert schedule.lr(1.0, 20, 2) == 1.0 and schedule.lr(1.0, 30, 3) == pytest.approx(0.5)
    assert LRSchedule("step", 40, 10, 4, t_max_epochs=2).lr(1.0, 20, 2) == 0.0  # flat after its end


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _train(model, opt, plan, epoch, steps=3):
    model.train()
    plan.apply_bn_mode(model, epoch)
    g = torch.Generator().manual_seed(epoch)
    for _ in range(steps):
        x = torch.randn(4, 3, 32, 32, generator=g)
        targets = hard_targets({"genre": torch.tensor([0, 1, 2, 0])}, {"genre": 3})
        loss, _ = multitask_loss(model(x), targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        plan.zero_frozen_grads(model.parameters(), epoch)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()


def _changed(before, after, prefix):
    return {k for k in before if k.startswith(prefix) and not torch.equal(before[k], after[k])}


def test_frozen_parameters_do_not_move_until_unfrozen():
    model = tiny_model()
    # a large weight decay: a zero (rather than None) gradient would still shrink the weights
    opt = build_optimizer(model, OptimConfig(lr=1e-2, backbone_lr=1e-2, weight_decay=0.5))
    plan = FreezePlan(model, freeze_stem=True, backbone_frozen_epochs=1)
    start = _snapshot(model)
    _train(model, opt, plan, epoch=0)
    phase0 = _snapshot(model)
    assert not _changed(start, phase0, "backbone.")  # weights and BN running stats
    assert {"heads.genre.weight", "proj.0.weight", "row_rnn.weight_ih_l0", "proj.1.running_mean"} \
        <= _changed(start, phase0, "")
    assert not any(id(p) in opt.state for p in model.backbone_parameters())  # no AdamW moments either
    assert all(p.requires_grad for p in model.parameters())  # DDP keeps syncing every parameter

    _train(model, opt, plan, epoch=1)
    phase1 = _snapshot(model)
    assert {"backbone.layer4.1.conv2.weight", "backbone.layer1.0.bn1.running_mean"} \
        <= _changed(phase0, phase1, "backbone.")
    assert not _changed(phase0, phase1, "backbone.conv1.")
    # the seed's frozen bn1 keeps its weights but, in train mode, updates its running statistics
    assert _changed(phase0, phase1, "backbone.bn1.") == {"backbone.bn1.running_mean", "backbone.bn1.running_var",
                                                          "backbone.bn1.num_batches_tracked"}


def test_zero_frozen_grads_accepts_an_optimizer():
    model = tiny_model()
    opt = build_optimizer(model, OptimConfig())
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    plan = FreezePlan(model, freeze_stem=True, unfreeze_epoch=None)
    assert plan.zero_frozen_grads(opt, epoch=0) == 3  # conv1.weight, bn1.weight, bn1.bias
    assert model.backbone.conv1.weight.grad is None and model.backbone.layer1[0].conv1.weight.grad is not None


def test_ema_by_hand_and_swap():
    model = nn.Sequential(nn.Linear(2, 1), nn.BatchNorm1d(1))
    with torch.no_grad():
        model[0].weight.fill_(1.0)
    ema = ModelEMA(model, decay=0.75)
    with torch.no_grad():
        model[0].weight.fill_(5.0)
    model[1].num_batches_tracked.fill_(7)
    ema.update(model)
    assert torch.allclose(ema.shadow["0.weight"], torch.full((1, 2), 0.75 * 1.0 + 0.25 * 5.0))
    assert ema.shadow["1.num_batches_tracked"].item() == 7  # integer buffers are copied, not averaged
    with ema.swapped_into(model):
        assert torch.allclose(model[0].weight, torch.full((1, 2), 2.0))
    assert torch.equal(model[0].weight, torch.full((1, 2), 5.0))

    restored = ModelEMA(model, decay=0.5)
    restored.load_state_dict(ema.state_dict())
    assert restored.decay == 0.75 and restored.num_updates == 1
    restored.copy_to(model)
    assert torch.allclose(model[0].weight, torch.full((1, 2), 2.0))
