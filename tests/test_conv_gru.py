"""models/conv_gru.py: front-end at the frame rate, pooled to the target rate, then the GRU: a
unidirectional decoder is causal over target steps, a bidirectional one is not; sizes follow the config."""

from __future__ import annotations

import pytest
import torch

from a2b_pipeline.configs import ConvGRUConfig
from a2b_pipeline.models.conv_gru import ConvGRU
from a2b_pipeline.models.layers import ModelIO

IO = ModelIO(n_mels=3, channels=2, in_frames=80, out_steps=8)


def _model(**kw) -> ConvGRU:
    torch.manual_seed(0)
    return ConvGRU(ConvGRUConfig(conv_channels=4, hidden=5, **kw), IO).eval()


@pytest.mark.parametrize("bidirectional", [False, True])
def test_sizes_follow_the_config(bidirectional: bool) -> None:
    m = _model(layers=2, bidirectional=bidirectional, dropout=0.2)
    assert m(torch.randn(2, 80, 3)).shape == (2, 8, 2)
    assert (m.gru.input_size, m.gru.hidden_size, m.gru.num_layers, m.gru.bidirectional) == (
        4,
        5,
        2,
        bidirectional,
    )
    assert m.head.in_features == 5 * (2 if bidirectional else 1)
    assert m.frontend.net[-1].p == 0.2


def test_pooling_comes_before_the_decoder() -> None:
    """Frames 70..79 are the last target step's span (and the front-end reaches 4 frames back): a
    unidirectional GRU over pooled steps leaves steps 0..6 unchanged; bidirectional changes them all."""
    x = torch.randn(1, 80, 3)
    y = x.clone()
    y[0, 75:] += 1.0
    uni, bi = _model(), _model(bidirectional=True)
    d_uni = (uni(y) - uni(x)).abs().amax(-1)[0]
    d_bi = (bi(y) - bi(x)).abs().amax(-1)[0]
    assert (d_uni[:7] == 0).all() and d_uni[7] > 0
    assert (d_bi > 0).all()
