"""metrics.py: every loss term, channel and term weights, and the streamed validation metrics, against
hand computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from a2b_pipeline.configs import LossConfig
from a2b_pipeline.training.metrics import MetricAccumulator, make_loss


def _data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(3, 20, 2, generator=g), torch.randn(3, 20, 2, generator=g)


def _hand_term(name: str, p: np.ndarray, t: np.ndarray, delta: float = 1.0) -> np.ndarray:
    """Per channel [C] over [B, T, C]."""
    d = p - t
    if name == "mse":
        return (d**2).mean((0, 1))
    if name == "l1":
        return np.abs(d).mean((0, 1))
    if name == "huber":
        a = np.abs(d)
        return np.where(a < delta, 0.5 * d**2, delta * (a - 0.5 * delta)).mean((0, 1))
    pc, tc = p - p.mean(1, keepdims=True), t - t.mean(1, keepdims=True)
    if name == "pearson":
        r = (pc * tc).sum(1) / np.sqrt((pc**2).sum(1) * (tc**2).sum(1))
        return 1 - r.mean(0)
    ccc = 2 * (pc * tc).mean(1) / (p.var(1) + t.var(1) + (p.mean(1) - t.mean(1)) ** 2)
    return 1 - ccc.mean(0)


@pytest.mark.parametrize("name", ["mse", "l1", "huber", "ccc", "pearson"])
def test_each_loss_term_by_hand(name: str) -> None:
    pred, true = _data()
    cfg = LossConfig(terms=[{"name": name}], huber_delta=0.7)
    got = float(make_loss(cfg, 2)(pred, true))
    want = _hand_term(name, pred.double().numpy(), true.double().numpy(), 0.7).mean()
    assert got == pytest.approx(want, rel=1e-5)


def test_term_and_channel_weights() -> None:
    pred, true = _data(1)
    p, t = pred.double().numpy(), true.double().numpy()
    cfg = LossConfig(
        terms=[{"name": "mse", "weight": 0.5}, {"name": "ccc", "weight": 2.0}], channel_weights=[3.0, 1.0]
    )
    w = np.array([3.0, 1.0]) / 4.0 * 2  # normalised to average 1 over the channels
    want = 0.5 * (_hand_term("mse", p, t) * w).mean() + 2.0 * (_hand_term("ccc", p, t) * w).mean()
    assert float(make_loss(cfg, 2)(pred, true)) == pytest.approx(want, rel=1e-5)


def test_accumulator_pools_every_sample_of_every_batch() -> None:
    pred, true = _data(2)
    acc = MetricAccumulator(["a", "b"])
    losses = []
    for i in range(3):  # batches of one window: pooled, not averaged per batch
        loss = torch.tensor(float(i))
        losses.append(float(loss))
        acc.update(pred[i : i + 1], true[i : i + 1], loss)
    out = acc.compute("val")
    p, t = pred.double().reshape(-1, 2).numpy(), true.double().reshape(-1, 2).numpy()
    for c, ch in enumerate(["a", "b"]):
        x, y = p[:, c], t[:, c]
        assert out[f"val/mae_{ch}"] == pytest.approx(np.abs(x - y).mean(), rel=1e-9)
        assert out[f"val/mse_{ch}"] == pytest.approx(((x - y) ** 2).mean(), rel=1e-9)
        assert out[f"val/pearson_{ch}"] == pytest.approx(np.corrcoef(x, y)[0, 1], rel=1e-6)
        ccc = 2 * np.cov(x, y, bias=True)[0, 1] / (x.var() + y.var() + (x.mean() - y.mean()) ** 2)
        assert out[f"val/ccc_{ch}"] == pytest.approx(ccc, rel=1e-6)
    for m in ("pearson", "ccc", "mae", "mse"):
        assert out[f"val/{m}"] == pytest.approx((out[f"val/{m}_a"] + out[f"val/{m}_b"]) / 2)
    assert out["val/loss"] == pytest.approx(np.mean(losses))
    assert MetricAccumulator(["a"]).compute("val") == {}
