"""A TrainState on disk: write it as a checkpoint directory, find and load one, verify every file it lists.

TrainState.from_checkpoint and to_checkpoint (state.py, the seed's methods) delegate here; this module builds
on the schema in state.py and on the file mechanics of directory.py. Checkpoints of older schemas are
converted on load by legacy.py.

Loading trusts nothing it reads: the state file is read bounded, every file it lists must be a regular file
inside the checkpoint and match its recorded digest, a `step_*` entry or pointer must lead into its own run
directory, and tensors come from safetensors only (no unpickling anywhere on the load path).
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import torch
from pydantic import ValidationError

from a2b_pipeline.checkpoint import legacy
from a2b_pipeline.checkpoint.directory import (
    EMA_FILE,
    METRICS_FILE,
    MODEL_FILE,
    OPTIMIZER_FILE,
    STATE_FILE,
    STEP_DIR,
    CheckpointError,
    SchemaTooNewError,
    checkpoint_file,
    checkpoint_name,
    entry_inside,
    list_checkpoints,
    read_bounded,
    read_state_text,
    read_verified_tensors,
    verify_bytes,
    verify_file,
    write_checkpoint_dir,
)
from a2b_pipeline.configs import format_validation_error
from a2b_pipeline.state import MetricRecord, TrainState

# ~4 million records: far more than a run logs; a bigger history file is refused before it is parsed
MAX_HISTORY_BYTES = 256 << 20

# ---- loading ----


def load_state(checkpoint_path: str | Path) -> TrainState:
    """TrainState.from_checkpoint: a checkpoint directory, or a run directory's newest checkpoint that
    verifies (see that method)."""
    path = Path(checkpoint_path)
    if (path / STATE_FILE).exists():
        if STEP_DIR.match(path.name) or path.name in ("last", "best") or path.is_symlink():
            entry_inside(path.absolute().parent, path)
        return load_verified(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint or run directory")
    errors = []
    for ckpt in reversed(list_checkpoints(path)):
        try:
            entry_inside(path, ckpt)
            return load_verified(ckpt)
        except SchemaTooNewError:
            raise
        except CheckpointError as e:
            errors.append(str(e))
    detail = "; ".join(errors) if errors else "it holds no step_* checkpoint"
    raise CheckpointError(f"{path}: no valid checkpoint ({detail})")


def load_verified(ckpt: Path) -> TrainState:
    """The state of checkpoint directory `ckpt`, after checking every file it lists against its digest;
    its paths rebased to where the directory is now."""
    state_file = ckpt / STATE_FILE
    state = TrainState.from_json(read_state_text(state_file), str(state_file))
    ckpt = ckpt.resolve()
    for name, digest in state.checkpoint_state.files.items():
        verify_file(checkpoint_file(ckpt, name), digest)  # only regular files inside it are read
    _rebase(state, ckpt)
    if state._upgraded:  # read from a schema-1 file, which did not record sizes
        legacy.read_sizes(state, ckpt)
    if METRICS_FILE in state.checkpoint_state.files:
        state._history_file = (ckpt / METRICS_FILE, state.checkpoint_state.files[METRICS_FILE])
    return state


def load_tensors(ckpt_dir: str | Path, name: str, state: TrainState | None = None) -> dict[str, torch.Tensor]:
    """Read a safetensors file of a checkpoint after checking its digest against the state."""
    ckpt_dir = Path(ckpt_dir)
    state = state or TrainState.from_checkpoint(ckpt_dir)
    expected = state.checkpoint_state.files.get(name)
    file = checkpoint_file(ckpt_dir, name) if expected is not None else ckpt_dir / name
    return read_verified_tensors(file, expected, ckpt_dir / STATE_FILE)


def read_metric_history(file: Path, digest: str) -> list[MetricRecord]:
    """A checkpoint's metrics.jsonl, size-capped and checked against its digest before it is parsed."""
    blob = read_bounded(file, MAX_HISTORY_BYTES, "more than a run's metric history takes")
    verify_bytes(file, blob, digest)
    records = []
    for number, line in enumerate(io.BytesIO(blob), 1):
        try:
            records.append(MetricRecord.model_validate_json(line))
        except ValidationError as e:
            raise CheckpointError(format_validation_error(e, f"{file}, line {number}")) from None
    return records


