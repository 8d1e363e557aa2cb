"""`tcn`: a temporal convolutional network (dilated causal convolutions) over log-mel frames."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from a2b_pipeline.configs import TCNConfig
from a2b_pipeline.models.layers import ModelIO, to_target_rate


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
