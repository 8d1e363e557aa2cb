"""`transformer`: strided conv patches, a transformer encoder, a head resampled to the target rate."""

from __future__ import annotations

import math

import torch
from torch import nn

from a2b_pipeline.configs import TransformerConfig
from a2b_pipeline.models.layers import ModelIO, to_target_rate


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
