"""The seed's interface (the specification the project started from), used as a reader of that text
would: its classes, fields, types, status values, function signatures and keyword names, and a checkpoint
that resumes."""

from __future__ import annotations

import inspect
import json
import random
from pathlib import Path
from typing import get_args

import pytest
import torch
from _util import tiny_config
from pydantic import ValidationError
from torch.utils.data import DataLoader, TensorDataset

from a2b_pipeline.checkpoint.directory import CheckpointError
from a2b_pipeline.checkpoint.store import load_tensors
from a2b_pipeline.configs import RunConfig
from a2b_pipeline.data.meta_dataloader import MetaDataLoader
from a2b_pipeline.state import (
    CheckpointState,
    DataLoaderState,
    MetaDataLoaderState,
    MetricState,
    ModelState,
    OptimizerState,
    RNGState,
    TrainState,
)
from a2b_pipeline.train import train

SEED_FIELDS = {
    RNGState: ["seed", "torch_rng_state", "numpy_rng_state", "python_rng_state"],
    ModelState: [
        "model_loaded",
        "model_ram_size_bytes",
        "model_dtype",
        "model_device",
        "best_model_path",
        "last_model_path",
    ],
    DataLoaderState: ["last_batch_idx", "dataset", "split"],
    MetaDataLoaderState: ["split", "sampling_weights", "dataloader_states"],
    MetricState: ["metrics"],
    OptimizerState: [
        "last_step",
        "moments_ram_size_bytes",
        "moments_dtype",
        "moments_device",
        "moments_path",
    ],
    CheckpointState: ["steps_since_last_checkpoint", "checkpoint_dir"],
    TrainState: [
        "status",
        "rng_state",
        "optimizer_state",
        "checkpoint_state",
        "metric_state",
        "meta_dataloader_state",
        "model_state",
    ],
}


def seed_parts(tmp_path: Path) -> dict[str, object]:
    """Each sub-state built from the seed's fields alone."""
    dl = DataLoaderState(last_batch_idx=3, dataset="synthetic", split="train")
    return {
        "rng_state": RNGState(
            seed=7,
            torch_rng_state={"cpu": torch.get_rng_state().tolist()},
            numpy_rng_state=b"\x00" * (624 * 4 + 16),
            python_rng_state=random.getstate(),
        ),
        "model_state": ModelState(
            model_loaded=True,
            model_ram_size_bytes=1024,
            model_dtype=torch.bfloat16,
            model_device=torch.device("cpu"),
            best_model_path=tmp_path / "best" / "model.safetensors",
            last_model_path=tmp_path / "last" / "model.safetensors",
        ),
        "meta_dataloader_state": MetaDataLoaderState(
            split="train", sampling_weights=[1.0], dataloader_states=[dl]
        ),
        "metric_state": MetricState(metrics={"train/loss": 0.5, "val/pearson": 0.9, "train/epoch": 1}),
        "optimizer_state": OptimizerState(
            last_step=10,
            moments_ram_size_bytes=2048,
            moments_dtype=torch.float32,
            moments_device=torch.device("cpu"),
            moments_path=tmp_path / "last" / "optimizer.safetensors",
        ),
        "checkpoint_state": CheckpointState(steps_since_last_checkpoint=2, checkpoint_dir=tmp_path),
    }


def test_every_seed_class_has_the_seed_fields_stored_under_their_names(tmp_path: Path) -> None:
    for cls, names in SEED_FIELDS.items():
        assert set(names) <= set(cls.model_fields), cls.__name__
    parts = seed_parts(tmp_path)
    cfg = tiny_config(tmp_path)
    state = TrainState(status="in_progress", config=cfg, config_hash=cfg.config_hash(), **parts)
    stored = json.loads(state.to_json())
    for name in SEED_FIELDS[TrainState]:
        assert name in stored
    for part, cls in [(p, type(v)) for p, v in parts.items()]:
        assert set(SEED_FIELDS[cls]) <= set(stored[part]), part
    back = TrainState.model_validate_json(state.to_json())
    assert back == state
    assert back.model_state.model_dtype is torch.bfloat16
    assert isinstance(back.rng_state.numpy_rng_state, bytes)
    assert isinstance(back.rng_state.python_rng_state, tuple)
    assert isinstance(back.optimizer_state.moments_path, Path)
    assert back.meta_dataloader_state.dataloader_states[0].dataset == "synthetic"


def test_status_is_exactly_the_seeds_four(tmp_path: Path) -> None:
    assert set(get_args(TrainState.model_fields["status"].annotation)) == {
        "initialized",
        "in_progress",
        "stopped",
        "complete",
    }
    cfg = tiny_config(tmp_path)
    with pytest.raises(ValidationError, match="status"):
        TrainState(status="failed", config=cfg, config_hash="x", **seed_parts(tmp_path))


