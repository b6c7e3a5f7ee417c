"""Parameter groups, warmup + cosine as a pure function of the step, freezing, EMA.

Freezing never flips `requires_grad`: every parameter stays registered with DDP and takes part
in gradient synchronisation from the first step. A frozen parameter instead has its gradient
set to None after backward, so AdamW skips it entirely (no update, no weight decay, no state).
The one exception is --freeze-backbone (`wikiart.train.recipe.freeze_for_run`): a backbone frozen
for the whole run never needs its gradients, so it has none and DDP leaves it out.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any, Iterable, Iterator

import torch
from torch import nn

from ..config.options import OptimConfig


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict[str, Any]]:
    """New modules at cfg.lr, backbone at cfg.backbone_lr, weight decay on every parameter (the
    seed's two AdamW groups); with cfg.exclude_norm_bias_decay (ours) biases and norm weights go
    into `*_no_decay` groups without decay; with cfg.layer_decay (ours) the backbone is one group per
    layer (`backbone_layerK`, see `_backbone_lr_groups`)."""
    groups = []
    for name, params, lr in (("new", model.new_parameters(), cfg.lr), *_backbone_lr_groups(model, cfg)):
        split = ((("", [p for p in params if p.ndim > 1], cfg.weight_decay),
                  ("_no_decay", [p for p in params if p.ndim <= 1], 0.0))
                 if cfg.exclude_norm_bias_decay else (("", params, cfg.weight_decay),))
        for suffix, group, wd in split:
            if group:
                groups.append({"name": name + suffix, "params": group, "lr": lr, "base_lr": lr,
                               "weight_decay": wd})
    grouped = [id(p) for g in groups for p in g["params"]]
    if len(grouped) != len(set(grouped)) or set(grouped) != {id(p) for p in model.parameters()}:
        raise RuntimeError("backbone_parameters() and new_parameters() must split the model's parameters")
    return groups


def _backbone_lr_groups(model: nn.Module, cfg: OptimConfig) -> list[tuple[str, list[nn.Parameter], float]]:
    """(name, parameters, peak lr) of the backbone: one group at cfg.backbone_lr, or with
    cfg.layer_decay timm's layer-wise decay (BEiT's): layer k of L (stem 0, blocks, final norm
    L - 2; the new modules are L - 1, timm's head) at backbone_lr * layer_decay ** (L - 1 - k), as
    timm's `param_groups_layer_decay` scales them."""
    if cfg.layer_decay is None:
        return [("backbone", model.backbone_parameters(), cfg.backbone_lr)]
    if not hasattr(model.backbone, "layer_ids"):
        raise ValueError(f"--layer-decay {cfg.layer_decay:g} needs a timm backbone (--backbone timm/NAME), whose "
                         f"layers timm numbers; this backbone has one --backbone-lr")
    if cfg.layer_decay > 1:
        raise ValueError(f"--layer-decay {cfg.layer_decay:g}: expected a decay in (0, 1], e.g. 0.75")
    layer_of, count = model.backbone.layer_ids()
    layers: dict[int, list[nn.Parameter]] = {}
    for name, param in model.backbone.named_parameters():
        layers.setdefault(layer_of[name], []).append(param)
    return [(f"backbone_layer{k}", layers[k], cfg.backbone_lr * cfg.layer_decay ** (count - 1 - k))
            for k in sorted(layers)]


def build_optimizer(model: nn.Module, cfg: OptimConfig, fused: bool | None = None) -> torch.optim.AdamW:
    """AdamW over `param_groups`; each group keeps its peak lr in group["base_lr"] for `apply_lr`."""
    return torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)


