"""TrainState: JSON round trip, metric names, atomic checkpoints, verification on load."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from a2b_pipeline.checkpoint.directory import (
    CheckpointError,
    checkpoint_name,
    list_checkpoints,
    prune_checkpoints,
    set_pointer,
)
from a2b_pipeline.checkpoint.store import load_tensors
from a2b_pipeline.configs import config_from_dict
from a2b_pipeline.state import (
    SCHEMA_VERSION,
    DataLoaderState,
    MetaDataLoaderState,
    MetricRecord,
    MetricState,
    RNGState,
    TrainState,
)


def _state(tmp_path: Path) -> TrainState:
    cfg = config_from_dict(
        {
            "data": {"datasets": [{"name": "a", "type": "synthetic", "root": str(tmp_path)}]},
            "checkpoint": {"dir": str(tmp_path / "runs")},
        }
    )
    s = TrainState.from_config(cfg)
    s.rng_state = RNGState.capture(seed=0)
    s.model_state.model_dtype = torch.bfloat16
    s.model_state.num_parameters, s.model_state.input_shape = 10, (400, 32)
    s.optimizer_state.param_groups = [{"lr": 0.1, "betas": [0.9, 0.99], "params": [0]}]
    s.optimizer_state.scalar_state = {"0": {"step": 3}}
    s.meta_dataloader_state = MetaDataLoaderState(
        split="train",
        sampling_weights=[0.3],
        dataloader_states=[
            DataLoaderState(last_batch_idx=0, dataset="synthetic", split="train", name="a", num_batches=9)
        ],
        epoch=2,
        seed=5,
        generator_state=list(range(16)),
    )
    s.metric_history = [
        MetricRecord(name="train/loss", value=0.5, step=1),
        MetricRecord(name="val/pearson", value=0.9, step=2),
    ]
    s.metric_state = MetricState(metrics={"train/loss": 0.5, "val/pearson": 0.9})
    s.global_step, s.epoch = 7, 2
    return s


def test_json_round_trip_every_field(tmp_path: Path) -> None:
    s = _state(tmp_path)
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


def _write(s: TrainState, step: int) -> Path:
    s.global_step = step
    path = Path(s.run_dir) / checkpoint_name(step)
    s.to_checkpoint(path, {"model.safetensors": {"w": torch.full((3,), float(step))}})
    return path


def test_checkpoint_write_and_verified_load(tmp_path: Path) -> None:
    s = _state(tmp_path)
    path = _write(s, 5)
    names = ["metrics.jsonl", "model.safetensors", "train_state.json"]
    assert sorted(p.name for p in path.iterdir()) == names
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".tmp")]
    loaded = TrainState.from_checkpoint(path)
    assert loaded.global_step == 5 and loaded.last_checkpoint == path.resolve()
    assert torch.equal(load_tensors(path, "model.safetensors", loaded)["w"], torch.full((3,), 5.0))
    assert loaded.metric_history == s.metric_history and len(s.metric_history) == 2


def test_metric_history_lives_beside_the_state_and_is_read_on_first_use(tmp_path: Path) -> None:
    """A long run's history does not grow train_state.json (parsed on every load, size-capped): it is
    metrics.jsonl, digest-checked, read when asked for; a resumed state appends and writes it on."""
    s = _state(tmp_path)
    s.metric_history = [MetricRecord(name="train/loss", value=1 / (i + 1), step=i) for i in range(200_000)]
    path = _write(s, 5)
    assert (path / "train_state.json").stat().st_size < 100_000 < (path / "metrics.jsonl").stat().st_size
    lines = (path / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[1]) == {"name": "train/loss", "value": 0.5, "step": 1}
    loaded = TrainState.from_checkpoint(path)
    assert loaded._history is None  # not parsed by the load
    assert loaded.metric_history == s.metric_history
    loaded.metric_history.append(MetricRecord(name="val/pearson", value=0.5, step=6))
    _write(loaded, 6)
    again = TrainState.from_checkpoint(path.parent / checkpoint_name(6))
    assert len(again.metric_history) == 200_001 and again.metric_history[-1].name == "val/pearson"

    # a history edited after it was written is refused at load, and the run falls back to an older one
    with open(path.parent / checkpoint_name(6) / "metrics.jsonl", "a") as f:
        f.write('{"name": "train/loss", "value": 9, "step": 7}\n')
    with pytest.raises(CheckpointError, match="metrics.jsonl: checksum mismatch"):
        TrainState.from_checkpoint(path.parent / checkpoint_name(6))
    assert TrainState.from_checkpoint(s.run_dir).global_step == 5


def test_oversized_or_malformed_metric_history_is_refused_by_name(tmp_path: Path) -> None:
    from a2b_pipeline.checkpoint.directory import file_digest
    from a2b_pipeline.checkpoint.store import MAX_HISTORY_BYTES

    path = _write(_state(tmp_path), 5)
    history = path / "metrics.jsonl"

    def record_digest() -> None:  # as a forger would: the state file lists the new file's digest
        raw = json.loads((path / "train_state.json").read_text())
        raw["checkpoint_state"]["files"]["metrics.jsonl"] = file_digest(history)
        (path / "train_state.json").write_text(json.dumps(raw))

    history.write_text('{"name": "train/loss", "value": 1, "step": 1}\n{"name": "loss", "value": 1}\n')
    record_digest()
    loaded = TrainState.from_checkpoint(path)
    with pytest.raises(CheckpointError, match=r"metrics.jsonl, line 2"):
        _ = loaded.metric_history
    with open(history, "wb") as f:  # sparse: no disk or memory spent writing it
        f.truncate(MAX_HISTORY_BYTES + 1)
    record_digest()
    loaded = TrainState.from_checkpoint(path)
    with pytest.raises(CheckpointError, match=r"metrics.jsonl: larger than 256 MiB"):
        _ = loaded.metric_history


def test_schema_2_checkpoint_with_the_history_inside_loads_and_is_written_as_schema_3(tmp_path: Path) -> None:
    s = _state(tmp_path)
    path = _write(s, 5)
    raw = json.loads((path / "train_state.json").read_text())
    raw["schema_version"] = 2
    raw["metric_history"] = [m.model_dump() for m in s.metric_history]
    del raw["checkpoint_state"]["files"]["metrics.jsonl"]
    (path / "metrics.jsonl").unlink()
    (path / "train_state.json").write_text(json.dumps(raw))
    old = TrainState.from_checkpoint(path)
    assert old.schema_version == SCHEMA_VERSION == 3 and old.metric_history == s.metric_history
    _write(old, 6)
    new = json.loads((path.parent / checkpoint_name(6) / "train_state.json").read_text())
    assert new["schema_version"] == 3 and "metrics.jsonl" in new["checkpoint_state"]["files"]
    assert TrainState.from_checkpoint(s.run_dir).metric_history == s.metric_history


def test_a_failed_write_leaves_the_state_describing_its_old_checkpoint(tmp_path: Path) -> None:
    s = _state(tmp_path)
    path = _write(s, 5)
    before = s.model_dump()
    (tmp_path / "a_file").write_text("")
    with pytest.raises(OSError):
        s.to_checkpoint(tmp_path / "a_file" / checkpoint_name(6), {"model.safetensors": {"w": torch.ones(3)}})
    assert s.model_dump() == before and s.last_checkpoint == path.absolute()


def test_tampered_and_truncated_files_are_refused_and_run_dir_falls_back(tmp_path: Path) -> None:
    s = _state(tmp_path)
    good = _write(s, 10)
    bad = _write(s, 20)
    weights = bad / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-7])  # truncated
    with pytest.raises(CheckpointError, match="model.safetensors: checksum mismatch"):
        TrainState.from_checkpoint(bad)
    assert TrainState.from_checkpoint(s.run_dir).global_step == 10  # the newest that verifies
    (good / "train_state.json").write_text('{"schema_version": 2, "config"')  # truncated JSON
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


def test_digests_xxh3_and_legacy_sha256(tmp_path: Path) -> None:
    import hashlib

    s = _state(tmp_path)
    path = _write(s, 3)
    weights = path / "model.safetensors"
    raw = json.loads((path / "train_state.json").read_text())
    assert raw["checkpoint_state"]["files"]["model.safetensors"].startswith("xxh3_128:")
    # a bare 64-hex digest (what the first schema-1 checkpoints recorded) is a sha256, and is checked
    for digest, ok in [
        (hashlib.sha256(weights.read_bytes()).hexdigest(), True),
        (hashlib.sha256(b"other bytes").hexdigest(), False),
        ("md5:" + hashlib.md5(weights.read_bytes()).hexdigest(), False),
    ]:
        raw["checkpoint_state"]["files"]["model.safetensors"] = digest
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
    state.checkpoint_state.files["model.safetensors"] = hashlib.sha256(blob).hexdigest()
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


FIXTURE_V1 = Path(__file__).parent / "fixtures" / "checkpoint_v1" / "step_000000004"


def test_schema_1_checkpoint_loads_converted_and_resumes(tmp_path: Path) -> None:
    """A checkpoint in the first layout (rng/model/optimizer/meta_loader/metrics/checkpoint fields, statuses
    created/running/failed), kept as written by that version: it verifies, converts and trains on."""
    import shutil

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


def test_best_model_path_names_the_best_step_only_when_it_is_written(tmp_path: Path) -> None:
    s = _state(tmp_path)
    s.checkpoint_state.best_step, s.checkpoint_state.best_value = 3, 0.9
    best = _write(s, 3)
    assert s.model_state.best_model_path == best / "model.safetensors"
    later = _write(s, 5)  # not the best: best stays where it was, last moves
    assert s.model_state.best_model_path == best / "model.safetensors"
    assert s.model_state.last_model_path == later / "model.safetensors"
    loaded = TrainState.from_checkpoint(later)
    assert loaded.best_checkpoint == best.resolve() and loaded.last_checkpoint == later.resolve()
