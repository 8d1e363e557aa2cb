"""checkpoint/store.py: a TrainState written as a checkpoint directory and loaded back, every file verified
against its digest, a run directory falling back to its newest checkpoint that verifies, paths rebased
to where the directory is now, and nothing unpickled."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from _util import sample_state, write_step

from a2b_pipeline.checkpoint.directory import (
    CheckpointError,
    checkpoint_name,
    list_checkpoints,
    prune_checkpoints,
    set_pointer,
)
from a2b_pipeline.checkpoint.store import load_tensors
from a2b_pipeline.state import MetricRecord, TrainState


def test_checkpoint_write_and_verified_load(tmp_path: Path) -> None:
    s = sample_state(tmp_path)
    path = write_step(s, 5)
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
    s = sample_state(tmp_path)
    s.metric_history = [MetricRecord(name="train/loss", value=1 / (i + 1), step=i) for i in range(200_000)]
    path = write_step(s, 5)
    assert (path / "train_state.json").stat().st_size < 100_000 < (path / "metrics.jsonl").stat().st_size
    lines = (path / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[1]) == {"name": "train/loss", "value": 0.5, "step": 1}
    loaded = TrainState.from_checkpoint(path)
    assert loaded._history is None  # not parsed by the load
    assert loaded.metric_history == s.metric_history
    loaded.metric_history.append(MetricRecord(name="val/pearson", value=0.5, step=6))
    write_step(loaded, 6)
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

    path = write_step(sample_state(tmp_path), 5)
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


def test_a_failed_write_leaves_the_state_describing_its_old_checkpoint(tmp_path: Path) -> None:
    s = sample_state(tmp_path)
    path = write_step(s, 5)
    before = s.model_dump()
    (tmp_path / "a_file").write_text("")
    with pytest.raises(OSError):
        s.to_checkpoint(tmp_path / "a_file" / checkpoint_name(6), {"model.safetensors": {"w": torch.ones(3)}})
    assert s.model_dump() == before and s.last_checkpoint == path.absolute()


def test_tampered_and_truncated_files_are_refused_and_run_dir_falls_back(tmp_path: Path) -> None:
    s = sample_state(tmp_path)
    good = write_step(s, 10)
    bad = write_step(s, 20)
    weights = bad / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-7])  # truncated
    with pytest.raises(CheckpointError, match="model.safetensors: checksum mismatch"):
        TrainState.from_checkpoint(bad)
    assert TrainState.from_checkpoint(s.run_dir).global_step == 10  # the newest that verifies
    (good / "train_state.json").write_text('{"schema_version": 2, "config"')  # truncated JSON
    with pytest.raises(CheckpointError, match="no valid checkpoint.*not valid JSON"):
        TrainState.from_checkpoint(s.run_dir)


def test_digests_xxh3_and_legacy_sha256(tmp_path: Path) -> None:
    import hashlib

    s = sample_state(tmp_path)
    path = write_step(s, 3)
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
    s = sample_state(tmp_path)
    write_step(s, 10)
    half = Path(s.run_dir) / checkpoint_name(30)
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"\0" * 100)  # no train_state.json: never committed
    assert [p.name for p in list_checkpoints(s.run_dir)] == [checkpoint_name(10)]
    assert TrainState.from_checkpoint(s.run_dir).global_step == 10


class _Boom:
    def __reduce__(self):
        return (Path.touch, (Path("/tmp/a2b_pickle_was_executed"),))


def test_planted_pickle_is_refused_and_not_executed(tmp_path: Path) -> None:
    s = sample_state(tmp_path)
    path = write_step(s, 1)
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
    s = sample_state(tmp_path)
    paths = [write_step(s, step) for step in (1, 2, 3, 4)]
    set_pointer(s.run_dir, "best", paths[0])
    set_pointer(s.run_dir, "last", paths[-1])
    prune_checkpoints(s.run_dir, keep_last=2, protect=[str(paths[0]), str(paths[-1])])
    assert [p.name for p in list_checkpoints(s.run_dir)] == [checkpoint_name(i) for i in (1, 3, 4)]
    assert (Path(s.run_dir) / "best").resolve() == paths[0].resolve()
    assert TrainState.from_checkpoint(Path(s.run_dir) / "last").global_step == 4


def test_best_model_path_names_the_best_step_only_when_it_is_written(tmp_path: Path) -> None:
    s = sample_state(tmp_path)
    s.checkpoint_state.best_step, s.checkpoint_state.best_value = 3, 0.9
    best = write_step(s, 3)
    assert s.model_state.best_model_path == best / "model.safetensors"
    later = write_step(s, 5)  # not the best: best stays where it was, last moves
    assert s.model_state.best_model_path == best / "model.safetensors"
    assert s.model_state.last_model_path == later / "model.safetensors"
    loaded = TrainState.from_checkpoint(later)
    assert loaded.best_checkpoint == best.resolve() and loaded.last_checkpoint == later.resolve()


def test_a_run_directory_loads_its_newest_checkpoint(tmp_path: Path) -> None:
    s = sample_state(tmp_path)
    for step in (2, 4, 3):  # written out of order: the step number, not the write order, is newest
        write_step(s, step)
    loaded = TrainState.from_checkpoint(s.run_dir)
    assert (
        loaded.global_step == 4 and loaded.last_checkpoint == (Path(s.run_dir) / checkpoint_name(4)).resolve()
    )
    assert torch.equal(
        load_tensors(loaded.last_checkpoint, "model.safetensors", loaded)["w"], torch.full((3,), 4.0)
    )


def test_a_moved_run_directory_loads_with_its_paths_rebased(tmp_path: Path) -> None:
    """Copied elsewhere, a run directory resumes there: every path of the loaded state leads into the copy
    (the best checkpoint's too), none into the original."""
    s = sample_state(tmp_path)
    s.checkpoint_state.best_step, s.checkpoint_state.best_value = 1, 0.9
    write_step(s, 1)
    write_step(s, 2)
    set_pointer(s.run_dir, "best", Path(s.run_dir) / checkpoint_name(1))
    moved = tmp_path / "elsewhere" / "run"
    shutil.copytree(s.run_dir, moved, symlinks=True)
    shutil.rmtree(s.run_dir)
    state = TrainState.from_checkpoint(moved)
    real = moved.resolve()
    assert state.run_dir == real and state.global_step == 2
    assert state.model_state.last_model_path == real / checkpoint_name(2) / "model.safetensors"
    assert state.model_state.best_model_path == real / checkpoint_name(1) / "model.safetensors"
    assert state.optimizer_state.moments_path == real / checkpoint_name(2) / "optimizer.safetensors"
    assert state.checkpoint_state.checkpoint_paths == [real / checkpoint_name(1), real / checkpoint_name(2)]
    assert state.best_checkpoint == real / checkpoint_name(1)
    assert torch.equal(
        load_tensors(state.last_checkpoint, "model.safetensors", state)["w"], torch.full((3,), 2.0)
    )


def test_a_file_the_state_does_not_list_is_not_loaded(tmp_path: Path) -> None:
    s = sample_state(tmp_path)
    path = write_step(s, 1)
    torch.save({"w": torch.ones(1)}, path / "ema.safetensors")  # planted beside, never recorded
    with pytest.raises(CheckpointError, match=r"ema.safetensors: not listed in .*train_state.json"):
        load_tensors(path, "ema.safetensors", TrainState.from_checkpoint(path))
