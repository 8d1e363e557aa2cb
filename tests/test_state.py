"""TrainState, the schema: JSON round trip of every field, metric names, generators captured and restored,
the config hash, snapshots, a newer schema refused (on disk: test_store.py; old schemas: test_legacy.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _util import sample_state, write_step
from pydantic import ValidationError

from a2b_pipeline.checkpoint.directory import CheckpointError
from a2b_pipeline.state import SCHEMA_VERSION, MetricRecord, MetricState, RNGState, TrainState


def test_json_round_trip_every_field(tmp_path: Path) -> None:
    s = sample_state(tmp_path)
    text = s.to_json()
    back = TrainState.from_json(text)
    assert back.model_dump() == s.model_dump()
    # the metric history is not in train_state.json: a checkpoint keeps it in metrics.jsonl
    assert "metric_history" not in json.loads(text) and back.metric_history == []
    ms = back.model_state
    assert ms.model_dtype is torch.bfloat16 and ms.model_device == torch.device("cpu")
    assert isinstance(back.rng_state.numpy_rng_state, bytes)
    assert back.rng_state.numpy_rng_state == s.rng_state.numpy_rng_state
    assert isinstance(ms.input_shape, tuple)
    assert isinstance(back.rng_state.python_rng_state[1], tuple)
    assert json.loads(text)["model_state"]["model_dtype"] == "torch.bfloat16"


def test_rng_state_restores_generators() -> None:
    torch.manual_seed(3)
    snap = RNGState.capture(seed=3)
    a = torch.rand(5)
    RNGState.model_validate_json(snap.model_dump_json()).restore()
    assert torch.equal(torch.rand(5), a)


@pytest.mark.parametrize("name", ["loss", "eval/loss", "train/", "Train/loss", "val loss", "test/ccc"])
def test_metric_names_are_checked(name: str) -> None:
    with pytest.raises(ValidationError, match="metric name"):
        MetricState(metrics={name: 1.0})
    with pytest.raises(ValidationError, match="metric name"):
        MetricRecord(name=name, value=1.0, step=0)


def test_metric_names_accepted() -> None:
    for name in ("train/loss", "val/pearson_eda", "val/r2", "val/r", "train/x"):
        assert MetricState(metrics={name: 0.0}).metrics == {name: 0.0}


def test_config_hash_ignores_settings_that_change_no_result(tmp_path: Path) -> None:
    base = sample_state(tmp_path).config
    sync = base.model_copy(update={"checkpoint": base.checkpoint.model_copy(update={"async_write": False})})
    lr = base.model_copy(update={"optimizer": base.optimizer.model_copy(update={"lr": 0.5})})
    assert base.checkpoint.async_write and not sync.checkpoint.async_write
    assert sync.config_hash() == base.config_hash() != lr.config_hash()


def test_snapshot_keeps_what_it_was_while_the_live_state_changes(tmp_path: Path) -> None:
    """What a background checkpoint write serialises must not move while the loop goes on."""
    s = sample_state(tmp_path)
    s.metric_history.append(MetricRecord(name="train/loss", value=1.0, step=1))
    s.batches_drawn["a"] = 1
    snap = s.snapshot()
    before = snap.to_json()
    s.metric_history.append(MetricRecord(name="train/loss", value=0.5, step=2))
    s.metric_state.metrics["train/loss"] = 0.5
    s.batches_drawn["a"], s.batches_drawn["b"] = 2, 1
    s.rank_rng_states.append(RNGState.capture(seed=1))
    s.checkpoint_state.best_value, s.checkpoint_state.files["model.safetensors"] = 0.9, "xxh3_128:00"
    s.global_step, s.status = 2, "complete"
    assert snap.to_json() == before and len(snap.metric_history) == 3
    snap.checkpoint_state.files["optimizer.safetensors"] = "xxh3_128:11"  # as to_checkpoint fills the copy's
    assert "optimizer.safetensors" not in s.checkpoint_state.files


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = write_step(sample_state(tmp_path), 1)
    raw = json.loads((path / "train_state.json").read_text())
    raw["schema_version"] = SCHEMA_VERSION + 1
    (path / "train_state.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match="newer than this a2b_pipeline"):
        TrainState.from_checkpoint(path)


def test_rng_state_round_trip_through_json_restores_python_numpy_and_torch() -> None:
    """Captured, written as JSON, read back and restored after every generator moved on: the next draws
    of python's, numpy's (gaussians too: numpy caches one) and torch's generators are the same."""
    import random

    import numpy as np

    random.seed(11), np.random.seed(11), torch.manual_seed(11)
    random.random(), torch.rand(())  # every generator has moved on from its seed
    np.random.standard_normal()  # leaves a cached gaussian in numpy's state
    snap = RNGState.capture(seed=11)
    want = [
        (random.random(), np.random.standard_normal(), np.random.rand(), float(torch.rand(())))
        for _ in range(3)
    ]
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    RNGState.model_validate_json(snap.model_dump_json()).restore()
    got = [
        (random.random(), np.random.standard_normal(), np.random.rand(), float(torch.rand(())))
        for _ in range(3)
    ]
    assert got == want
    # seeded(): the state seeding gives, without touching the global generators
    seeded = RNGState.seeded(4)
    random.seed(4), np.random.seed(4), torch.manual_seed(4)
    want = (random.random(), np.random.rand(), float(torch.rand(())))
    seeded.restore()
    assert (random.random(), np.random.rand(), float(torch.rand(()))) == want
