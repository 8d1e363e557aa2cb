"""Checks a config passes before any work: values that validate one by one but can't run together.

Field bounds live in configs.py; here is what needs torch: the model is built on the meta device (no
memory, no time) to count its parameters, and a model whose weights, gradients and optimizer state can't
fit in this machine's memory is refused as a config error naming the model's fields, before data is
prepared or anything is written.
"""

from __future__ import annotations

import os

import torch

from a2b_pipeline.configs import ConfigError, RunConfig

# bytes per parameter while training in fp32: weights, gradients, two optimizer moments (Adam/AdamW)
_BYTES_PER_PARAM = 4 * 4


def count_parameters(cfg: RunConfig) -> int | None:
    """Parameters of the config's model, built on the meta device; None when it can't be built there (a
    pretrained encoder reads its weights at build time: the real build raises its own errors)."""
    from a2b_pipeline.models import build_model, model_io

    if cfg.model.name in ("pretrained_encoder", "hf_encoder"):
        return None
    with torch.device("meta"):
        model = build_model(cfg.model, model_io(cfg))
    return sum(p.numel() for p in model.parameters())


def memory_bytes(cfg: RunConfig) -> int:
    """What the model trains in: the first GPU's memory when training there, else the host's RAM."""
    if cfg.train.device != "cpu" and torch.cuda.is_available():
        return torch.cuda.get_device_properties(0).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_runnable(cfg: RunConfig, source: str = "config") -> None:
    """Raise ConfigError when the model can't be held for training on this machine."""
    try:
        n = count_parameters(cfg)
    except (RuntimeError, ValueError, OverflowError) as e:
        raise ConfigError(f"{source}: model: {cfg.model.name} can't be built at these sizes ({e})") from None
    if n is None:
        return
    per_param = _BYTES_PER_PARAM + (4 if cfg.train.ema_decay else 0)
    need, have = n * per_param, memory_bytes(cfg)
    if need > have:
        sizes = cfg.model.model_dump(exclude={"name", "dropout", "freeze"})
        shown = ", ".join(f"model.{k}={v}" for k, v in sizes.items())
        raise ConfigError(
            f"{source}: model: {cfg.model.name} ({shown}) has {n:,} parameters, about {need / 1e9:.1f} GB "
            f"for weights, gradients and optimizer state: more than the {have / 1e9:.1f} GB of memory here"
        )
