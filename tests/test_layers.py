"""models/layers.py: pooling to the target rate averages each target sample's span (by hand, also when the
spans don't divide), and the conv front-end's shape, reach (two kernels of 5), activation and dropout."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from a2b_pipeline.models.layers import ConvFrontEnd, ModelIO, to_target_rate


def test_to_target_rate_averages_each_span() -> None:
    h = torch.arange(24, dtype=torch.float32).reshape(1, 12, 2)  # [B, T, H]
    out = to_target_rate(h, 3)
    assert out.shape == (1, 3, 2)
    want = torch.stack([h[0, 4 * i : 4 * i + 4].mean(0) for i in range(3)])
    torch.testing.assert_close(out[0], want)
    # 5 frames to 2 steps: spans [0, 3) and [2, 5) (floor/ceil of i*T/n), the middle frame in both
    h = torch.tensor([[[1.0], [2.0], [4.0], [8.0], [16.0]]])
    torch.testing.assert_close(to_target_rate(h, 2), torch.tensor([[[7 / 3], [28 / 3]]]))


def test_model_io_is_plain_data() -> None:
    io = ModelIO(n_mels=8, channels=2, in_frames=100, out_steps=8)
    assert (io.n_mels, io.channels, io.in_frames, io.out_steps) == (8, 2, 100, 8)


def test_front_end_is_convs_of_five_with_gelu() -> None:
    torch.manual_seed(0)
    fe = ConvFrontEnd(n_mels=3, channels=4, layers=2).eval()
    convs = [m for m in fe.net if isinstance(m, torch.nn.Conv1d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (3, 4, (5,), (2,)),
        (4, 4, (5,), (2,)),
    ]
    x = torch.randn(2, 11, 3)
    h = x.transpose(1, 2)
    for c in convs:
        h = F.gelu(F.conv1d(h, c.weight, c.bias, padding=2))
    torch.testing.assert_close(fe(x), h.transpose(1, 2))
    assert len([m for m in ConvFrontEnd(3, 4, layers=3).net if isinstance(m, torch.nn.Conv1d)]) == 3


def test_front_end_reaches_four_frames_each_way() -> None:
    torch.manual_seed(0)
    fe = ConvFrontEnd(n_mels=2, channels=3).eval()
    x = torch.randn(1, 21, 2)
    y = x.clone()
    y[0, 10] += 1.0
    changed = (fe(y) - fe(x)).abs().amax(-1)[0] > 0
    assert changed.nonzero().flatten().tolist() == list(range(6, 15))


def test_front_end_dropout_is_the_configured_rate() -> None:
    fe = ConvFrontEnd(n_mels=2, channels=3, dropout=0.3)
    [drop] = [m for m in fe.net if isinstance(m, torch.nn.Dropout)]
    assert drop.p == 0.3 and fe.net[-1] is drop  # after the last activation
