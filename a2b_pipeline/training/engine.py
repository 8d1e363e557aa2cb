"""What training and evaluation share: the device, autocast, EMA weights, checked weight loading and one
pass of a model over a loader."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from a2b_pipeline.checkpoint.directory import CheckpointError
from a2b_pipeline.configs import RunConfig
from a2b_pipeline.data.meta_dataloader import MetaDataLoader
from a2b_pipeline.training.metrics import MetricAccumulator


def pick_device(cfg: RunConfig, local_rank: int = 0) -> torch.device:
    """`train.device`: "auto" takes CUDA when present (this process's local rank), else the CPU."""
    want = cfg.train.device
    if want == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but no CUDA device is available")
    if want in ("auto", "cuda") and torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def autocast_context(cfg: RunConfig, device: torch.device) -> Any:
    if cfg.train.precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if cfg.train.precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


class EMA:
    """Exponential moving average of the weights; validation and `best` use it when enabled."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].lerp_(v, 1.0 - self.decay)
            else:
                self.shadow[k].copy_(v)

    @contextlib.contextmanager
    def swapped_in(self, model: nn.Module) -> Iterator[None]:
        backup = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.shadow)
        try:
            yield
        finally:
            model.load_state_dict(backup)


def checked_weights(
    tensors: dict[str, torch.Tensor], model: nn.Module, where: Path, name: str = "model.safetensors"
) -> dict[str, torch.Tensor]:
    """Refuse weights that don't fit this model, naming the keys and shapes."""
    own = model.state_dict()
    missing = sorted(set(own) - set(tensors))
    extra = sorted(set(tensors) - set(own))
    shapes = [
        f"{k}: {tuple(tensors[k].shape)} vs {tuple(own[k].shape)}"
        for k in own.keys() & tensors.keys()
        if tensors[k].shape != own[k].shape
    ]
    if missing or extra or shapes:
        raise CheckpointError(
            f"{where}/{name} does not fit model {type(model).__name__}: "
            f"missing keys {missing[:5]}, unexpected keys {extra[:5]}, wrong shapes {shapes[:5]}"
        )
    return tensors


@torch.no_grad()
def evaluate_loader(
    model: nn.Module,
    loader: MetaDataLoader,
    loss_fn: Any,
    autocast: Any,
    device: torch.device,
    channels: list[str],
    prefix: str,
) -> dict[str, float]:
    """Loss, MAE, MSE, Pearson r and CCC (per channel and mean) over one pass; the model is left in
    train mode."""
    model.eval()
    acc = MetricAccumulator(channels)
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        with autocast:
            pred = model(x)
        acc.update(pred.float(), y, loss_fn(pred, y))
    model.train()
    return acc.compute(prefix)
