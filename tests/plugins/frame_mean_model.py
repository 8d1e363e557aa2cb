"""A model added by this one module, its config class beside its architecture: each target step is a
linear read-out of the mean log-mel frame over its span. Defining the config class registers the model."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from a2b_pipeline.configs import ModelConfig
from a2b_pipeline.models.layers import ModelIO, to_target_rate


class FrameMean(nn.Module):
    def __init__(self, cfg: FrameMeanConfig, io: ModelIO):
        super().__init__()
        self.out_steps = io.out_steps
        self.net = nn.Sequential(
            nn.Linear(io.n_mels, cfg.hidden), nn.Tanh(), nn.Linear(cfg.hidden, io.channels)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, T, M] -> [B, out_steps, C]
        return self.net(to_target_rate(x, self.out_steps))


class FrameMeanConfig(ModelConfig):
    name: Literal["frame_mean"] = "frame_mean"
    hidden: int = Field(8, gt=0, le=256)
    architecture = FrameMean


MODEL = FrameMeanConfig
