"""Model registry: `model.name` -> architecture, one module each. Every model maps [B, T_audio, n_mels] ->
[B, T_target, C]."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from a2b_pipeline.configs import (
    ConvGRUConfig,
    HFEncoderConfig,
    PretrainedEncoderConfig,
    RunConfig,
    TCNConfig,
    TransformerConfig,
)
from a2b_pipeline.models.conv_gru import ConvGRU
from a2b_pipeline.models.layers import ModelIO
from a2b_pipeline.models.pretrained_encoder import AudioEncoder, PretrainedEncoderModel
from a2b_pipeline.models.tcn import TCN
from a2b_pipeline.models.transformer import Transformer

__all__ = ["MODELS", "AudioEncoder", "ModelIO", "build_model", "model_io"]


def _hf_encoder(cfg: HFEncoderConfig, io: ModelIO) -> nn.Module:
    # transformers (an optional extra) is imported only when such a model is built
    from a2b_pipeline.models.hf_encoder import HFEncoderModel

    return HFEncoderModel(cfg, io)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "conv_gru": ConvGRU,
    "tcn": TCN,
    "transformer": Transformer,
    "pretrained_encoder": PretrainedEncoderModel,
    "hf_encoder": _hf_encoder,
}


def build_model(
    cfg: ConvGRUConfig | TCNConfig | TransformerConfig | PretrainedEncoderConfig | HFEncoderConfig,
    io: ModelIO,
) -> nn.Module:
    return MODELS[cfg.name](cfg, io)


def model_io(cfg: RunConfig) -> ModelIO:
    d = cfg.data
    return ModelIO(
        n_mels=d.n_mels,
        channels=len(d.channels),
        in_frames=round(d.window_seconds * d.frame_rate),
        out_steps=round(d.window_seconds * d.target_rate),
    )
