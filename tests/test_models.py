"""models/__init__.py: the registry builds the architecture each `model.name` names, and model_io derives
a window's frame and target counts from the data config."""

from __future__ import annotations

import pytest
import torch
from _tiny import config

from a2b_pipeline.configs import ConvGRUConfig, TCNConfig, TransformerConfig
from a2b_pipeline.models import ModelIO, build_model, model_io
from a2b_pipeline.models.conv_gru import ConvGRU
from a2b_pipeline.models.tcn import TCN
from a2b_pipeline.models.transformer import Transformer
from a2b_pipeline.plugins import MODELS


@pytest.mark.parametrize(
    ("cfg", "cls"),
    [
        (ConvGRUConfig(hidden=4, conv_channels=4), ConvGRU),
        (TCNConfig(channels=4), TCN),
        (TransformerConfig(d_model=8, heads=2), Transformer),
    ],
)
def test_build_model_builds_the_named_architecture(cfg, cls) -> None:
    io = ModelIO(n_mels=3, channels=2, in_frames=16, out_steps=4)
    model = build_model(cfg, io)
    assert type(model) is cls
    assert model(torch.randn(1, 16, 3)).shape == (1, 4, 2)
    assert set(MODELS.names()) == {"conv_gru", "tcn", "transformer", "pretrained_encoder", "hf_encoder"}


def test_model_io_from_the_data_config(tmp_path) -> None:
    cfg = config(tmp_path)
    d = cfg.data
    io = model_io(cfg)
    assert io == ModelIO(
        n_mels=d.n_mels,
        channels=len(d.channels),
        in_frames=round(d.window_seconds * d.frame_rate),
        out_steps=round(d.window_seconds * d.target_rate),
    )
    # by hand: a 2.5 s window at 50.2 fps and 3 Hz (7.5 steps rounds to 8), 3 channels
    data = {
        "window_seconds": 2.5,
        "frame_rate": 50.2,
        "target_rate": 3.0,
        "n_mels": 7,
        "channels": ["a", "b", "c"],
    }
    cfg = cfg.model_copy(update={"data": d.model_copy(update=data)})
    assert model_io(cfg) == ModelIO(n_mels=7, channels=3, in_frames=126, out_steps=8)