def reset_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Forget every parameter's AdamW moments and step count: the optimizer then behaves as one
    built anew over the same groups (the seed rebuilds its AdamW when it unfreezes the stem)."""
    inner = getattr(optimizer, "optimizer", optimizer)  # Accelerate's wrapper holds the torch one
    inner.state.clear()


def lr_factor(step: int, total_steps: int, warmup_steps: int, eta_min_ratio: float) -> float:
    """Multiplier of the peak lr at optimizer step `step` (0-based).

    Linear warmup (step+1)/warmup_steps for the first warmup_steps steps, then a cosine from 1
    at step warmup_steps down to eta_min_ratio at total_steps (and flat after it).
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(max(step - warmup_steps, 0) / max(total_steps - warmup_steps, 1), 1.0)
    return eta_min_ratio + (1.0 - eta_min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def lr_at(step: int, base_lr: float, total_steps: int, warmup_steps: int, eta_min: float) -> float:
    """Learning rate at `step` for a group whose peak is base_lr and floor eta_min."""
    return base_lr * lr_factor(step, total_steps, warmup_steps, eta_min / base_lr)


@dataclasses.dataclass(frozen=True)
class LRSchedule:
    """Peak lr -> lr at (step, epoch): warmup, then a cosine per epoch (the seed's
    CosineAnnealingLR stepped once an epoch) or per optimizer step (ours), restarted at
    `restart_epoch` (0-based; the seed's style restart at its 1-based epoch 7 is 6).

    Per epoch: lr(e) = eta_min + (peak - eta_min) (1 + cos(pi e / T)) / 2, e counted from the
    cycle's first epoch, T = t_max_epochs (default: the run's epochs) for the first cycle and the
    epochs left for a restarted one (the seed's `epochs - epoch + 1`). Like torch's closed form it
    is not clamped at T. Per step: the cosine runs over the cycle's steps to the run's end (or
    t_max_epochs of steps) and stays at eta_min after it.
    """
    kind: str                      # "epoch" or "step"
    total_steps: int
    steps_per_epoch: int
    epochs: int
    warmup_steps: int = 0
    eta_min: float = 0.0
    t_max_epochs: int | None = None
    restart_epoch: int | None = None

    def cycle_start(self, epoch: int) -> int:
        restarted = self.restart_epoch is not None and epoch >= self.restart_epoch
        return self.restart_epoch if restarted else 0

    def lr(self, base_lr: float, step: int, epoch: int) -> float:
        if step < self.warmup_steps:
            return base_lr * (step + 1) / self.warmup_steps
        start = self.cycle_start(epoch)
        if self.kind == "epoch":
            span = (self.t_max_epochs or self.epochs) if start == 0 else self.epochs - start
            cosine = 0.5 * (1.0 + math.cos(math.pi * (epoch - start) / max(span, 1)))
            return self.eta_min + (base_lr - self.eta_min) * cosine
        first = max(start * self.steps_per_epoch, self.warmup_steps)
        end = first + self.t_max_epochs * self.steps_per_epoch if self.t_max_epochs and start == 0 \
            else self.total_steps
        return lr_at(step - first, base_lr, end - first, 0, self.eta_min)


def apply_lr(optimizer: torch.optim.Optimizer, schedule: LRSchedule, step: int, epoch: int) -> list[float]:
    """Set every group's lr for (step, epoch) from its base lr; a resumed run only needs the counters."""
    lrs = []
    for group in optimizer.param_groups:
        group["lr"] = schedule.lr(group["base_lr"], step, epoch)
        lrs.append(group["lr"])
    return lrs


def _params_of(optimizer_or_params: Any) -> list[torch.Tensor]:
    if hasattr(optimizer_or_params, "param_groups"):
        return [p for g in optimizer_or_params.param_groups for p in g["params"]]
    return list(optimizer_or_params)


class FreezePlan:
    """Which backbone parts are frozen at an epoch (0-based), and when the optimizer restarts.

    Phases: BACKBONE_FROZEN for the first `backbone_frozen_epochs` epochs (ours: only the new
    modules train, the whole backbone in eval mode: BatchNorm, dropout, drop-path); then STEM_FROZEN while `freeze_stem`
    and before `unfreeze_epoch` (the seed: conv1/bn1 frozen, layer1-4 training, bn1 left in train
    mode unless `frozen_bn_eval`); then NONE_FROZEN. Entering NONE_FROZEN at `unfreeze_epoch`
    is where the seed rebuilds AdamW and restarts its cosine (`restart_epoch`).
    Needs `model.backbone` and `model.stem_modules()`.
    """

    BACKBONE_FROZEN, STEM_FROZEN, NONE_FROZEN = 0, 1, 2

    def __init__(self, model: nn.Module, freeze_stem: bool, unfreeze_epoch: int | None = None,
                 backbone_frozen_epochs: int = 0, frozen_bn_eval: bool = False):
        self.model = model
        self.freeze_stem = freeze_stem
        self.unfreeze_epoch = unfreeze_epoch if freeze_stem else None
        self.backbone_frozen_epochs = backbone_frozen_epochs
        self.frozen_bn_eval = frozen_bn_eval
        self._frozen_ids: dict[int, frozenset[int]] = {}  # per phase: computed once, used every step

    def phase(self, epoch: int) -> int:
        if epoch < self.backbone_frozen_epochs:
            return self.BACKBONE_FROZEN
        if self.freeze_stem and (self.unfreeze_epoch is None or epoch < self.unfreeze_epoch):
            return self.STEM_FROZEN
        return self.NONE_FROZEN

    @property
    def restart_epoch(self) -> int | None:
        """The epoch whose start rebuilds the optimizer and restarts the cosine (None: never)."""
        return self.unfreeze_epoch

    def frozen_modules(self, epoch: int, model: nn.Module | None = None) -> list[nn.Module]:
        model = self.model if model is None else model
        phase = self.phase(epoch)
        if phase == self.BACKBONE_FROZEN:
            return [model.backbone]
        return model.stem_modules() if phase == self.STEM_FROZEN else []

    def frozen_parameters(self, epoch: int) -> list[nn.Parameter]:
        seen: dict[int, nn.Parameter] = {}
        for module in self.frozen_modules(epoch):
            seen.update((id(p), p) for p in module.parameters())
        return list(seen.values())

    def frozen_names(self, epoch: int) -> list[str]:
        frozen = {id(p) for p in self.frozen_parameters(epoch)}
        return [n for n, p in self.model.named_parameters() if id(p) in frozen]

    def zero_frozen_grads(self, optimizer_or_params: torch.optim.Optimizer | Iterable[torch.Tensor],
                          epoch: int) -> int:
        """After backward, before clipping and step: drop the grads of frozen parameters.

        Takes an optimizer or the parameters (the same objects under DDP); returns how many
        gradients were dropped.
        """
        phase = self.phase(epoch)
        if phase not in self._frozen_ids:
            self._frozen_ids[phase] = frozenset(id(p) for p in self.frozen_parameters(epoch))
        frozen = self._frozen_ids[phase]
        if not frozen:
            return 0
        dropped = 0
        for p in _params_of(optimizer_or_params):
            if id(p) in frozen and p.grad is not None:
                p.grad = None
                dropped += 1
        return dropped

    def apply_bn_mode(self, model: nn.Module, epoch: int) -> None:
        """Call after model.train(): a frozen backbone goes into eval mode, BatchNorm layers of a
        frozen stem with `frozen_bn_eval` normalise with, and keep, their running statistics. The seed's
        frozen bn1 stays in train mode: batch statistics, running statistics updated."""
        phase = self.phase(epoch)
        if phase == self.BACKBONE_FROZEN:
            model.backbone.eval()  # a frozen backbone computes fixed features: no dropout or drop-path either
            return
        if phase == self.STEM_FROZEN and not self.frozen_bn_eval:
            return
        for module in self.frozen_modules(epoch, model):
            for sub in module.modules():
                if isinstance(sub, nn.modules.batchnorm._BatchNorm):
                    sub.eval()


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


class ModelEMA:
    """Exponential moving average of a model's parameters and float buffers (integer buffers are copied)."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.num_updates = 0
        self.shadow = {k: v.detach().clone() for k, v in _unwrap(model).state_dict().items()}
        self._pairs: tuple[list, list, list, list] | None = None  # built at the first update

    def _build_pairs(self, model: nn.Module) -> tuple[list, list, list, list]:
        """(float shadows, float live tensors, other shadows, other live tensors), on one device.

        The live tensors share storage with the model's parameters and buffers (updated in
        place by the optimizer and by load_state_dict), so the lists stay valid."""
        floats, float_values, others, other_values = [], [], [], []
        for key, value in _unwrap(model).state_dict().items():
            shadow = self.shadow[key]
            if shadow.device != value.device or shadow.dtype != value.dtype:  # made before prepare()
                shadow = self.shadow[key] = shadow.to(value.device, value.dtype)
            if shadow.is_floating_point():
                floats.append(shadow), float_values.append(value)
            else:
                others.append(shadow), other_values.append(value)
        return floats, float_values, others, other_values

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """shadow = decay * shadow + (1 - decay) * current, after each optimizer step: one
        fused multi-tensor lerp (a few kernel launches on a GPU, not one per tensor)."""
        if self._pairs is None:
            self._pairs = self._build_pairs(model)
        floats, float_values, others, other_values = self._pairs
        if floats:
            torch._foreach_lerp_(floats, float_values, 1.0 - self.decay)
        for shadow, value in zip(others, other_values):
            shadow.copy_(value)
        self.num_updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "num_updates": self.num_updates, "shadow": dict(self.shadow)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state["shadow"]) != set(self.shadow):
            raise ValueError("EMA state does not match the model (different parameter names)")
        self.decay = state["decay"]
        self.num_updates = state["num_updates"]
        self.shadow = {k: v.detach().clone().to(self.shadow[k].device) for k, v in state["shadow"].items()}
        self._pairs = None

    def copy_to(self, model: nn.Module) -> None:
        _unwrap(model).load_state_dict(self.shadow)

    @contextlib.contextmanager
    def swapped_into(self, model: nn.Module) -> Iterator[nn.Module]:
        """Run the block with the EMA weights in `model`, then restore the live weights."""
        net = _unwrap(model)
        live = {k: v.detach().clone() for k, v in net.state_dict().items()}
        self.copy_to(net)
        try:
            yield net
        finally:
            net.load_state_dict(live)


HYPERPARAMETERS = ("base_lr", "weight_decay")  # per parameter group, set by --lr/--backbone-lr/--weight-decay


def restore_hyperparameters(optimizer: torch.optim.Optimizer, chosen: list[dict[str, float]]) -> list[str]:
    """Put this command line's peak learning rates and weight decay back into the param groups
    that a loaded optimizer state replaced (its moments are kept); returns what changed."""
    changed = []
    for group, values in zip(optimizer.param_groups, chosen):
        for key, value in values.items():
            if group[key] != value:
                changed.append(f"{group.get('name', 'group')} {key} {group[key]:g} -> {value:g}")
            group[key] = value
    return changed
