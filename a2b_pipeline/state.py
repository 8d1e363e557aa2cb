"""TrainState: the checkpoint schema and the one source of truth for a run.

A checkpoint is a directory written atomically:

    step_000120/
      model.safetensors        weights (the uncompiled, unwrapped module's keys)
      optimizer.safetensors    optimizer tensors; the rest of the optimizer state is JSON in train_state.json
      ema.safetensors          EMA weights, when enabled
      train_state.json         this schema, written last: the commit marker, with a digest of every file

Nothing on the load path unpickles: tensors come from safetensors, everything else from JSON.
Digests are xxh3-128 ("xxh3_128:<hex>"): they catch truncated, torn or bit-rotted files at ~10 GB/s, where
sha256 ran at ~1.4 GB/s and cost more than loading the tensors (bench/checkpoint.py). They guard integrity,
not authenticity: whoever can rewrite a file can rewrite train_state.json beside it. A bare 64-hex digest
is a sha256, as the first checkpoints of schema 1 recorded.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
import xxhash
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PlainSerializer,
    PlainValidator,
    ValidationError,
    field_validator,
)

from a2b_pipeline.configs import RunConfig, format_validation_error

SCHEMA_VERSION = 1
STATE_FILE = "train_state.json"
STEP_DIR = re.compile(r"^step_(\d{9})$")


class CheckpointError(RuntimeError):
    """A checkpoint that can't be trusted: missing, truncated, tampered, foreign or too new."""


class SchemaTooNewError(CheckpointError):
    """Written by a newer a2b_pipeline: never skipped over to resume an older checkpoint of the run,
    which would train over (and replace) what the newer version wrote."""


# ---- JSON-able torch types ----


def _parse_dtype(v: Any) -> torch.dtype:
    if isinstance(v, torch.dtype):
        return v
    name = str(v).removeprefix("torch.")
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"not a torch dtype: {v!r}")
    return dtype


def _parse_device(v: Any) -> torch.device:
    try:
        return v if isinstance(v, torch.device) else torch.device(str(v))
    except RuntimeError as e:
        raise ValueError(f"not a torch device: {v!r}") from e


TorchDType = Annotated[torch.dtype, PlainValidator(_parse_dtype), PlainSerializer(lambda d: str(d), str)]
TorchDevice = Annotated[torch.device, PlainValidator(_parse_device), PlainSerializer(lambda d: str(d), str)]


class _Schema(BaseModel):
    model_config = ConfigDict(
        extra="forbid", arbitrary_types_allowed=True, ser_json_bytes="base64", val_json_bytes="base64"
    )


# ---- the parts ----


