"""Training losses and biosignal metrics (MAE, Pearson r, concordance correlation CCC)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from a2b_pipeline.configs import LossConfig

EPS = 1e-8


def _pearson_per_window(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """Pearson r over time for each window and channel: [B, T, C] -> [B, C]."""
    p = pred - pred.mean(dim=1, keepdim=True)
    t = true - true.mean(dim=1, keepdim=True)
    return (p * t).sum(1) / (p.square().sum(1).sqrt() * t.square().sum(1).sqrt() + EPS)


def _ccc_per_window(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    pm, tm = pred.mean(1), true.mean(1)
    pv, tv = pred.var(1, unbiased=False), true.var(1, unbiased=False)
    cov = ((pred - pm[:, None]) * (true - tm[:, None])).mean(1)
    return 2 * cov / (pv + tv + (pm - tm).square() + EPS)


def make_loss(cfg: LossConfig, n_channels: int):
    """A weighted sum of loss terms, each averaged with per-channel weights."""
    cw = torch.tensor(cfg.channel_weights or [1.0] * n_channels, dtype=torch.float32)
    cw = cw / cw.sum() * n_channels

    def per_channel(name: str, pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:  # -> [C]
        if name == "mse":
            return F.mse_loss(pred, true, reduction="none").mean((0, 1))
        if name == "l1":
            return F.l1_loss(pred, true, reduction="none").mean((0, 1))
        if name == "huber":
            return F.huber_loss(pred, true, reduction="none", delta=cfg.huber_delta).mean((0, 1))
        if name == "ccc":
            return 1.0 - _ccc_per_window(pred, true).mean(0)
        if name == "pearson":
            return 1.0 - _pearson_per_window(pred, true).mean(0)
        raise ValueError(f"unknown loss term {name!r}")

    on_device: dict[torch.device, torch.Tensor] = {}
    uniform = bool((cw == 1.0).all())  # multiplying by 1.0 changes no bit: skip those ops and their backward

    def loss_fn(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
        pred = pred.float()
        # copied to the device once: a blocking host-to-device copy every step would sync the GPU every step
        w = on_device.get(pred.device)
        if w is None:
            w = on_device[pred.device] = cw.to(pred.device)
        total: torch.Tensor | None = None
        for term in cfg.terms:
            per = per_channel(term.name, pred, true)
            part = (per if uniform else per * w).mean()
            if term.weight != 1.0:
                part = term.weight * part
            total = part if total is None else total + part
        assert total is not None  # cfg.terms has at least one term
        return total

    return loss_fn


class MetricAccumulator:
    """Streams predictions and computes metrics over all samples of a split, per channel.

    Sums stay on the device, in float64, so validation does one sync at the end.
    """

    def __init__(self, channels: list[str]):
        self.channels = channels
        self.n = 0
        self.sums: torch.Tensor | None = None  # [7, C]: p, t, pp, tt, pt, |p-t|, (p-t)^2
        self.loss_sum = 0.0
        self.batches = 0
        self._loss_terms: list[torch.Tensor] = []

    def update(self, pred: torch.Tensor, true: torch.Tensor, loss: torch.Tensor | None = None) -> None:
        p = pred.detach().double().reshape(-1, pred.shape[-1])
        t = true.detach().double().reshape(-1, true.shape[-1])
        d = p - t
        s = torch.stack(
            [
                p.sum(0),
                t.sum(0),
                (p * p).sum(0),
                (t * t).sum(0),
                (p * t).sum(0),
                d.abs().sum(0),
                (d * d).sum(0),
            ]
        )
        self.sums = s if self.sums is None else self.sums + s
        self.n += p.shape[0]
        if loss is not None:
            self._loss_terms.append(loss.detach().float())

    def compute(self, prefix: str) -> dict[str, float]:
        if self.sums is None or self.n == 0:
            return {}
        s = self.sums.cpu()
        n = self.n
        mp, mt = s[0] / n, s[1] / n
        vp, vt = s[2] / n - mp**2, s[3] / n - mt**2
        cov = s[4] / n - mp * mt
        pearson = cov / (vp.clamp_min(0).sqrt() * vt.clamp_min(0).sqrt() + EPS)
        ccc = 2 * cov / (vp + vt + (mp - mt) ** 2 + EPS)
        mae, mse = s[5] / n, s[6] / n
        out: dict[str, float] = {}
        for name, per in (("pearson", pearson), ("ccc", ccc), ("mae", mae), ("mse", mse)):
            out[f"{prefix}/{name}"] = float(per.mean())
            for ch, v in zip(self.channels, per.tolist(), strict=True):
                out[f"{prefix}/{name}_{ch}"] = float(v)
        if self._loss_terms:
            out[f"{prefix}/loss"] = float(torch.stack(self._loss_terms).mean())
        return out
