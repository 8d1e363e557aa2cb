"""A compact summary of a run config, for the places that show a config only as a hash (the Dagster
pages of training_run, best_checkpoint and evaluation): what a person compares between experiments."""

from __future__ import annotations

import json
from typing import Any

from a2b_pipeline.configs import RunConfig


def _size(n_bytes: int | None) -> str:
    if not n_bytes:
        return ""
    params = n_bytes / 4  # fp32 weights
    return f", {params / 1e6:.2f} M params" if params >= 1e5 else f", {params / 1e3:.1f} k params"


def _loss(cfg: RunConfig) -> str:
    loss = cfg.train.loss
    terms = [t.name if t.weight == 1.0 else f"{t.weight:g}*{t.name}" for t in loss.terms]
    return " + ".join(terms)


def summarize_config(
    cfg: RunConfig, model_bytes: int | None = None, overrides: dict[str, Any] | None = None
) -> dict[str, str]:
    """Key -> one short line: model (and size), loss, optimizer and learning rate, datasets with their
    mixing weights, the split's group_by, steps; a sweep experiment's overrides."""
    opt = cfg.optimizer
    steps = cfg.train.max_steps
    out = {
        "model": f"{cfg.model.name}{_size(model_bytes)}",
        "loss": _loss(cfg),
        "optimizer": f"{opt.name}, lr {opt.lr:g}"
        + (f", weight decay {opt.weight_decay:g}" if opt.weight_decay else ""),
        "datasets": ", ".join(f"{d.name} (weight {d.weight:g})" for d in cfg.data.datasets),
        "group_by": cfg.data.split.group_by,
        "steps": f"{steps}" if steps is not None else f"{cfg.train.num_epochs} epochs",
    }
    if overrides:
        out["overrides"] = ", ".join(
            f"{k}={json.dumps(v, separators=(',', ':'))}" for k, v in overrides.items()
        )
    return out
