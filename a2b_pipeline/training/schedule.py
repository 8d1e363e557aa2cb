"""What changes with the step number, as pure functions of the config and the step: the planned length
of a run, when to validate, which parameters are frozen, the learning rate. Resume needs no scheduler
state because of it."""

from __future__ import annotations

import math

import torch
from torch import nn

from a2b_pipeline.configs import RunConfig


def planned_steps(cfg: RunConfig, batches_per_epoch: int) -> int:
    t = cfg.train
    by_epochs = math.ceil(batches_per_epoch * t.num_epochs / t.grad_accum_steps) if t.num_epochs else None
    candidates = [s for s in (t.max_steps, by_epochs) if s is not None]
    return min(candidates)


def val_interval(cfg: RunConfig, batches_per_epoch: int) -> int:
    if cfg.train.val_every_n_steps:
        return cfg.train.val_every_n_steps
    return max(1, math.ceil(batches_per_epoch / cfg.train.grad_accum_steps))  # once per epoch


def apply_freeze(model: nn.Module, cfg: RunConfig, step: int) -> None:
    """The model's own schedule (hf_encoder: unfreezing its top layers), then the config's freeze rules."""
    own = getattr(model, "apply_step", None)
    if own is not None:
        own(step)
    for rule in cfg.model.freeze:
        frozen = rule.until_step is None or step < rule.until_step
        for name, p in model.named_parameters():
            if name.startswith(rule.prefix):
                p.requires_grad_(not frozen)


def lr_at(cfg: RunConfig, step: int, total: int, plateau_scale: float = 1.0) -> float:
    """The learning rate of `step`: a pure function of the step, so resume needs no scheduler state."""
    base, s = cfg.optimizer.lr, cfg.scheduler
    warm = s.warmup_steps
    if s.name == "onecycle" and warm == 0:
        warm = max(1, int(0.3 * total))
    if step < warm:
        start = base / 25 if s.name == "onecycle" else 0.0
        return start + (base - start) * (step + 1) / warm
    if s.name in ("constant", "plateau"):
        return base * plateau_scale
    progress = min(1.0, (step - warm) / max(1, total - warm))
    floor = s.min_lr_ratio
    if s.name == "linear":
        return base * (1.0 - (1.0 - floor) * progress)
    return base * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress)))  # cosine, onecycle


def encoder_lr_at(cfg: RunConfig, step: int, lr: float) -> float | None:
    """An hf_encoder's fine-tuning learning rate at `step`, given the head's `lr` then: the run's schedule
    scaled to `finetune.lr`, 0 before `after_step`, warmed up linearly over `warmup_steps` from there.
    None when the model has no encoder of its own to train."""
    ft = getattr(cfg.model, "finetune", None)
    if ft is None:
        return None
    if step < ft.after_step:
        return 0.0
    warm = min(1.0, (step - ft.after_step + 1) / ft.warmup_steps) if ft.warmup_steps else 1.0
    return (ft.lr or cfg.optimizer.lr) * lr / cfg.optimizer.lr * warm


def set_lr(optimizer: torch.optim.Optimizer, lr: float, encoder_lr: float | None = None) -> None:
    """`lr` for every param group, `encoder_lr` (when given) for the one named "encoder"."""
    for g in optimizer.param_groups:
        g["lr"] = encoder_lr if encoder_lr is not None and g.get("name") == "encoder" else lr
