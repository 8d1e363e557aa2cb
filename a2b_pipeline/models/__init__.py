"""Models: `model.name` -> its config class (configs.ModelConfig, in plugins.MODELS) -> its architecture, one
module each. Every model maps [B, T_audio, n_mels] -> [B, T_target, C]."""

from __future__ import annotations

import importlib

from torch import nn

from a2b_pipeline.configs import ModelConfig, RunConfig
from a2b_pipeline.models.layers import ModelIO
from a2b_pipeline.models.pretrained_encoder import AudioEncoder

__all__ = ["AudioEncoder", "ModelIO", "build_model", "model_io"]


def build_model(cfg: ModelConfig, io: ModelIO) -> nn.Module:
    """The architecture `cfg.architecture` names, built from `cfg` (its module imported now: transformers,
    an optional extra, only when an hf_encoder is built)."""
    architecture = type(cfg).architecture
    if isinstance(architecture, str):
        module, _, name = architecture.partition(":")
        architecture = getattr(importlib.import_module(module), name)
    return architecture(cfg, io)


def model_io(cfg: RunConfig) -> ModelIO:
    d = cfg.data
    return ModelIO(
        n_mels=d.n_mels,
        channels=len(d.channels),
        in_frames=round(d.window_seconds * d.frame_rate),
        out_steps=round(d.window_seconds * d.target_rate),
    )
