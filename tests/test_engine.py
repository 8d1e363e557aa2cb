"""engine.py: EMA against a hand computation, a validation pass in eval mode without gradients whose numbers
are the pooled metrics computed by hand, the weight check, autocast and device choice."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from a2b_pipeline.checkpoint.directory import CheckpointError
from a2b_pipeline.configs import config_from_dict
from a2b_pipeline.data.meta_dataloader import MetaDataLoader, ShardedEpochSampler
from a2b_pipeline.training.engine import EMA, autocast_context, checked_weights, evaluate_loader, pick_device


class WithBuffer(nn.Module):
    """A linear layer with dropout and an integer buffer (EMA copies buffers that are not floats)."""

    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.drop = nn.Dropout(dropout)
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, T, 3] -> [B, T, 2]
        return self.drop(self.lin(x))


def test_ema_one_update_is_the_hand_formula_and_integer_buffers_are_copied() -> None:
    torch.manual_seed(0)
    model = WithBuffer()
    ema = EMA(model, decay=0.9)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert all(torch.equal(ema.shadow[k], before[k]) for k in before)  # starts at the weights
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
        model.count += 7
    now = {k: v.clone() for k, v in model.state_dict().items()}
    ema.update(model)
    for k in ("lin.weight", "lin.bias"):
        torch.testing.assert_close(ema.shadow[k], 0.9 * before[k] + 0.1 * now[k], rtol=0, atol=1e-7)
    assert int(ema.shadow["count"]) == 7
    # a second update moves from the shadow, not from the first weights
    shadow1 = {k: v.clone() for k, v in ema.shadow.items()}
    with torch.no_grad():
        model.lin.weight.mul_(2)
    ema.update(model)
    want = 0.9 * shadow1["lin.weight"] + 0.1 * model.lin.weight
    torch.testing.assert_close(ema.shadow["lin.weight"], want, rtol=0, atol=1e-7)
    # the shadow is a copy: training the model further does not move it
    with torch.no_grad():
        model.lin.bias.add_(5)
    torch.testing.assert_close(ema.shadow["lin.bias"], 0.9 * shadow1["lin.bias"] + 0.1 * now["lin.bias"])


def test_ema_swapped_in_uses_the_shadow_and_restores_the_weights_even_on_error() -> None:
    torch.manual_seed(0)
    model = WithBuffer()
    ema = EMA(model, decay=0.5)
    with torch.no_grad():
        model.lin.weight.add_(1.0)
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    with ema.swapped_in(model):
        assert torch.equal(model.lin.weight, ema.shadow["lin.weight"])
    assert all(torch.equal(model.state_dict()[k], trained[k]) for k in trained)
    with pytest.raises(RuntimeError), ema.swapped_in(model):
        raise RuntimeError("validation failed")
    assert all(torch.equal(model.state_dict()[k], trained[k]) for k in trained)


def _loader(x: torch.Tensor, y: torch.Tensor, batch_size: int) -> MetaDataLoader:
    ds = TensorDataset(x, y)
    dl = DataLoader(ds, batch_size=batch_size, sampler=ShardedEpochSampler(len(ds), shuffle=False, seed=0))
    return MetaDataLoader([dl], "val", [1.0])


def test_validation_pass_runs_in_eval_mode_without_gradients_and_pools_every_window() -> None:
    """Dropout 0.5: a pass in train mode would give other numbers. Every metric is computed here by hand from
    the model's eval-mode output over all windows (pooled, not averaged per batch), the loss is the mean of
    the batch losses, and the model is left in train mode with no gradient anywhere."""
    torch.manual_seed(0)
    model = WithBuffer(dropout=0.5)
    x, y = torch.randn(7, 5, 3), torch.randn(7, 5, 2)
    seen: list[tuple[bool, bool, bool]] = []

    def spy(module: nn.Module, args: object, out: torch.Tensor) -> None:
        seen.append((module.training, torch.is_grad_enabled(), out.requires_grad))

    model.register_forward_hook(spy)
    model.train()

    def loss_fn(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
        return ((pred - true) ** 2).mean()

    got = evaluate_loader(
        model, _loader(x, y, 3), loss_fn, contextlib.nullcontext(), torch.device("cpu"), ["a", "b"], "val"
    )
    assert seen == [(False, False, False)] * 3  # 3 batches: eval mode, no autograd, predictions detached
    assert model.training and all(p.grad is None for p in model.parameters())
    model.eval()
    with torch.no_grad():
        pred = model(x).double().numpy()
    t = y.double().numpy()
    batch_losses = [((pred[i : i + 3] - t[i : i + 3]) ** 2).mean() for i in (0, 3, 6)]
    assert got["val/loss"] == pytest.approx(np.mean(batch_losses), rel=1e-6)
    p2, t2 = pred.reshape(-1, 2), t.reshape(-1, 2)
    for c, ch in enumerate(["a", "b"]):
        assert got[f"val/mae_{ch}"] == pytest.approx(np.abs(p2[:, c] - t2[:, c]).mean(), rel=1e-6)
        assert got[f"val/mse_{ch}"] == pytest.approx(((p2[:, c] - t2[:, c]) ** 2).mean(), rel=1e-6)
        r = np.corrcoef(p2[:, c], t2[:, c])[0, 1]
        assert got[f"val/pearson_{ch}"] == pytest.approx(r, rel=1e-5)
        pm, tm, pv, tv = p2[:, c].mean(), t2[:, c].mean(), p2[:, c].var(), t2[:, c].var()
        ccc = 2 * ((p2[:, c] - pm) * (t2[:, c] - tm)).mean() / (pv + tv + (pm - tm) ** 2)
        assert got[f"val/ccc_{ch}"] == pytest.approx(ccc, rel=1e-5)
    for m in ("pearson", "ccc", "mae", "mse"):
        assert got[f"val/{m}"] == pytest.approx((got[f"val/{m}_a"] + got[f"val/{m}_b"]) / 2, rel=1e-9)


def test_checked_weights_refuses_missing_extra_and_misshapen_keys(tmp_path: Path) -> None:
    model = WithBuffer()
    good = {k: v.clone() for k, v in model.state_dict().items()}
    assert checked_weights(good, model, tmp_path) is good
    for bad, what in (
        ({k: v for k, v in good.items() if k != "lin.bias"}, "missing keys \\['lin.bias'\\]"),
        ({**good, "extra": torch.zeros(1)}, "unexpected keys \\['extra'\\]"),
        ({**good, "lin.weight": torch.zeros(3, 3)}, "lin.weight: \\(3, 3\\) vs \\(2, 3\\)"),
    ):
        with pytest.raises(CheckpointError, match=what):
            checked_weights(bad, model, tmp_path, "ema.safetensors")


def test_autocast_and_device_follow_the_config(tmp_path: Path) -> None:
    def cfg(**train: object):
        ds = {"name": "a", "type": "synthetic", "root": str(tmp_path)}
        return config_from_dict({"data": {"datasets": [ds]}, "train": train})

    assert isinstance(autocast_context(cfg(precision="fp32"), torch.device("cpu")), contextlib.nullcontext)
    for precision, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        ctx = autocast_context(cfg(precision=precision), torch.device("cpu"))
        assert isinstance(ctx, torch.autocast) and ctx.fast_dtype == dtype and ctx.device == "cpu"
    assert pick_device(cfg(device="cpu")) == torch.device("cpu")
    if not torch.cuda.is_available():
        assert pick_device(cfg(device="auto")) == torch.device("cpu")
        with pytest.raises(RuntimeError, match="no CUDA device"):
            pick_device(cfg(device="cuda"))
