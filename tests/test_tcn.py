"""models/tcn.py: dilated causal blocks (dilation 2**level), the exact receptive field, the residual, and
the output shape at the target rate."""

from __future__ import annotations

import torch
from torch import nn

from a2b_pipeline.configs import TCNConfig
from a2b_pipeline.models.layers import ModelIO, to_target_rate
from a2b_pipeline.models.tcn import TCN, TemporalBlock

IO = ModelIO(n_mels=3, channels=2, in_frames=64, out_steps=8)


def _tcn(**kw) -> TCN:
    torch.manual_seed(0)
    return TCN(TCNConfig(channels=4, **kw), IO).eval()


def _frames_changed(model: TCN, t0: int, n: int = 64) -> list[int]:
    x = torch.randn(1, n, 3)
    y = x.clone()
    y[0, t0] += 1.0
    frames = lambda v: model.blocks(model.inp(v.transpose(1, 2))).transpose(1, 2)  # noqa: E731
    return ((frames(y) - frames(x)).abs().amax(-1)[0] > 0).nonzero().flatten().tolist()


def test_receptive_field_is_causal_and_exact() -> None:
    # levels L, kernel k: two convs per block, dilations 1, 2, ..., 2**(L-1): 1 + 2 (k - 1) (2**L - 1) frames
    assert _frames_changed(_tcn(levels=2, kernel_size=3), 20) == list(range(20, 20 + 13))
    assert _frames_changed(_tcn(levels=3, kernel_size=2), 10) == list(range(10, 10 + 15))
    tcn = _tcn(levels=3, kernel_size=3)
    assert [b.conv1.dilation[0] for b in tcn.blocks] == [1, 2, 4]
    assert [b.pad for b in tcn.blocks] == [2, 4, 8]


def test_block_is_residual() -> None:
    block = TemporalBlock(channels=3, kernel=3, dilation=2, dropout=0.0)
    for p in block.parameters():
        nn.init.zeros_(p)
    x = torch.randn(2, 3, 10)
    torch.testing.assert_close(block(x), x)  # zero convolutions: the input passes through


def test_output_at_the_target_rate() -> None:
    tcn = _tcn(levels=2, kernel_size=3, dropout=0.25)
    x = torch.randn(2, 64, 3)
    out = tcn(x)
    assert out.shape == (2, 8, 2)
    h = tcn.blocks(tcn.inp(x.transpose(1, 2))).transpose(1, 2)
    torch.testing.assert_close(out, tcn.head(to_target_rate(h, 8)))
    assert all(b.drop.p == 0.25 for b in tcn.blocks)
    assert not torch.equal(tcn.train()(x), tcn.train()(x))  # dropout is live in training
