"""The recipe decisions of a run, from its config: what is frozen when, the learning-rate
schedule, and how --batch-size and the learning rates spread over several ranks.

The task presets make these the seed notebooks' (docs/seed.md, "Seed recipe vs options"); the
functions here only turn the flags into the objects `wikiart.train.setup` builds the job from.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ..config.options import RunConfig, with_earlier_defaults
from ..model.backbones import preprocessing
from .optim import FreezePlan, LRSchedule


def starts_pretrained(cfg: RunConfig) -> bool:
    model = cfg.model
    return bool(model.pretrained or model.pretrained_path)


def with_backbone_preprocessing(cfg: RunConfig) -> RunConfig:
    """--interpolation resolved to the backbone's resize filter when not given (bilinear for
    torchvision, timm's pretrained config for timm/NAME), so config.json records what runs; a
    timm name timm does not know fails here, before anything is written."""
    data = cfg.data
    interpolation = data.interpolation or preprocessing(cfg.model.backbone).interpolation
    return cfg.replace(data=dataclasses.replace(data, interpolation=interpolation))


def freeze_for_run(cfg: RunConfig, model: torch.nn.Module) -> None:
    """--freeze-backbone: the backbone never trains, so it needs no gradients at all. Its
    parameters stop requiring them before DDP wraps the model (DDP then neither registers nor
    synchronises them, and autograd records nothing in the backbone); the FreezePlan keeps it in
    eval mode. --freeze-backbone-epochs instead zeroes the gradients of a backbone that will
    unfreeze, so that one stays registered (`wikiart.train.optim`)."""
    if cfg.optim.freeze_backbone:
        model.backbone.requires_grad_(False)


def freeze_stem_for(cfg: RunConfig) -> bool:
    """The stem is frozen to keep pretrained low-level filters; a random stem must learn. With
    --freeze-backbone the whole backbone is frozen for the run: no stem phase, no unfreezing."""
    return cfg.optim.freeze_stem and starts_pretrained(cfg) and not cfg.optim.freeze_backbone


def unfreeze_epoch_for(cfg: RunConfig) -> int | None:
    """The seed's 1-based unfreeze epoch (stem unfrozen, AdamW rebuilt, cosine restarted). Only a
    pretrained stem is frozen to begin with: a random one trains from the first step."""
    return cfg.optim.unfreeze_epoch if freeze_stem_for(cfg) else None


def freeze_plan_for(cfg: RunConfig, model: torch.nn.Module) -> FreezePlan:
    """What is frozen when (wikiart.train.optim.FreezePlan; epochs 0-based there). A random backbone is
    not frozen by --freeze-backbone-epochs (it would stay random); --freeze-backbone, asked for the
    whole run, freezes any backbone (a random-features probe is a baseline too)."""
    optim_cfg, unfreeze = cfg.optim, unfreeze_epoch_for(cfg)
    frozen_epochs = optim_cfg.freeze_backbone_epochs if starts_pretrained(cfg) else 0
    if optim_cfg.freeze_backbone:
        frozen_epochs = cfg.train.epochs
    return FreezePlan(model, freeze_stem_for(cfg), None if unfreeze is None else unfreeze - 1,
                      backbone_frozen_epochs=frozen_epochs, frozen_bn_eval=optim_cfg.frozen_bn_eval)


def schedule_for(cfg: RunConfig, steps_per_epoch: int, total: int, freeze: FreezePlan) -> LRSchedule:
    optim_cfg = cfg.optim
    return LRSchedule(kind=optim_cfg.schedule, total_steps=total, steps_per_epoch=steps_per_epoch,
                      epochs=cfg.train.epochs, warmup_steps=optim_cfg.warmup_steps, eta_min=optim_cfg.eta_min,
                      t_max_epochs=optim_cfg.cosine_t_max, restart_epoch=freeze.restart_epoch)


def resolve_batch_scaling(cfg: RunConfig, world: int) -> tuple[RunConfig, str]:
    """--batch-scaling turned into the per-rank batch and learning rates that run (what config.json
    then records, as --batch-scaling per-rank), and the line that says which it is."""
    data, optim_cfg = cfg.data, cfg.optim
    batch, scale = data.batch_size, 1
    if data.batch_scaling == "global":
        if batch % world:
            raise ValueError(f"--batch-size {batch} is the global batch (--batch-scaling global) and does not "
                             f"split evenly over {world} ranks; use a multiple of {world}, or --batch-scaling "
                             f"per-rank / linear-lr to take it per rank")
        batch //= world
        line = (f"global batch {data.batch_size} = {world} rank(s) x {batch} (--batch-scaling global, the "
                f"seed's); learning rates as given")
    elif data.batch_scaling == "linear-lr":
        scale = world
        line = (f"global batch {batch * world} = {world} rank(s) x {batch} (--batch-scaling linear-lr); learning "
                f"rates x {world}: {optim_cfg.lr * world:g} new modules, {optim_cfg.backbone_lr * world:g} backbone")
    else:
        line = f"global batch {batch * world} = {world} rank(s) x {batch} (--batch-scaling per-rank); learning rates as given"
    return cfg.replace(data=dataclasses.replace(data, batch_size=batch, batch_scaling="per-rank"),
                       optim=dataclasses.replace(optim_cfg, lr=optim_cfg.lr * scale,
                                                 backbone_lr=optim_cfg.backbone_lr * scale)), line


# The flags a resume must keep: they decide the model's parameters, the optimizer's groups and
# the data position the checkpoint's counters point into.
FIXED_AT_RESUME = (("model", "attention_pool"), ("optim", "exclude_norm_bias_decay"), ("optim", "layer_decay"),
                   ("data", "combined_data"))


def _flag(name: str, value: Any) -> str:
    flag = "--" + name.replace("_", "-")
    if isinstance(value, bool):
        return flag if value else flag.replace("--", "--no-", 1)
    return f"{flag} {'none' if value is None else value}"  # as the command line takes it


def check_resume_recipe(cfg: RunConfig, saved: dict[str, Any] | None, where: str) -> None:
    """Refuse, in one line, to resume a run under flags that change what its checkpoint means."""
    if saved is None:
        return
    saved = with_earlier_defaults(saved)
    now = cfg.to_dict()
    differ = [_flag(name, saved[sec][name]) for sec, name in FIXED_AT_RESUME
              if isinstance(saved.get(sec), dict) and saved[sec].get(name, now[sec][name]) != now[sec][name]]
    if differ:
        raise ValueError(f"{where} was trained with {' '.join(differ)}; resume it with the same (they decide the "
                         f"model's parameters, the optimizer's groups and the data position)")
