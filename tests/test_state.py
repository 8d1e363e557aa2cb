"""TrainState: JSON round trip, metric names, atomic checkpoints, verification on load."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from a2b_pipeline.configs import config_from_dict
from a2b_pipeline.state import (
    SCHEMA_VERSION,
    CheckpointError,
    DataLoaderState,
    MetaDataLoaderState,
    MetricState,
    ModelState,
    OptimizerState,
    RNGState,
    TrainState,
    checkpoint_name,
    list_checkpoints,
    load_tensors,
    prune_checkpoints,
    set_pointer,
)


def _state(tmp_path: Path) -> TrainState:
    cfg = config_from_dict(
        {
            "data": {"datasets": [{"name": "a", "type": "synthetic", "root": str(tmp_path)}]},
            "checkpoint": {"dir": str(tmp_path / "runs")},
        }
    )
    s = TrainState.from_config(cfg)
    s.rng = [RNGState.capture()]
    s.model = ModelState(
        name="conv_gru",
        num_parameters=10,
        dtype=torch.bfloat16,
        device=torch.device("cpu"),
        input_shape=(400, 32),
        output_shape=(32, 2),
    )
    s.optimizer = OptimizerState(
        name="AdamW",
        param_groups=[{"lr": 0.1, "betas": [0.9, 0.99], "params": [0]}],
        lr=0.1,
        scalar_state={"0": {"step": 3}},
    )
    s.meta_loader = MetaDataLoaderState(
        split="train",
        epoch=2,
        seed=5,
        weights=[0.3, 0.7],
        consumed=[1, 4],
        generator_state=list(range(16)),
        loaders=[DataLoaderState(name="a", batches_consumed=1, num_batches=9)],
    )
    s.metrics = [
        MetricState(name="train/loss", value=0.5, step=1),
        MetricState(name="val/pearson", value=0.9, step=2),
    ]
    s.global_step, s.epoch = 7, 2
    return s


def test_json_round_trip_every_field(tmp_path: Path) -> None:
    s = _state(tmp_path)
    text = s.to_json()
    back = TrainState.from_json(text)
    assert back == s
    assert back.model.dtype is torch.bfloat16 and back.model.device == torch.device("cpu")
    assert isinstance(back.rng[0].torch_cpu, bytes) and back.rng[0].torch_cpu == s.rng[0].torch_cpu
    assert isinstance(back.model.input_shape, tuple)
    assert isinstance(back.rng[0].python[1], tuple)
    assert json.loads(text)["model"]["dtype"] == "torch.bfloat16"


def test_rng_state_restores_generators() -> None:
    torch.manual_seed(3)
    snap = RNGState.capture()
    a = torch.rand(5)
    TrainState.model_rebuild()
    RNGState.model_validate_json(snap.model_dump_json()).restore()
    assert torch.equal(torch.rand(5), a)


@pytest.mark.parametrize("name", ["loss", "eval/loss", "train/", "Train/loss", "val loss"])
def test_metric_names_are_checked(name: str) -> None:
    with pytest.raises(ValidationError, match="metric name|pattern"):
        MetricState(name=name, value=1.0, step=0)


def test_metric_names_accepted() -> None:
    for name in ("train/loss", "val/pearson_eda", "test/ccc"):
        assert MetricState(name=name, value=0.0, step=0).name == name


def _write(s: TrainState, step: int) -> Path:
    s.global_step = step
    path = Path(s.run_dir) / checkpoint_name(step)
    s.to_checkpoint(path, {"model.safetensors": {"w": torch.full((3,), float(step))}})
    return path


def test_checkpoint_write_and_verified_load(tmp_path: Path) -> None:
    s = _state(tmp_path)
    path = _write(s, 5)
    assert sorted(p.name for p in path.iterdir()) == ["model.safetensors", "train_state.json"]
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".tmp")]
    loaded = TrainState.from_checkpoint(path)
    assert loaded.global_step == 5 and loaded.checkpoint.last_path == str(path.resolve())
    assert torch.equal(load_tensors(path, "model.safetensors", loaded)["w"], torch.full((3,), 5.0))


def test_tampered_and_truncated_files_are_refused_and_run_dir_falls_back(tmp_path: Path) -> None:
    s = _state(tmp_path)
    good = _write(s, 10)
    bad = _write(s, 20)
    weights = bad / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-7])  # truncated
    with pytest.raises(CheckpointError, match="model.safetensors: checksum mismatch"):
        TrainState.from_checkpoint(bad)
    assert TrainState.from_checkpoint(s.run_dir).global_step == 10  # the newest that verifies
    (good / "train_state.json").write_text('{"schema_version": 1, "config"')  # truncated JSON
    with pytest.raises(CheckpointError, match="no valid checkpoint.*not valid JSON"):
        TrainState.from_checkpoint(s.run_dir)


def test_config_hash_ignores_settings_that_change_no_result(tmp_path: Path) -> None:
    base = _state(tmp_path).config
    sync = base.model_copy(update={"checkpoint": base.checkpoint.model_copy(update={"async_write": False})})
    lr = base.model_copy(update={"optimizer": base.optimizer.model_copy(update={"lr": 0.5})})
    assert base.checkpoint.async_write and not sync.checkpoint.async_write
    assert sync.config_hash() == base.config_hash() != lr.config_hash()


def test_snapshot_keeps_what_it_was_while_the_live_state_changes(tmp_path: Path) -> None:
    """What a background checkpoint write serialises must not move while the loop goes on."""
    s = _state(tmp_path)
    s.metrics.append(MetricState(name="train/loss", value=1.0, step=1))
    s.batches_drawn["a"] = 1
    snap = s.snapshot()
    before = snap.to_json()
    s.metrics.append(MetricState(name="train/loss", value=0.5, step=2))
    s.batches_drawn["a"], s.batches_drawn["b"] = 2, 1
    s.rng.append(RNGState.capture())
    s.checkpoint.best_value, s.checkpoint.files["model.safetensors"] = 0.9, "xxh3_128:00"
    s.global_step, s.status = 2, "complete"
    assert snap.to_json() == before
    snap.checkpoint.files["optimizer.safetensors"] = "xxh3_128:11"  # as to_checkpoint fills the copy's
    assert "optimizer.safetensors" not in s.checkpoint.files


def test_digests_xxh3_and_legacy_sha256(tmp_path: Path) -> None:
    import hashlib

    s = _state(tmp_path)
    path = _write(s, 3)
    weights = path / "model.safetensors"
    raw = json.loads((path / "train_state.json").read_text())
    assert raw["checkpoint"]["files"]["model.safetensors"].startswith("xxh3_128:")
    # a bare 64-hex digest (what the first schema-1 checkpoints recorded) is a sha256, and is checked
    for digest, ok in [
        (hashlib.sha256(weights.read_bytes()).hexdigest(), True),
        (hashlib.sha256(b"other bytes").hexdigest(), False),
        ("md5:" + hashlib.md5(weights.read_bytes()).hexdigest(), False),
    ]:
        raw["checkpoint"]["files"]["model.safetensors"] = digest
        (path / "train_state.json").write_text(json.dumps(raw))
        if ok:
            assert torch.equal(load_tensors(path, "model.safetensors")["w"], torch.full((3,), 3.0))
        else:
            with pytest.raises(CheckpointError, match="safetensors: (checksum mismatch|unknown digest)"):
                TrainState.from_checkpoint(path)


def test_half_written_checkpoint_is_invisible(tmp_path: Path) -> None:
    s = _state(tmp_path)
    _write(s, 10)
    half = Path(s.run_dir) / checkpoint_name(30)
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"\0" * 100)  # no train_state.json: never committed
    assert [p.name for p in list_checkpoints(s.run_dir)] == [checkpoint_name(10)]
    assert TrainState.from_checkpoint(s.run_dir).global_step == 10


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = _write(_state(tmp_path), 1)
    raw = json.loads((path / "train_state.json").read_text())
    raw["schema_version"] = SCHEMA_VERSION + 1
    (path / "train_state.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match="newer than this a2b_pipeline"):
        TrainState.from_checkpoint(path)


class _Boom:
    def __reduce__(self):
        return (Path.touch, (Path("/tmp/a2b_pickle_was_executed"),))


def test_planted_pickle_is_refused_and_not_executed(tmp_path: Path) -> None:
    s = _state(tmp_path)
    path = _write(s, 1)
    marker = Path("/tmp/a2b_pickle_was_executed")
    marker.unlink(missing_ok=True)
    blob = pickle.dumps({"w": _Boom()})
    (path / "model.safetensors").write_bytes(blob)
    # Even with a matching checksum (an attacker rewrote both), safetensors refuses to parse a pickle.
    import hashlib

    state = TrainState.from_json((path / "train_state.json").read_text())
    state.checkpoint.files["model.safetensors"] = hashlib.sha256(blob).hexdigest()
    (path / "train_state.json").write_text(state.to_json())
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_tensors(path, "model.safetensors")
    assert not marker.exists()


def test_pointers_and_pruning_keep_best(tmp_path: Path) -> None:
    s = _state(tmp_path)
    paths = [_write(s, step) for step in (1, 2, 3, 4)]
    set_pointer(s.run_dir, "best", paths[0])
    set_pointer(s.run_dir, "last", paths[-1])
    prune_checkpoints(s.run_dir, keep_last=2, protect=[str(paths[0]), str(paths[-1])])
    assert [p.name for p in list_checkpoints(s.run_dir)] == [checkpoint_name(i) for i in (1, 3, 4)]
    assert (Path(s.run_dir) / "best").resolve() == paths[0].resolve()
    assert TrainState.from_checkpoint(Path(s.run_dir) / "last").global_step == 4
