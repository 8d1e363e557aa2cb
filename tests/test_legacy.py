"""checkpoint/legacy.py: train_state.json files of schemas 1 and 2 load as the current schema; schema 1's
fields, statuses, per-rank generators and loader position are converted, and a file missing what the
conversion needs is refused by name."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from _util import sample_state, write_step

from a2b_pipeline.checkpoint.directory import CheckpointError, checkpoint_name
from a2b_pipeline.checkpoint.store import load_tensors
from a2b_pipeline.state import SCHEMA_VERSION, TrainState

FIXTURE_V1 = Path(__file__).parent / "fixtures" / "checkpoint_v1" / "step_000000004"


def test_schema_2_checkpoint_with_the_history_inside_loads_and_is_written_as_schema_3(tmp_path: Path) -> None:
    s = sample_state(tmp_path)
    path = write_step(s, 5)
    raw = json.loads((path / "train_state.json").read_text())
    raw["schema_version"] = 2
    raw["metric_history"] = [m.model_dump() for m in s.metric_history]
    del raw["checkpoint_state"]["files"]["metrics.jsonl"]
    (path / "metrics.jsonl").unlink()
    (path / "train_state.json").write_text(json.dumps(raw))
    old = TrainState.from_checkpoint(path)
    assert old.schema_version == SCHEMA_VERSION == 3 and old.metric_history == s.metric_history
    write_step(old, 6)
    new = json.loads((path.parent / checkpoint_name(6) / "train_state.json").read_text())
    assert new["schema_version"] == 3 and "metrics.jsonl" in new["checkpoint_state"]["files"]
    assert TrainState.from_checkpoint(s.run_dir).metric_history == s.metric_history


def test_schema_1_checkpoint_loads_converted_and_resumes(tmp_path: Path) -> None:
    """A checkpoint in the first layout (rng/model/optimizer/meta_loader/metrics/checkpoint fields, statuses
    created/running/failed), kept as written by that version: it verifies, converts and trains on."""

    ckpt = tmp_path / "run" / FIXTURE_V1.name
    shutil.copytree(FIXTURE_V1, ckpt)
    assert json.loads((ckpt / "train_state.json").read_text())["schema_version"] == 1
    state = TrainState.from_checkpoint(ckpt)
    assert state.schema_version == SCHEMA_VERSION and state.status == "complete" and state.global_step == 4
    ms, os_, ml = state.model_state, state.optimizer_state, state.meta_dataloader_state
    assert ms.model_loaded and ms.last_model_path == ckpt.resolve() / "model.safetensors"
    assert ms.ema_path == ckpt.resolve() / "ema.safetensors"
    assert ms.best_model_path == ckpt.resolve() / "ema.safetensors"  # best was step 4, with EMA on
    assert ms.model_ram_size_bytes == 4 * ms.num_parameters  # float32, read from the file's header
    assert os_.name == "AdamW" and os_.last_step == 4 and os_.moments_ram_size_bytes > 0
    assert ml.sampling_weights == [1.0, 0.5] and [d.last_batch_idx for d in ml.dataloader_states] == [2, 0]
    assert [d.dataset for d in ml.dataloader_states] == ["synthetic", "synthetic"]
    assert state.metric_state.metrics["val/pearson"] == state.checkpoint_state.best_value
    assert state.checkpoint_state.checkpoint_dir == ckpt.parent.resolve()
    assert load_tensors(ckpt, "model.safetensors", state)  # the digests recorded then still verify
    # its data roots were a machine's /tmp: point them here, train two steps more
    datasets = [d.model_copy(update={"root": str(tmp_path / d.name)}) for d in state.config.data.datasets]
    data = state.config.data.model_copy(update={"datasets": datasets})
    train_cfg = state.config.train.model_copy(update={"max_steps": 6})
    state.config = state.config.model_copy(update={"data": data, "train": train_cfg})
    from a2b_pipeline.train import train

    done = train(state)
    assert done.status == "complete" and done.global_step == 6
    assert TrainState.from_checkpoint(ckpt.parent).global_step == 6


def _v1(**changes: object) -> dict:
    """The fixture's schema-1 train_state.json with `changes` (None: the field removed)."""
    raw = json.loads((FIXTURE_V1 / "train_state.json").read_text())
    for k, v in changes.items():
        if v is None:
            del raw[k]
        else:
            raw[k] = v
    return raw


@pytest.mark.parametrize(
    ("old", "new", "reason"),
    [("created", "initialized", None), ("running", "in_progress", None), ("failed", "stopped", "error")],
)
def test_schema_1_statuses_take_their_new_names(old: str, new: str, reason: str | None) -> None:
    state = TrainState.from_json(json.dumps(_v1(status=old)))
    assert state.status == new and state.stop_reason == reason


def test_schema_1_every_ranks_generators_and_no_test_metrics_in_the_history() -> None:
    raw = _v1()
    raw["rng"] = [raw["rng"][0], {**raw["rng"][0], "python": raw["rng"][0]["python"]}]
    raw["metrics"] = [*raw["metrics"], {"name": "test/pearson", "value": 0.5, "step": 4}]
    state = TrainState.from_json(json.dumps(raw))
    seed = state.config.seed
    assert state.rng_state.seed == seed and [r.seed for r in state.rank_rng_states] == [seed + 1]
    assert state.rank_rng_states[0].numpy_rng_state == state.rng_state.numpy_rng_state
    assert not [m for m in state.metric_history if m.name.startswith("test/")]
    assert len(state.metric_history) == len(raw["metrics"]) - 1


def test_schema_1_before_the_first_step_gets_a_fresh_loader_position() -> None:
    state = TrainState.from_json(json.dumps(_v1(meta_loader=None, rng=None, status="created")))
    ml = state.meta_dataloader_state
    assert [d.last_batch_idx for d in ml.dataloader_states] == [-1] * len(state.config.data.datasets)
    assert ml.sampling_weights == [d.weight for d in state.config.data.datasets]
    assert state.rng_state.seed == state.config.seed and state.rank_rng_states == []


def test_schema_1_missing_what_the_conversion_needs_is_refused_by_name() -> None:
    with pytest.raises(
        CheckpointError, match=r"old.json: not a valid schema-1 state \(KeyError: 'run_dir'\)"
    ):
        TrainState.from_json(json.dumps(_v1(run_dir=None)), "old.json")
