"""`pretrained_encoder`: a frozen audio encoder loaded from a local safetensors file, a trained GRU head."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from a2b_pipeline.configs import PretrainedEncoderConfig
from a2b_pipeline.models.layers import ConvFrontEnd, ModelIO, to_target_rate


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