def _pointer_inside(run: Path, name: str) -> bool:
    try:
        entry_inside(run, run / name)
    except (CheckpointError, OSError):
        return False
    return True


def _rebase(state: TrainState, ckpt: Path) -> None:
    """Paths point where the checkpoint is now, so a copied or moved run directory still resumes."""
    ms, ck, files = state.model_state, state.checkpoint_state, state.checkpoint_state.files
    run = ckpt.parent
    ck.checkpoint_dir = run
    ms.model_loaded = MODEL_FILE in files
    ms.last_model_path = ckpt / MODEL_FILE
    ms.ema_path = ckpt / ms.ema_path.name if ms.ema_path is not None else None
    state.optimizer_state.moments_path = ckpt / OPTIMIZER_FILE
    best_file = ms.ema_path.name if ms.ema_path is not None else MODEL_FILE
    if ck.best_step is not None and (run / checkpoint_name(ck.best_step) / STATE_FILE).exists():
        ms.best_model_path = run / checkpoint_name(ck.best_step) / best_file
    elif _pointer_inside(run, "best"):
        ms.best_model_path = run / "best" / best_file
    else:  # no best checkpoint here (a `best` leading into another run is not this run's best)
        ms.best_model_path = run / checkpoint_name(ck.best_step or 0) / best_file
    ck.checkpoint_paths = [run / p.name for p in ck.checkpoint_paths if (run / p.name / STATE_FILE).exists()]


# ---- writing ----


def save_state(
    state: TrainState, checkpoint_path: str | Path, tensors: dict[str, dict[str, torch.Tensor]] | None = None
) -> None:
    """TrainState.to_checkpoint: write `state` as checkpoint directory `checkpoint_path` (see that method)."""
    path = Path(checkpoint_path).absolute()
    copies = {} if tensors is not None else _files_to_copy(state, path)
    names = set(tensors or copies)
    ms, ck = state.model_state, state.checkpoint_state
    ema = path / EMA_FILE if EMA_FILE in names else None
    best_here = ck.best_step is not None and ck.best_step == state.global_step
    new = state.model_copy(
        update={
            "model_state": ms.model_copy(
                update={
                    "model_loaded": True,
                    "last_model_path": path / MODEL_FILE,
                    "ema_path": ema,
                    "best_model_path": (ema or path / MODEL_FILE) if best_here else ms.best_model_path,
                }
            ),
            "optimizer_state": state.optimizer_state.model_copy(
                update={"moments_path": path / OPTIMIZER_FILE}
            ),
            "checkpoint_state": ck.model_copy(
                update={
                    "checkpoint_dir": path.parent,
                    "steps_since_last_checkpoint": 0,
                    "checkpoint_paths": [p for p in ck.checkpoint_paths if p != path and p.exists()] + [path],
                }
            ),
            "updated_at": time.time(),
            "config_hash": state.config.config_hash(),  # checked on load: it must describe the config
        }
    )

    def state_json(files: dict[str, str]) -> bytes:
        new.checkpoint_state.files = files
        return new.to_json().encode()

    history = b"".join(r.__pydantic_serializer__.to_json(r) + b"\n" for r in state.metric_history)
    write_checkpoint_dir(path, state_json, tensors or {}, copies, {METRICS_FILE: history})
    for name in ("model_state", "optimizer_state", "checkpoint_state", "updated_at", "config_hash"):
        setattr(state, name, getattr(new, name))


def _files_to_copy(state: TrainState, dest: Path) -> dict[str, tuple[Path, str]]:
    """(source, digest) of each file of the checkpoint `state` was loaded from or written as."""
    src = state.last_checkpoint
    if src is None:
        raise CheckpointError(
            f"{dest}: this TrainState names no model weights (model_state.model_loaded is False: it "
            "has not been trained or loaded from a checkpoint); train() it, or pass `tensors`"
        )
    files = state.checkpoint_state.files
    for needed in (MODEL_FILE, OPTIMIZER_FILE):
        if needed not in files:
            raise CheckpointError(f"{src}: {needed} is not listed in its {STATE_FILE}")
    # the history is written from memory: it may have grown since
    return {n: (checkpoint_file(src, n), d) for n, d in files.items() if n != METRICS_FILE}
