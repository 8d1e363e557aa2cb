"""models/pretrained_encoder.py: the encoder's weights come from the file, a frozen encoder has no trainable
weights (the head does), and a missing file or foreign keys are refused naming `model.weights`."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from a2b_pipeline.configs import PretrainedEncoderConfig
from a2b_pipeline.models.layers import ModelIO, to_target_rate
from a2b_pipeline.models.pretrained_encoder import AudioEncoder, PretrainedEncoderModel

IO = ModelIO(n_mels=3, channels=2, in_frames=40, out_steps=4)


def _weights(path: Path, layers: int = 2) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    sd = {k: v.contiguous() for k, v in AudioEncoder(3, 4, layers).state_dict().items()}
    save_file(sd, str(path))
    return sd


def _cfg(path: Path, **kw) -> PretrainedEncoderConfig:
    return PretrainedEncoderConfig(weights=str(path), encoder_channels=4, encoder_layers=2, hidden=5, **kw)


def test_loads_the_file_and_freezes_only_the_encoder(tmp_path: Path) -> None:
    sd = _weights(tmp_path / "enc.safetensors")
    m = PretrainedEncoderModel(_cfg(tmp_path / "enc.safetensors"), IO).eval()
    for k, v in m.encoder.state_dict().items():
        torch.testing.assert_close(v, sd[k])
    assert not any(p.requires_grad for p in m.encoder.parameters())
    assert all(p.requires_grad for p in [*m.gru.parameters(), *m.head.parameters()])
    x = torch.randn(2, 40, 3)
    h, _ = m.gru(to_target_rate(m.encoder(x), 4))
    torch.testing.assert_close(m(x), m.head(h))
    assert m(x).shape == (2, 4, 2) and m.gru.hidden_size == 5
    loose = PretrainedEncoderModel(_cfg(tmp_path / "enc.safetensors", freeze_encoder=False), IO)
    assert all(p.requires_grad for p in loose.encoder.parameters())


def test_missing_file_and_foreign_keys_are_refused(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"model\.weights: .*not found: .*nope\.safetensors"):
        PretrainedEncoderModel(_cfg(tmp_path / "nope.safetensors"), IO)
    _weights(tmp_path / "three.safetensors", layers=3)  # a third conv the model doesn't have
    with pytest.raises(
        ValueError, match=r"model\.weights .*three\.safetensors.*unexpected keys \['net\.net\.4"
    ):
        PretrainedEncoderModel(_cfg(tmp_path / "three.safetensors"), IO)
    sd = _weights(tmp_path / "part.safetensors")
    save_file({k: v for k, v in sd.items() if not k.endswith("bias")}, str(tmp_path / "part.safetensors"))
    with pytest.raises(ValueError, match=r"missing keys \['net\.net\.0\.bias"):
        PretrainedEncoderModel(_cfg(tmp_path / "part.safetensors"), IO)
