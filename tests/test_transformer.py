"""models/transformer.py: the sinusoidal positions by hand, patches of 4 frames, pre-norm layers of the
configured sizes, positions that matter, and inputs longer than the position table."""

from __future__ import annotations

import math

import torch

from a2b_pipeline.configs import TransformerConfig
from a2b_pipeline.models.layers import ModelIO, to_target_rate
from a2b_pipeline.models.transformer import Transformer, _sinusoid

IO = ModelIO(n_mels=3, channels=2, in_frames=32, out_steps=4)


def _model(**kw) -> Transformer:
    torch.manual_seed(0)
    return Transformer(TransformerConfig(d_model=8, heads=2, layers=2, ff_mult=3, **kw), IO).eval()


def test_sinusoid_by_hand() -> None:
    for d in (6, 5):
        pe = _sinusoid(7, d)
        assert pe.shape == (7, d)
        for p in range(7):
            for i in range(d):
                angle = p / 10000 ** ((i - i % 2) / d)
                want = math.sin(angle) if i % 2 == 0 else math.cos(angle)
                assert abs(float(pe[p, i]) - want) < 1e-5, (d, p, i)


def test_layout_follows_the_config() -> None:
    m = _model(dropout=0.1)
    assert (m.patch.kernel_size, m.patch.stride, m.patch.out_channels) == ((4,), (4,), 8)
    assert len(m.encoder.layers) == 2
    layer = m.encoder.layers[0]
    assert layer.norm_first and layer.linear1.out_features == 24 and layer.self_attn.num_heads == 2
    assert layer.dropout.p == 0.1
    assert m.pos.shape == (32 // 4 + 1, 8)


def test_forward_adds_positions_to_the_patches() -> None:
    m = _model()
    for frames in (32, 64):  # 64 frames: 16 tokens, more than the table's 9
        x = torch.randn(2, frames, 3)
        h = m.patch(x.transpose(1, 2)).transpose(1, 2)
        want = m.head(to_target_rate(m.encoder(h + _sinusoid(h.shape[1], 8)), 4))
        out = m(x)
        assert out.shape == (2, 4, 2)
        torch.testing.assert_close(out, want)
    # without positions the encoder is blind to order: swapping two patches would not change their tokens
    x = torch.randn(1, 32, 3)
    swapped = torch.cat([x[:, 4:8], x[:, :4], x[:, 8:]], 1)
    assert not torch.allclose(m(x)[:, 0], m(swapped)[:, 0])
