"""Metrics and predictions of a checkpoint on a split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from a2b_pipeline.data.pipeline import PreparedData, make_loader, prepare_data
from a2b_pipeline.metrics import make_loss
from a2b_pipeline.models import build_model, model_io
from a2b_pipeline.state import CheckpointError, TrainState, load_tensors
from a2b_pipeline.train import _checked_weights, autocast_context, evaluate_loader


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory as given; for a run directory its `best`, else its newest valid checkpoint."""
    path = Path(path)
    if (path / "train_state.json").exists():
        return path
    if (path / "best" / "train_state.json").exists():
        return (path / "best").resolve()
    state = TrainState.from_checkpoint(path)
    return Path(state.checkpoint.last_path or path)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[TrainState, nn.Module]:
    """The checkpoint's model (its EMA weights when it has them), in eval mode."""
    ckpt = resolve_checkpoint(path)
    state = TrainState.from_checkpoint(ckpt)
    if state.model is None:
        raise CheckpointError(f"{ckpt}: holds no model weights")
    model = build_model(state.config.model, model_io(state.config))
    name = state.model.ema_file or state.model.file
    model.load_state_dict(_checked_weights(load_tensors(ckpt, name, state), model, ckpt, name))
    return state, model.to(device).eval()


def evaluate_checkpoint(
    path: str | Path, split: str = "test", data: PreparedData | None = None, device: str = "cpu"
) -> dict[str, float]:
    """Loss, MAE, MSE, Pearson r and CCC (per channel and mean) of a checkpoint on a split."""
    state, model = load_model(path, device)
    cfg = state.config
    data = data or prepare_data(cfg)
    if not any(len(ds) for ds in data.splits.get(split, {}).values()):
        raise ValueError(f"split {split!r} has no windows for config {cfg.name!r}")
    loader = make_loader(data, cfg, split)
    loss_fn = make_loss(cfg.train.loss, len(cfg.data.channels))
    dev = torch.device(device)
    return evaluate_loader(model, loader, loss_fn, autocast_context(cfg, dev), dev, cfg.data.channels, split)


@torch.no_grad()
def predict_windows(
    path: str | Path, split: str = "test", n: int = 4, data: PreparedData | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(true, predicted) targets [T_target, C] of the first `n` windows of a split, normalised units."""
    state, model = load_model(path)
    data = data or prepare_data(state.config)
    out: list[tuple[np.ndarray, np.ndarray]] = []
    for ds in data.splits.get(split, {}).values():
        for i in range(min(len(ds), n - len(out))):
            x, y = ds[i]
            out.append((y.numpy(), model(x[None])[0].float().numpy()))
    return out


def export_encoder(path: str | Path, out: str | Path) -> Path:
    """Write a trained conv_gru front-end as the weights of a `pretrained_encoder` model.

    The encoder then needs `encoder_channels` = the run's `conv_channels` and `encoder_layers: 2`.
    """
    from safetensors.torch import save_file

    state, model = load_model(path)
    if state.config.model.name != "conv_gru":
        raise ValueError(
            f"{path}: export-encoder needs a conv_gru checkpoint, got {state.config.model.name!r}"
        )
    weights = {
        f"net.{k.removeprefix('frontend.')}": v.contiguous()
        for k, v in model.state_dict().items()
        if k.startswith("frontend.")
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(out))
    return out
