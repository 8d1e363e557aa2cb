"""checkpoint/checkpointer.py: what a checkpoint saves of a run's live objects comes back into fresh ones
(weights, optimizer, EMA shadow, GradScaler, plateau state, loader position, and python/numpy/torch
generators, checked by drawing after the restore); `best` and `last` pointers and retention."""

from __future__ import annotations

import random
from pathlib import Path

import _tiny
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from a2b_pipeline.checkpoint.checkpointer import Checkpointer, CheckpointWriter
from a2b_pipeline.checkpoint.directory import checkpoint_name
from a2b_pipeline.data.meta_dataloader import MetaDataLoader, ShardedEpochSampler
from a2b_pipeline.models import build_model, model_io
from a2b_pipeline.state import TrainState
from a2b_pipeline.train import build_optimizer
from a2b_pipeline.training.engine import EMA


def _loader() -> MetaDataLoader:
    g = torch.Generator().manual_seed(0)
    loaders = [
        DataLoader(
            TensorDataset(torch.randn(n, 2, generator=g), torch.randn(n, 1, generator=g)),
            batch_size=2,
            sampler=ShardedEpochSampler(n, shuffle=True, seed=i),
        )
        for i, n in enumerate((10, 6))
    ]
    # both read the config's one dataset (the state records each loader's dataset type)
    return MetaDataLoader(loaders, "train", [2.0, 1.0], seed=3, dataset_indices=[0, 0])


def _live(cfg, seed: int) -> tuple:
    """model, optimizer, EMA, GradScaler, plateau dict, loader: what train() builds, built here."""
    torch.manual_seed(seed)
    model = build_model(cfg.model, model_io(cfg))
    scaler = torch.amp.GradScaler("cpu")
    return model, build_optimizer(cfg, model), EMA(model, 0.9), scaler, {"scale": 1.0, "best": None, "bad": 0}


def _draws() -> tuple[float, float, float]:
    return random.random(), float(np.random.rand()), float(torch.rand(()))


def _checkpointer(live: tuple, loader: MetaDataLoader) -> Checkpointer:
    model, opt, ema, scaler, plateau = live
    return Checkpointer(model, opt, ema, scaler, plateau, loader, 0, CheckpointWriter(background=False))


def test_save_then_restore_into_fresh_objects_gives_back_every_part(tmp_path: Path) -> None:
    cfg = _tiny.config(tmp_path, ["optimizer.name=adamw", "train.ema_decay=0.9", "checkpoint.keep_last=1"])
    state = TrainState.from_config(cfg, run_dir=tmp_path / "run")
    live = _live(cfg, seed=0)
    model, opt, ema, scaler, plateau = live
    io = model_io(cfg)
    for _ in range(3):  # moments, a step count, an EMA that is not the weights
        loss = model(torch.randn(2, io.in_frames, io.n_mels)).square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        ema.update(model)
    scaler.scale(torch.ones(()))
    scaler.update(128.0)
    plateau.update(scale=0.25, best=0.5, bad=1)
    loader = _loader()
    loader.set_epoch(1)
    it = iter(loader)
    for _ in range(3):
        next(it)
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    _draws()
    state.global_step, state.epoch = 7, 1
    state.checkpoint_state.best_step, state.checkpoint_state.best_value = 7, 0.5
    _checkpointer(live, loader).save(state, best=True)
    want_draws = [_draws() for _ in range(3)]
    position = loader.state_dict()
    want_batch = next(it)

    fresh = _live(cfg, seed=99)
    model2, opt2, ema2, scaler2, plateau2 = fresh
    loader2 = _loader()
    random.seed(0), np.random.seed(0), torch.manual_seed(0)  # elsewhere, as in a new process
    _checkpointer(fresh, loader2).restore(TrainState.from_checkpoint(tmp_path / "run"))

    assert [_draws() for _ in range(3)] == want_draws
    for k, v in model.state_dict().items():
        assert torch.equal(model2.state_dict()[k], v), k
    for k, v in ema.shadow.items():
        assert torch.equal(ema2.shadow[k], v), k
    assert any(not torch.equal(ema.shadow[k], v) for k, v in model.state_dict().items())
    sd, sd2 = opt.state_dict(), opt2.state_dict()
    assert sd["param_groups"] == sd2["param_groups"]
    for idx, st in sd["state"].items():
        for k, v in st.items():
            assert torch.equal(torch.as_tensor(sd2["state"][idx][k]), torch.as_tensor(v)), (idx, k)
    assert scaler2.state_dict() == scaler.state_dict() and scaler2.get_scale() == 128.0
    assert plateau2 == {"scale": 0.25, "best": 0.5, "bad": 1}
    assert loader2.state_dict() == position
    got_batch = next(iter(loader2))
    assert all(torch.equal(a, b) for a, b in zip(got_batch, want_batch, strict=True))


def test_best_pointer_moves_only_for_the_best_and_survives_retention(tmp_path: Path) -> None:
    cfg = _tiny.config(tmp_path, ["train.ema_decay=0.9", "checkpoint.keep_last=1"])
    state = TrainState.from_config(cfg, run_dir=tmp_path / "run")
    ck = _checkpointer(_live(cfg, seed=0), _loader())
    run = Path(state.run_dir)
    for step, best in ((1, False), (2, True), (3, False), (4, False)):
        state.global_step = step
        if best:
            state.checkpoint_state.best_step, state.checkpoint_state.best_value = step, 1.0
        ck.save(state, best=best)
        assert (run / "last").resolve().name == checkpoint_name(step)
        if step >= 2:
            assert (run / "best").resolve().name == checkpoint_name(2)
    # keep_last 1: the newest and the best are left
    assert sorted(p.name for p in run.glob("step_*")) == [checkpoint_name(2), checkpoint_name(4)]
    assert state.model_state.best_model_path == run / checkpoint_name(2) / "ema.safetensors"
    assert state.model_state.last_model_path == run / checkpoint_name(4) / "model.safetensors"
    assert state.optimizer_state.last_step == 4


@pytest.mark.parametrize("background", [False, True])
def test_the_checkpoint_holds_the_objects_as_they_were_at_save(tmp_path: Path, background: bool) -> None:
    """A background write must not see changes the loop makes after save() returned."""
    cfg = _tiny.config(tmp_path)
    state = TrainState.from_config(cfg, run_dir=tmp_path / "run")
    live = _live(cfg, seed=0)
    model = live[0]
    ck = Checkpointer(*live, _loader(), 0, CheckpointWriter(background=background))
    state.global_step = 1
    ck.save(state, best=False)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ck.writer.close()
    back = TrainState.from_checkpoint(tmp_path / "run")
    fresh = _live(cfg, seed=5)
    Checkpointer(*fresh, _loader(), 0).restore(back)
    assert all(torch.equal(fresh[0].state_dict()[k], v) for k, v in saved.items())
