"""What the architectures share: their input/output sizes, the front-end, and pooling to the target rate."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


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
