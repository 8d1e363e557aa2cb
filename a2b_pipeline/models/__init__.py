"""Model registry: `model.name` -> builder. Every model maps [B, T_audio, n_mels] -> [B, T_target, C]."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from a2b_pipeline.configs import (
    ConvGRUConfig,
    PretrainedEncoderConfig,
    TCNConfig,
    TransformerConfig,
)


@dataclass(frozen=True)
class ModelIO:
    n_mels: int
    channels: int
    in_frames: int  # audio frames per window
    out_steps: int  # target samples per window


def to_target_rate(h: torch.Tensor, out_steps: int) -> torch.Tensor:
    """[B, T, H] at the audio frame rate -> [B, out_steps, H] by averaging each target sample's span."""
    return F.adaptive_avg_pool1d(h.transpose(1, 2), out_steps).transpose(1, 2)


class ConvFrontEnd(nn.Module):
    """Two 1-D convolutions over time: local spectral patterns -> features per frame."""

    def __init__(self, n_mels: int, channels: int, layers: int = 2, dropout: float = 0.0):
        super().__init__()
        blocks: list[nn.Module] = []
        for i in range(layers):
            blocks += [nn.Conv1d(n_mels if i == 0 else channels, channels, 5, padding=2), nn.GELU()]
        self.net = nn.Sequential(*blocks, nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, T, M] -> [B, T, C]
        return self.net(x.transpose(1, 2)).transpose(1, 2)


class ConvGRU(nn.Module):
    """Conv front-end at the frame rate, pooled to the target rate, then a GRU decoder."""

    def __init__(self, cfg: ConvGRUConfig, io: ModelIO):
        super().__init__()
        self.out_steps = io.out_steps
        self.frontend = ConvFrontEnd(io.n_mels, cfg.conv_channels, 2, cfg.dropout)
        self.gru = nn.GRU(
            cfg.conv_channels, cfg.hidden, cfg.layers, batch_first=True, bidirectional=cfg.bidirectional
        )
        self.head = nn.Linear(cfg.hidden * (2 if cfg.bidirectional else 1), io.channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = to_target_rate(self.frontend(x), self.out_steps)
        h, _ = self.gru(h)
        return self.head(h)


class TemporalBlock(nn.Module):
    """A residual block of two dilated causal convolutions (the TCN of Bai et al., 2018)."""

    def __init__(self, channels: int, kernel: int, dilation: int, dropout: float):
        super().__init__()
        self.pad = (kernel - 1) * dilation
        self.conv1 = nn.Conv1d(channels, channels, kernel, dilation=dilation)
        self.conv2 = nn.Conv1d(channels, channels, kernel, dilation=dilation)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, T]
        h = self.drop(F.gelu(self.conv1(F.pad(x, (self.pad, 0)))))
        h = self.drop(F.gelu(self.conv2(F.pad(h, (self.pad, 0)))))
        return x + h


class TCN(nn.Module):
    """Dilated causal convolutions over frames; receptive field grows as kernel * 2^levels."""

    def __init__(self, cfg: TCNConfig, io: ModelIO):
        super().__init__()
        self.out_steps = io.out_steps
        self.inp = nn.Conv1d(io.n_mels, cfg.channels, 1)
        self.blocks = nn.Sequential(
            *[TemporalBlock(cfg.channels, cfg.kernel_size, 2**i, cfg.dropout) for i in range(cfg.levels)]
        )
        self.head = nn.Linear(cfg.channels, io.channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.inp(x.transpose(1, 2))).transpose(1, 2)
        return self.head(to_target_rate(h, self.out_steps))


class Transformer(nn.Module):
    """Strided conv patching, a transformer encoder, and a head resampled to the target rate."""

    def __init__(self, cfg: TransformerConfig, io: ModelIO):
        super().__init__()
        self.out_steps = io.out_steps
        self.patch = nn.Conv1d(io.n_mels, cfg.d_model, kernel_size=4, stride=4)  # 4x fewer tokens
        layer = nn.TransformerEncoderLayer(
            cfg.d_model,
            cfg.heads,
            cfg.d_model * cfg.ff_mult,
            cfg.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.register_buffer("pos", _sinusoid(max(io.in_frames // 4 + 1, 1), cfg.d_model), persistent=False)
        self.head = nn.Sequential(nn.LayerNorm(cfg.d_model), nn.Linear(cfg.d_model, io.channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.patch(x.transpose(1, 2)).transpose(1, 2)
        t = h.shape[1]
        pos = self.pos if t <= self.pos.shape[0] else _sinusoid(t, h.shape[2]).to(h)
        h = self.encoder(h + pos[:t])
        return self.head(to_target_rate(h, self.out_steps))


def _sinusoid(n: int, d: int) -> torch.Tensor:
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(10000.0) / d))
    pe = torch.zeros(n, d)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div)[:, : d // 2]
    return pe


class AudioEncoder(nn.Module):
    """The encoder a `pretrained_encoder` model loads: conv layers over log-mel frames."""

    def __init__(self, n_mels: int, channels: int, layers: int):
        super().__init__()
        self.net = ConvFrontEnd(n_mels, channels, layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class PretrainedEncoderModel(nn.Module):
    """A frozen audio encoder from a local safetensors file, with a trained GRU head."""

    def __init__(self, cfg: PretrainedEncoderConfig, io: ModelIO):
        super().__init__()
        from safetensors.torch import load_file

        self.out_steps = io.out_steps
        self.encoder = AudioEncoder(io.n_mels, cfg.encoder_channels, cfg.encoder_layers)
        path = Path(cfg.weights)
        if not path.is_file():
            raise FileNotFoundError(f"model.weights: pretrained encoder file not found: {path}")
        missing, unexpected = self.encoder.load_state_dict(load_file(str(path)), strict=False)
        if missing or unexpected:
            raise ValueError(f"model.weights {path}: missing keys {missing}, unexpected keys {unexpected}")
        if cfg.freeze_encoder:
            self.encoder.requires_grad_(False)
        self.gru = nn.GRU(cfg.encoder_channels, cfg.hidden, batch_first=True)
        self.head = nn.Linear(cfg.hidden, io.channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = to_target_rate(self.encoder(x), self.out_steps)
        h, _ = self.gru(h)
        return self.head(h)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "conv_gru": ConvGRU,
    "tcn": TCN,
    "transformer": Transformer,
    "pretrained_encoder": PretrainedEncoderModel,
}


def build_model(
    cfg: ConvGRUConfig | TCNConfig | TransformerConfig | PretrainedEncoderConfig, io: ModelIO
) -> nn.Module:
    return MODELS[cfg.name](cfg, io)


def model_io(cfg) -> ModelIO:  # cfg: RunConfig
    d = cfg.data
    return ModelIO(
        n_mels=d.n_mels,
        channels=len(d.channels),
        in_frames=round(d.window_seconds * d.frame_rate),
        out_steps=round(d.window_seconds * d.target_rate),
    )
