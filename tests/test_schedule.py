"""schedule.py: the planned length of a run, when it validates, what is frozen and the learning rate of every
step, each against numbers worked out by hand."""

from __future__ import annotations

import math
from pathlib import Path

import _tiny
import pytest
import torch

from a2b_pipeline.models import build_model, model_io
from a2b_pipeline.training.schedule import apply_freeze, lr_at, planned_steps, set_lr, val_interval


def _cfg(tmp_path: Path, *overrides: str):
    return _tiny.config(tmp_path, overrides, manifest=tmp_path / "unused.csv")


def test_planned_steps_count_a_short_last_group_and_take_the_sooner_end(tmp_path: Path) -> None:
    epochs = _cfg(tmp_path, "train.max_steps=null", "train.num_epochs=2", "train.grad_accum_steps=3")
    assert planned_steps(epochs, 8) == 6  # 16 batches in groups of 3: 5 full, one short
    assert planned_steps(epochs, 9) == 6
    both = _cfg(tmp_path, "train.max_steps=4", "train.num_epochs=2", "train.grad_accum_steps=1")
    assert planned_steps(both, 8) == 4
    assert planned_steps(_cfg(tmp_path, "train.max_steps=40", "train.num_epochs=1"), 8) == 8
    assert planned_steps(_cfg(tmp_path, "train.max_steps=7", "train.num_epochs=null"), 8) == 7


def test_validation_interval_is_the_setting_or_once_per_epoch_of_steps(tmp_path: Path) -> None:
    assert val_interval(_cfg(tmp_path, "train.val_every_n_steps=5"), 100) == 5
    per_epoch = _cfg(tmp_path, "train.val_every_n_steps=null", "train.grad_accum_steps=3")
    assert val_interval(per_epoch, 8) == 3  # the epoch's 8 batches take ceil(8 / 3) steps
    assert val_interval(per_epoch, 1) == 1
    assert val_interval(_cfg(tmp_path, "train.val_every_n_steps=null"), 8) == 8


def test_freeze_until_step_frees_the_prefix_at_that_step(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, 'model.freeze=[{"prefix": "frontend.", "until_step": 3}, {"prefix": "head."}]')
    model = build_model(cfg.model, model_io(cfg))

    def trainable(prefix: str) -> set[bool]:
        return {p.requires_grad for n, p in model.named_parameters() if n.startswith(prefix)}

    for step, front in ((0, False), (2, False), (3, True), (10, True)):
        apply_freeze(model, cfg, step)
        assert trainable("frontend.") == {front}, step
        assert trainable("head.") == {False} and trainable("gru.") == {True}


def test_learning_rate_of_every_schedule_by_hand(tmp_path: Path) -> None:
    def lr(name: str, step: int, total: int = 100, warmup: int = 10, floor: float = 0.1, scale: float = 1.0):
        cfg = _cfg(
            tmp_path,
            "optimizer.lr=2.0",
            f"scheduler.name={name}",
            f"scheduler.warmup_steps={warmup}",
            f"scheduler.min_lr_ratio={floor}",
        )
        return lr_at(cfg, step, total, scale)

    # warm-up: linear from 0 (onecycle: from lr / 25), reaching lr at the last warm-up step
    assert lr("cosine", 0) == pytest.approx(0.2) and lr("cosine", 9) == pytest.approx(2.0)
    assert lr("onecycle", 0) == pytest.approx(0.08 + (2.0 - 0.08) * 1 / 10)
    # cosine from lr to lr * min_lr_ratio over the steps after warm-up
    for step in (10, 32, 55, 77, 100, 150):
        progress = min(1.0, (step - 10) / 90)
        want = 2.0 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
        assert lr("cosine", step) == pytest.approx(want), step
    for step in (0, 25, 50, 100):
        assert lr("linear", step, warmup=0, floor=0.2) == pytest.approx(2.0 * (1 - 0.8 * step / 100))
    # onecycle without warm-up: 30% of the run warms up
    assert lr("onecycle", 29, warmup=0) == pytest.approx(2.0)
    assert lr("onecycle", 30, warmup=0) == pytest.approx(2.0)
    assert lr("onecycle", 0, warmup=0) == pytest.approx(0.08 + 1.92 / 30)
    # constant and plateau: lr times the plateau scale, after warm-up
    assert lr("constant", 50) == pytest.approx(2.0)
    assert lr("plateau", 50, scale=0.25) == pytest.approx(0.5)
    assert lr("plateau", 50, warmup=0, scale=0.125) == pytest.approx(0.25)


def test_set_lr_sets_every_group() -> None:
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [a]}, {"params": [b], "lr": 5.0}], lr=1.0)
    set_lr(opt, 0.3)
    assert [g["lr"] for g in opt.param_groups] == [0.3, 0.3]
