"""`conv_gru`: a conv front-end at the frame rate, pooled to the target rate, then a GRU decoder."""

from __future__ import annotations

import torch
from torch import nn

from a2b_pipeline.configs import ConvGRUConfig
from a2b_pipeline.models.layers import ConvFrontEnd, ModelIO, to_target_rate


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