def test_seed_validations(tmp_path: Path) -> None:
    dl = DataLoaderState(last_batch_idx=0, dataset="manifest", split="val")
    with pytest.raises(ValidationError, match="as many"):
        MetaDataLoaderState(split="val", sampling_weights=[1.0, 2.0], dataloader_states=[dl])
    for bad in ("loss", "test/pearson", "eval/loss"):
        with pytest.raises(ValidationError, match="train/<name>"):
            MetricState(metrics={bad: 1.0})
    with pytest.raises(ValidationError):
        DataLoaderState(last_batch_idx=0, dataset="synthetic", split="bogus")
    with pytest.raises(ValueError, match="split"):
        MetaDataLoader([DataLoader(TensorDataset(torch.zeros(4, 1)))], split="bogus", sampling_weights=[1.0])


def test_signatures_and_keyword_names() -> None:
    assert list(inspect.signature(TrainState.from_config).parameters)[:1] == ["config"]
    assert list(inspect.signature(TrainState.from_checkpoint).parameters)[:1] == ["checkpoint_path"]
    assert list(inspect.signature(TrainState.to_checkpoint).parameters)[:2] == ["self", "checkpoint_path"]
    assert inspect.signature(TrainState.to_checkpoint).return_annotation in (None, "None")
    assert list(inspect.signature(train).parameters)[:1] == ["cfg"]
    init = list(inspect.signature(MetaDataLoader.__init__).parameters)
    assert init[1:4] == ["dataloaders", "split", "sampling_weights"]


def test_fresh_state_names_no_weights_and_is_not_written(tmp_path: Path) -> None:
    state = TrainState.from_config(config=tiny_config(tmp_path))
    assert state.status == "initialized" and not state.model_state.model_loaded
    assert state.rng_state.seed == state.config.seed
    target = tmp_path / "ckpt"
    with pytest.raises(CheckpointError, match="names no model weights"):
        state.to_checkpoint(checkpoint_path=target)
    assert not target.exists() and not list(tmp_path.glob(".tmp-*"))


def test_to_checkpoint_then_from_checkpoint_resumes_to_identical_weights(tmp_path: Path) -> None:
    overrides = ["train.max_steps=8", "checkpoint.every_n_steps=4", "train.val_every_n_steps=4"]
    config: RunConfig = tiny_config(tmp_path, overrides)
    whole = train(cfg=TrainState.from_config(config=config))
    assert whole.status == "complete" and whole.global_step == 8

    # what train() returns, as the seed's Scratch asks
    assert whole.metric_state.metrics["train/loss"] > 0 and "val/pearson" in whole.metric_state.metrics
    assert whole.model_state.model_loaded and whole.model_state.last_model_path.is_file()
    assert whole.model_state.best_model_path.is_file()
    assert whole.model_state.model_ram_size_bytes > 0 and whole.optimizer_state.moments_ram_size_bytes > 0
    assert whole.optimizer_state.last_step == 8 and whole.optimizer_state.moments_path.is_file()
    written = whole.checkpoint_state.checkpoint_paths
    assert [p.name for p in written] == ["step_000000004", "step_000000008"]
    assert all((p / "train_state.json").is_file() for p in written)
    assert whole.checkpoint_state.steps_since_last_checkpoint == 0
    assert whole.meta_dataloader_state.sampling_weights == [1.0, 0.5]

    # a user's copy of the step-4 checkpoint, made by to_checkpoint alone, resumes to the same weights
    mid = TrainState.from_checkpoint(checkpoint_path=whole.checkpoint_state.checkpoint_dir / "step_000000004")
    copy = tmp_path / "mine" / "step_000000004"
    assert mid.to_checkpoint(checkpoint_path=copy) is None
    assert sorted(p.name for p in copy.iterdir()) == [
        "metrics.jsonl",
        "model.safetensors",
        "optimizer.safetensors",
        "train_state.json",
    ]
    loaded = TrainState.from_checkpoint(checkpoint_path=copy)
    assert loaded.global_step == 4 and loaded.status == "in_progress"
    assert loaded.model_state.last_model_path == copy.resolve() / "model.safetensors"
    resumed = train(cfg=loaded)
    assert resumed.status == "complete" and resumed.global_step == 8
    assert resumed.checkpoint_state.checkpoint_dir == copy.parent.resolve()
    a = load_tensors(whole.last_checkpoint, "model.safetensors", whole)
    b = load_tensors(resumed.last_checkpoint, "model.safetensors", resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.metric_state.metrics["train/loss"] == whole.metric_state.metrics["train/loss"]


def test_fit_returns_the_scratch_train_output_as_a_view_of_the_train_state(tmp_path: Path) -> None:
    from a2b_pipeline.train import TrainOutput, fit

    config = tiny_config(
        tmp_path, ["train.max_steps=4", "checkpoint.every_n_steps=2", "train.val_every_n_steps=2"]
    )
    out = fit(cfg=TrainState.from_config(config=config))
    assert isinstance(out, TrainOutput) and out.state.status == "complete"
    # the metrics, the checkpoints written and the best one's path: the TrainState's own, not copies of a loop
    assert out.metrics == out.state.metric_state.metrics and "val/pearson" in out.metrics
    assert [p.name for p in out.paths_to_artifacts] == ["step_000000002", "step_000000004"]
    assert out.best_checkpoint_path == out.state.best_checkpoint
    assert out.best_checkpoint_path in out.paths_to_artifacts
    assert (
        TrainState.from_checkpoint(out.best_checkpoint_path).global_step
        == out.state.checkpoint_state.best_step
    )