class RNGState(_Schema):
    """Every generator a step draws from, as JSON-able primitives (no pickle)."""

    python: tuple[int, tuple[int, ...], float | None]
    numpy_keys: list[int]
    numpy_pos: int
    numpy_has_gauss: int
    numpy_cached_gaussian: float
    torch_cpu: bytes
    torch_cuda: list[bytes] = []

    @classmethod
    def capture(cls) -> RNGState:
        version, internal, gauss = random.getstate()
        _, keys, pos, has_gauss, cached = np.random.get_state()
        cuda = (
            [s.numpy().tobytes() for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else []
        )
        return cls(
            python=(version, tuple(internal), gauss),
            numpy_keys=[int(k) for k in keys],
            numpy_pos=int(pos),
            numpy_has_gauss=int(has_gauss),
            numpy_cached_gaussian=float(cached),
            torch_cpu=torch.get_rng_state().numpy().tobytes(),
            torch_cuda=cuda,
        )

    def restore(self) -> None:
        random.setstate((self.python[0], tuple(self.python[1]), self.python[2]))
        np.random.set_state(
            (
                "MT19937",
                np.array(self.numpy_keys, dtype=np.uint32),
                self.numpy_pos,
                self.numpy_has_gauss,
                self.numpy_cached_gaussian,
            )
        )
        torch.set_rng_state(torch.frombuffer(bytearray(self.torch_cpu), dtype=torch.uint8))
        if self.torch_cuda and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(
                [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in self.torch_cuda]
            )


class ModelState(_Schema):
    name: str
    file: str = "model.safetensors"
    ema_file: str | None = None
    num_parameters: NonNegativeInt
    dtype: TorchDType = torch.float32
    device: TorchDevice = torch.device("cpu")
    input_shape: tuple[int, int]  # (frames, n_mels) of one window
    output_shape: tuple[int, int]  # (target samples, channels)


class OptimizerState(_Schema):
    name: str
    file: str = "optimizer.safetensors"
    param_groups: list[dict[str, Any]]  # torch's param_groups, JSON-able
    scalar_state: dict[str, dict[str, float | int | None]] = {}  # non-tensor per-param state
    lr: float
    scaler: dict[str, float | int] | None = None  # GradScaler state (fp16)
    plateau: dict[str, float | int | None] = {}  # ReduceLROnPlateau-like state: scale, best, bad


class DataLoaderState(_Schema):
    name: str
    batches_consumed: NonNegativeInt
    num_batches: NonNegativeInt


class MetaDataLoaderState(_Schema):
    """MetaDataLoader.state_dict() as a schema: position of every loader and of the draw generator."""

    format: int = 1
    split: str
    epoch: NonNegativeInt
    seed: int
    weights: list[float]
    consumed: list[NonNegativeInt]  # batches yielded (consumed by steps) per loader this epoch
    generator_state: list[int]  # torch.Generator state bytes, as ints
    draw_block: NonNegativeInt = 0
    draw_offset: NonNegativeInt = 0
    loaders: list[DataLoaderState] = []  # informational: names and sizes

    def loader_state_dict(self) -> dict[str, Any]:
        return self.model_dump(exclude={"loaders"})


MetricName = Annotated[str, Field(pattern=r"^(train|val|test)/[A-Za-z0-9_.\-/]+$")]


class MetricState(_Schema):
    name: MetricName
    value: float
    step: NonNegativeInt

    @field_validator("name", mode="before")
    @classmethod
    def _explain(cls, v: Any) -> Any:
        if isinstance(v, str) and not re.match(r"^(train|val|test)/.+", v):
            raise ValueError(
                f"metric name {v!r} must look like 'train/<name>', 'val/<name>' or 'test/<name>'"
            )
        return v


class CheckpointState(_Schema):
    last_path: str | None = None
    best_path: str | None = None
    best_metric: str = "val/pearson"
    best_value: float | None = None
    best_step: int | None = None
    files: dict[str, str] = {}  # file name -> digest ("xxh3_128:<hex>"), filled when written


Status = Literal["created", "running", "complete", "stopped", "failed"]


class TrainState(_Schema):
    schema_version: int = SCHEMA_VERSION
    config: RunConfig
    config_hash: str
    run_dir: str
    status: Status = "created"
    message: str = ""
    epoch: NonNegativeInt = 0
    global_step: NonNegativeInt = 0
    samples_seen: NonNegativeInt = 0
    batches_drawn: dict[str, NonNegativeInt] = {}  # training batches drawn per dataset, over the whole run
    world_size: int = 1
    num_threads: int | None = None  # CPU thread count of the first attempt: resume must match
    data_version: str | None = None
    rng: list[RNGState] = []  # one per rank
    model: ModelState | None = None
    optimizer: OptimizerState | None = None
    meta_loader: MetaDataLoaderState | None = None
    metrics: list[MetricState] = []  # full history, in logging order
    checkpoint: CheckpointState = CheckpointState()
    bad_validations: NonNegativeInt = 0  # for early stopping
    wandb_run_id: str | None = None
    wandb_run_path: str | None = None
    created_at: float = Field(default_factory=time.time)
    updated_at: float = Field(default_factory=time.time)

    # ---- construction ----

    @classmethod
    def from_config(cls, cfg: RunConfig, run_dir: str | Path | None = None) -> TrainState:
        """A fresh run. The run directory is `checkpoint.dir/<name>-<config hash>` unless given."""
        h = cfg.config_hash()
        run_dir = Path(run_dir) if run_dir else Path(cfg.checkpoint.dir) / f"{cfg.name}-{h}"
        return cls(
            config=cfg,
            config_hash=h,
            run_dir=str(run_dir.resolve()),
            checkpoint=CheckpointState(best_metric=cfg.checkpoint.metric),
        )

    @classmethod
    def from_json(cls, text: str, source: str = STATE_FILE) -> TrainState:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{source}: not valid JSON ({e})") from None
        version = raw.get("schema_version") if isinstance(raw, dict) else None
        if isinstance(version, int) and version > SCHEMA_VERSION:
            raise SchemaTooNewError(
                f"{source}: schema_version {version} is newer than this a2b_pipeline understands "
                f"({SCHEMA_VERSION}); upgrade a2b_pipeline to load it"
            )
        try:
            return cls.model_validate(raw)
        except ValidationError as e:
            raise CheckpointError(format_validation_error(e, source)) from None

    def to_json(self) -> str:
        return self.model_dump_json(indent=1)

    def snapshot(self) -> TrainState:
        """A copy that a background checkpoint write can serialise while the loop goes on changing this
        state: the containers the loop changes in place are copied; the config and the metric records,
        which nothing changes once made, are shared (a deep copy of a long run's metric history took
        ~0.2 s per checkpoint)."""
        return self.model_copy(
            update={
                "batches_drawn": dict(self.batches_drawn),
                "rng": list(self.rng),
                "metrics": list(self.metrics),
                "checkpoint": self.checkpoint.model_copy(update={"files": dict(self.checkpoint.files)}),
            }
        )

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> TrainState:
        """Load a checkpoint directory, or a run directory's newest checkpoint that verifies."""
        path = Path(path)
        if (path / STATE_FILE).exists():
            return _load_verified(path)
        if not path.is_dir():
            raise CheckpointError(f"{path}: no such checkpoint or run directory")
        errors = []
        for ckpt in reversed(list_checkpoints(path)):
            try:
                return _load_verified(ckpt)
            except SchemaTooNewError:
                raise
            except CheckpointError as e:
                errors.append(str(e))  # fall back to the next newest, as after a crash mid-write
        detail = "; ".join(errors) if errors else "it holds no step_* checkpoint"
        raise CheckpointError(f"{path}: no valid checkpoint ({detail})")

    # ---- writing ----

    def to_checkpoint(
        self, path: str | Path, tensors: dict[str, dict[str, torch.Tensor]] | None = None
    ) -> Path:
        """Write this state (and the given tensor files) as checkpoint `path`, atomically.

        Files go into a temporary sibling directory, are fsynced, train_state.json goes last
        with the digest of every file, then the directory is renamed into place.
        """
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{path.name}-", dir=path.parent))
        try:
            files: dict[str, str] = {}
            for name, tdict in (tensors or {}).items():
                # straight to the file (the same bytes as safetensors.save, without a copy in memory)
                save_file({k: v.detach().contiguous().cpu() for k, v in tdict.items()}, str(tmp / name))
                files[name] = file_digest(tmp / name)  # of the bytes in the page cache, before the flush
                fsync_path(tmp / name)
            self.checkpoint.files = files
            self.updated_at = time.time()
            _write_synced(tmp / STATE_FILE, self.to_json().encode())
            if path.exists():  # rewriting a step (its final status): swap, then drop the old one
                old = path.with_name(f".old-{path.name}")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(path, old)
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, path)
            fsync_path(path.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return path


# ---- checkpoint directory helpers ----


def checkpoint_name(step: int) -> str:
    return f"step_{step:09d}"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Committed checkpoints (those with the marker), oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [p for p in run_dir.iterdir() if STEP_DIR.match(p.name) and (p / STATE_FILE).exists()]
    return sorted(found, key=lambda p: p.name)


def set_pointer(run_dir: str | Path, name: str, target: Path) -> None:
    """Point `run_dir/name` (a relative symlink) at `target`, atomically."""
    link = Path(run_dir) / name
    tmp = Path(run_dir) / f".{name}.tmp"
    tmp.unlink(missing_ok=True)
    os.symlink(target.name, tmp)
    os.replace(tmp, link)


def prune_checkpoints(run_dir: str | Path, keep_last: int, protect: list[str | None]) -> None:
    """Delete all but the newest `keep_last` checkpoints, never one in `protect` (best, last)."""
    keep = {Path(p).resolve() for p in protect if p}
    for ckpt in list_checkpoints(run_dir)[:-keep_last]:
        if ckpt.resolve() not in keep:
            shutil.rmtree(ckpt, ignore_errors=True)
    # Temporary directories of writes that never finished (a killed process). One process writes a run
    # directory, and its own write is done when it prunes, so any left now are dead.
    for tmp in Path(run_dir).glob(".tmp-step_*"):
        shutil.rmtree(tmp, ignore_errors=True)


DIGEST_ALGOS = ("xxh3_128", "sha256")


def file_digest(path: Path, algo: str = "xxh3_128") -> str:
    """`algo:hex` of a file, read in 1 MB chunks into one reused buffer (fresh memory for the whole file
    costs page faults; unlike a mapping, reading turns a file that shrinks meanwhile into a mismatch, not
    a SIGBUS)."""
    h = xxhash.xxh3_128() if algo == "xxh3_128" else hashlib.new(algo)
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return f"{algo}:{h.hexdigest()}"


def verify_file(file: Path, expected: str) -> None:
    """Raise CheckpointError unless the file's digest is the recorded one."""
    algo, _, want = expected.rpartition(":")
    algo = algo or "sha256"  # a bare hex digest: sha256
    if algo not in DIGEST_ALGOS:
        raise CheckpointError(f"{file}: unknown digest {expected!r}")
    try:
        got = file_digest(file, algo).rpartition(":")[2]
    except FileNotFoundError:
        raise CheckpointError(f"{file}: missing") from None
    except OSError as e:
        raise CheckpointError(f"{file}: unreadable ({e})") from None
    if got != want:
        raise CheckpointError(f"{file}: checksum mismatch (truncated or modified after it was written)")


def load_tensors(ckpt_dir: str | Path, name: str, state: TrainState | None = None) -> dict[str, torch.Tensor]:
    """Read a safetensors file of a checkpoint after checking its digest against the state."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    ckpt_dir = Path(ckpt_dir)
    state = state or TrainState.from_checkpoint(ckpt_dir)
    file = ckpt_dir / name
    expected = state.checkpoint.files.get(name)
    if expected is None:
        raise CheckpointError(f"{file}: not listed in {ckpt_dir / STATE_FILE}")
    # Verified again right before the load (from_checkpoint may have run long ago): committed checkpoint
    # files are never rewritten in place (a new one is written beside and renamed), so what load_file maps
    # a moment later is what was hashed.
    verify_file(file, expected)
    try:
        return load_file(file)
    except (SafetensorError, OSError, ValueError) as e:
        # A pickle or any other format planted here is refused by safetensors, never executed.
        raise CheckpointError(f"{file}: not a safetensors file ({e})") from None


def _load_verified(ckpt: Path) -> TrainState:
    state_file = ckpt / STATE_FILE
    try:
        text = state_file.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{state_file}: unreadable ({e})") from None
    state = TrainState.from_json(text, str(state_file))
    ckpt = ckpt.resolve()
    for name, digest in state.checkpoint.files.items():
        verify_file(ckpt / name, digest)
    # Paths point where the checkpoint is now, so a copied or moved run directory still resumes.
    state.run_dir = str(ckpt.parent)
    state.checkpoint.last_path = str(ckpt)
    if state.checkpoint.best_path:
        best = ckpt.parent / Path(state.checkpoint.best_path).name
        state.checkpoint.best_path = str(best) if (best / STATE_FILE).exists() else None
    return state


def _write_synced(path: Path, blob: bytes) -> None:
    with open(path, "wb") as f:
        f.write(blob)
        f.flush()
        os.fsync(f.fileno())


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (a directory: so a rename in it survives a crash)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
