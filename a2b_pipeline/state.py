"""TrainState: the checkpoint schema and the one source of truth for a run.

The classes and fields of the seed (the founding spec: RNGState, ModelState, DataLoaderState,
MetaDataLoaderState, MetricState, OptimizerState, CheckpointState, TrainState) are here under the seed's
names and types; what a bit-exact resume needs beyond them (the RunConfig, global step, epoch, every
rank's RNG, the draw generator, file digests, the metric history, the wandb run id) sits beside them in
fields of its own. A checkpoint is a directory written atomically (checkpoint/directory.py):

    step_000000120/
      model.safetensors        weights (the uncompiled, unwrapped module's keys)
      optimizer.safetensors    optimizer moments; the rest of the optimizer state is JSON in train_state.json
      ema.safetensors          EMA weights, when enabled
      metrics.jsonl            the metric history, one logged value a line: long runs log millions, and
                               train_state.json, which every load parses, stays small without them
      train_state.json         this schema, written last: the commit marker, with a digest of every file

Nothing on the load path unpickles: tensors come from safetensors, everything else from JSON. Checkpoints
of schema 1 (the first layout, with `rng`, `model`, `optimizer`, ... fields) are converted on load, and
those of schema 2 (the metric history inside train_state.json) read as they are.
"""

from __future__ import annotations

import io
import json
import random
import struct
import time
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PlainSerializer,
    PlainValidator,
    PrivateAttr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from a2b_pipeline.checkpoint.directory import (  # the directory helpers are re-exported: one import for users
    STATE_FILE,
    STEP_DIR,
    CheckpointError,
    SchemaTooNewError,
    checkpoint_file,
    checkpoint_name,
    entry_inside,
    file_digest,
    fsync_path,
    list_checkpoints,
    prune_checkpoints,
    read_bounded,
    read_state_text,
    read_verified_tensors,
    set_pointer,
    tensor_bytes,
    verify_bytes,
    verify_file,
    write_checkpoint_dir,
)
from a2b_pipeline.configs import DatasetType, RunConfig, format_validation_error

__all__ = [
    "STATE_FILE",
    "STEP_DIR",
    "CheckpointError",
    "CheckpointState",
    "DataLoaderState",
    "MetaDataLoaderState",
    "MetricRecord",
    "MetricState",
    "ModelState",
    "OptimizerState",
    "RNGState",
    "SchemaTooNewError",
    "TrainState",
    "checkpoint_name",
    "file_digest",
    "fsync_path",
    "list_checkpoints",
    "load_tensors",
    "prune_checkpoints",
    "set_pointer",
    "verify_file",
]

SCHEMA_VERSION = 3
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
EMA_FILE = "ema.safetensors"
METRICS_FILE = "metrics.jsonl"
# ~4 million records: far more than a run logs; a bigger history file is refused before it is parsed
MAX_HISTORY_BYTES = 256 << 20
# Counters no run reaches (2**53: exact in JSON's doubles too); a checkpoint claiming more is refused.
MAX_COUNT = 2**53
Count = Annotated[int, Field(ge=0, le=MAX_COUNT)]
_CPU_RNG_BYTES = torch.get_rng_state().numel()  # the CPU generator's state: 5056 bytes (mt19937 + extras)

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
Split = Literal["train", "val", "test"]
Status = Literal["initialized", "in_progress", "stopped", "complete"]
StopReason = Literal["signal", "non_finite_loss", "out_of_memory", "error"]


class _Schema(BaseModel):
    model_config = ConfigDict(
        extra="forbid", arbitrary_types_allowed=True, ser_json_bytes="base64", val_json_bytes="base64"
    )


def _tuples(v: Any) -> Any:
    """JSON has no tuples: nested lists back to tuples, so random.setstate takes them."""
    return tuple(_tuples(x) for x in v) if isinstance(v, list | tuple) else v


# ---- the parts ----

_NUMPY_TAIL = struct.Struct("<iid")  # MT19937 pos, has_gauss, cached_gaussian after the 624 uint32 keys


class RNGState(_Schema):
    """Every generator a step draws from, as JSON-able primitives (no pickle).

    torch_rng_state: one entry per device ("cpu", "cuda:0", ...), the generator state's bytes as ints.
    numpy_rng_state: numpy's legacy MT19937 state: 624 little-endian uint32 keys, then pos, has_gauss
    (int32) and cached_gaussian (float64). python_rng_state: random.getstate().
    """

    seed: int
    torch_rng_state: dict[str, list]
    numpy_rng_state: bytes
    python_rng_state: tuple

    @field_validator("python_rng_state", mode="before")
    @classmethod
    def _as_tuples(cls, v: Any) -> Any:
        return _tuples(v)

    @field_validator("torch_rng_state")
    @classmethod
    def _has_cpu(cls, v: dict[str, list]) -> dict[str, list]:
        if "cpu" not in v:
            raise ValueError(f"needs a 'cpu' entry (the CPU generator's state), has {sorted(v)[:4]}")
        if len(v["cpu"]) != _CPU_RNG_BYTES:
            raise ValueError(f"'cpu' has {len(v['cpu'])} bytes; a CPU generator state has {_CPU_RNG_BYTES}")
        for device, state in v.items():
            if not all(isinstance(b, int) and 0 <= b < 256 for b in state):
                raise ValueError(f"{device!r}: a generator state is a list of bytes (integers 0..255)")
        return v

    @classmethod
    def seeded(cls, seed: int) -> RNGState:
        """The state that seeding every generator with `seed` gives, without touching the global ones."""
        keys, pos, has_gauss, cached = np.random.RandomState(seed % 2**32).get_state()[1:]
        return cls(
            seed=seed,
            torch_rng_state={"cpu": torch.Generator().manual_seed(seed).get_state().tolist()},
            numpy_rng_state=_numpy_bytes(keys, pos, has_gauss, cached),
            python_rng_state=random.Random(seed).getstate(),
        )

    @classmethod
    def capture(cls, seed: int) -> RNGState:
        """The global generators' states now (`seed`: the seed they were first seeded with)."""
        torch_states = {"cpu": torch.get_rng_state().tolist()}
        if torch.cuda.is_available():
            for i, s in enumerate(torch.cuda.get_rng_state_all()):
                torch_states[f"cuda:{i}"] = s.tolist()
        return cls(
            seed=seed,
            torch_rng_state=torch_states,
            numpy_rng_state=_numpy_bytes(*np.random.get_state()[1:]),
            python_rng_state=random.getstate(),
        )

    def restore(self) -> None:
        """Set the global generators to this state. CUDA generators absent from it (a fresh state made
        without a GPU) are seeded with `seed`, as torch.manual_seed would."""
        random.setstate(self.python_rng_state)
        raw = self.numpy_rng_state
        if len(raw) != 624 * 4 + _NUMPY_TAIL.size:
            raise CheckpointError(f"numpy_rng_state has {len(raw)} bytes, not an MT19937 state")
        pos, has_gauss, cached = _NUMPY_TAIL.unpack(raw[624 * 4 :])
        np.random.set_state(("MT19937", np.frombuffer(raw[: 624 * 4], "<u4"), pos, has_gauss, cached))
        torch.set_rng_state(torch.tensor(self.torch_rng_state["cpu"], dtype=torch.uint8))
        if torch.cuda.is_available():
            cuda = [k for k in self.torch_rng_state if k.startswith("cuda:")]
            if not cuda:
                torch.cuda.manual_seed_all(self.seed)
            for k in cuda:
                index = int(k.split(":")[1])
                if index < torch.cuda.device_count():
                    state = torch.tensor(self.torch_rng_state[k], dtype=torch.uint8)
                    torch.cuda.set_rng_state(state, index)


def _numpy_bytes(keys: Any, pos: int, has_gauss: int, cached: float) -> bytes:
    return np.asarray(keys, dtype="<u4").tobytes() + _NUMPY_TAIL.pack(int(pos), int(has_gauss), float(cached))


class ModelState(_Schema):
    """The model's weights: where they are and what they take. `last_model_path` is the weight file of
    the newest checkpoint, `best_model_path` that of the best one (its EMA weights when EMA is on); before
    the first checkpoint both name where the run's `last`/`best` pointers will lead, and `model_loaded`
    is False."""

    model_loaded: bool
    model_ram_size_bytes: NonNegativeInt
    model_dtype: TorchDType
    model_device: TorchDevice
    best_model_path: Path
    last_model_path: Path
    # beyond the seed
    architecture: str | None = None  # config's model.name
    num_parameters: NonNegativeInt = 0
    ema_path: Path | None = None  # EMA weights of the newest checkpoint, when enabled
    input_shape: tuple[int, int] | None = None  # (frames, n_mels) of one window
    output_shape: tuple[int, int] | None = None  # (target samples, channels)


class OptimizerState(_Schema):
    """The optimizer's moments (in the safetensors file `moments_path`) and, as JSON, everything else
    torch's optimizer state_dict holds, plus the fp16 scaler and plateau-schedule state."""

    last_step: NonNegativeInt
    moments_ram_size_bytes: NonNegativeInt
    moments_dtype: TorchDType
    moments_device: TorchDevice
    moments_path: Path
    # beyond the seed
    name: str | None = None  # torch optimizer class, e.g. "AdamW"
    param_groups: list[dict[str, Any]] = []  # torch's param_groups, JSON-able
    scalar_state: dict[str, dict[str, float | int | None]] = {}  # non-tensor per-param state
    lr: float | None = None
    scaler: dict[str, float | int] | None = None  # GradScaler state (fp16)
    plateau: dict[str, float | int | None] = {}  # ReduceLROnPlateau-like state: scale, best, bad


class DataLoaderState(_Schema):
    """One dataset's loader within the MetaDataLoader: `last_batch_idx` is the index, in this epoch, of
    the last batch a training step consumed (-1: none yet)."""

    last_batch_idx: Annotated[int, Field(ge=-1)]
    dataset: DatasetType
    split: Split
    # beyond the seed
    name: str | None = None  # the dataset's name in the config
    num_batches: NonNegativeInt | None = None  # batches in a full epoch

    @property
    def batches_consumed(self) -> int:
        return self.last_batch_idx + 1


class MetaDataLoaderState(_Schema):
    """MetaDataLoader's position: every loader's, and the draw generator's (the seed's fields plus the
    epoch, seed and generator block that make the next draw a pure function of the state)."""

    split: Split
    sampling_weights: list[float]
    dataloader_states: list[DataLoaderState]  # len(dataloader_states) == len(sampling_weights)
    # beyond the seed
    format: int = 1
    epoch: NonNegativeInt = 0
    seed: int = 0
    generator_state: list[int] = []  # torch.Generator state at the current draw block; []: epoch start
    draw_block: NonNegativeInt = 0
    draw_offset: NonNegativeInt = 0

    @model_validator(mode="after")
    def _consistent(self) -> MetaDataLoaderState:
        if len(self.dataloader_states) != len(self.sampling_weights):
            raise ValueError(
                f"{len(self.dataloader_states)} dataloader_states for {len(self.sampling_weights)} "
                "sampling_weights: they must be as many"
            )
        for i, d in enumerate(self.dataloader_states):
            if d.split != self.split:
                raise ValueError(
                    f"dataloader_states[{i}].split is {d.split!r}, the loader's is {self.split!r}"
                )
        return self

    def loader_state_dict(self) -> dict[str, Any]:
        """What MetaDataLoader.load_state_dict takes."""
        return {
            "format": self.format,
            "split": self.split,
            "seed": self.seed,
            "epoch": self.epoch,
            "consumed": [d.batches_consumed for d in self.dataloader_states],
            "weights": list(self.sampling_weights),
            "generator_state": list(self.generator_state),
            "draw_block": self.draw_block,
            "draw_offset": self.draw_offset,
        }

    @classmethod
    def from_loader_state_dict(
        cls, sd: dict[str, Any], datasets: list[tuple[str, DatasetType, int]]
    ) -> MetaDataLoaderState:
        """From MetaDataLoader.state_dict() and each loader's (dataset name, type, batches per epoch)."""
        loaders = [
            DataLoaderState(last_batch_idx=c - 1, dataset=t, split=sd["split"], name=n, num_batches=b)
            for c, (n, t, b) in zip(sd["consumed"], datasets, strict=True)
        ]
        return cls(
            split=sd["split"],
            sampling_weights=sd["weights"],
            dataloader_states=loaders,
            **{k: sd[k] for k in ("format", "epoch", "seed", "generator_state", "draw_block", "draw_offset")},
        )


def _check_metric_name(name: Any) -> Any:
    split, sep, rest = name.partition("/") if isinstance(name, str) else ("", "", "")
    if not (sep and split in ("train", "val") and rest):  # any train/<name> or val/<name>: val/r too
        raise ValueError(
            f"metric name {name!r} must look like 'train/<name>' or 'val/<name>' "
            "(test metrics belong to the evaluation's record)"
        )
    return name


MetricName = Annotated[str, PlainValidator(_check_metric_name)]


class MetricState(_Schema):
    """The newest value of every metric the run logged, by name (`train/<name>` or `val/<name>`)."""

    metrics: dict[MetricName, float | int]


class MetricRecord(_Schema):
    """One logged value, for the history (TrainState.metric_history)."""

    name: MetricName
    value: float
    step: NonNegativeInt


class CheckpointState(_Schema):
    """Where the run's checkpoints live (`checkpoint_dir`, the run directory holding step_*/, `last`
    and `best`) and how far the live state is from the newest one."""

    steps_since_last_checkpoint: NonNegativeInt
    checkpoint_dir: Path
    # beyond the seed
    best_metric: str = "val/pearson"
    best_value: float | None = None
    best_step: NonNegativeInt | None = None
    files: dict[str, str] = {}  # file name -> digest ("xxh3_128:<hex>") of the checkpoint this state is
    checkpoint_paths: list[Path] = []  # the run's checkpoints on disk when this state was written


class TrainState(_Schema):
    status: Status = "initialized"
    rng_state: RNGState
    optimizer_state: OptimizerState
    checkpoint_state: CheckpointState
    metric_state: MetricState
    meta_dataloader_state: MetaDataLoaderState
    model_state: ModelState
    # ---- beyond the seed: what exact resume and lineage need ----
    schema_version: int = SCHEMA_VERSION
    config: RunConfig
    config_hash: str
    stop_reason: StopReason | None = None  # why a run is `stopped`; None otherwise
    message: str = ""  # the why in words: the signal, the non-finite step, the error and its message
    epoch: Count = 0
    global_step: Count = 0
    samples_seen: Count = 0
    batches_drawn: dict[str, NonNegativeInt] = {}  # training batches drawn per dataset, over the whole run
    world_size: int = 1
    rank_rng_states: list[RNGState] = []  # ranks 1.. of a multi-process run (rank 0's is rng_state)
    # CPU thread count of the first attempt: resume must match
    num_threads: Annotated[int, Field(gt=0, le=1024)] | None = None
    data_version: str | None = None
    bad_validations: NonNegativeInt = 0  # for early stopping
    wandb_run_id: str | None = None
    wandb_run_path: str | None = None
    created_at: float = Field(default_factory=time.time)
    updated_at: float = Field(default_factory=time.time)
    _upgraded: bool = PrivateAttr(default=False)  # read from a schema-1 file
    # the metric history: in memory once read or logged; until then, the (file, digest) it is read from
    _history: list[MetricRecord] | None = PrivateAttr(default=None)
    _history_file: tuple[Path, str] | None = PrivateAttr(default=None)

    @property
    def metric_history(self) -> list[MetricRecord]:
        """Every logged value, in logging order. A checkpoint keeps it in metrics.jsonl, not in
        train_state.json: it is read (and its digest checked) on first use, not on every load."""
        if self._history is None:
            self._history = read_metric_history(*self._history_file) if self._history_file else []
        return self._history

    @metric_history.setter
    def metric_history(self, records: list[MetricRecord]) -> None:
        self._history, self._history_file = list(records), None

    # ---- derived, for reading ----

    @property
    def run_dir(self) -> Path:
        return self.checkpoint_state.checkpoint_dir

    @property
    def last_checkpoint(self) -> Path | None:
        """The newest checkpoint directory of this state; None before the first."""
        return self.model_state.last_model_path.parent if self.model_state.model_loaded else None

    @property
    def best_checkpoint(self) -> Path | None:
        """The best checkpoint directory (by `checkpoint_state.best_metric`); None before one."""
        if self.checkpoint_state.best_step is None or not self.model_state.model_loaded:
            return None
        best = self.model_state.best_model_path.parent
        return best if (best / STATE_FILE).exists() else None

    # ---- construction ----

    @classmethod
    def from_config(cls, config: RunConfig, run_dir: str | Path | None = None) -> TrainState:
        """A fresh run, status "initialized": nothing is built or written yet; train() starts it. The run
        directory is `checkpoint.dir/<name>-<config hash>` unless given."""
        from a2b_pipeline.runs import cli_run_dir  # runs.py names run directories

        h = config.config_hash()
        run = (Path(run_dir) if run_dir else cli_run_dir(config)).resolve()
        weights = [d.weight for d in config.data.datasets]
        return cls(
            config=config,
            config_hash=h,
            rng_state=RNGState.seeded(config.seed),
            model_state=ModelState(
                model_loaded=False,
                model_ram_size_bytes=0,
                model_dtype=torch.float32,
                model_device=torch.device("cpu"),
                best_model_path=run / "best" / MODEL_FILE,
                last_model_path=run / "last" / MODEL_FILE,
                architecture=config.model.name,
            ),
            optimizer_state=OptimizerState(
                last_step=0,
                moments_ram_size_bytes=0,
                moments_dtype=torch.float32,
                moments_device=torch.device("cpu"),
                moments_path=run / "last" / OPTIMIZER_FILE,
                name=config.optimizer.name,
                lr=config.optimizer.lr,
            ),
            meta_dataloader_state=MetaDataLoaderState(
                split="train",
                sampling_weights=weights,
                dataloader_states=[
                    DataLoaderState(last_batch_idx=-1, dataset=d.type, split="train", name=d.name)
                    for d in config.data.datasets
                ],
                seed=config.seed,
            ),
            metric_state=MetricState(metrics={}),
            checkpoint_state=CheckpointState(
                steps_since_last_checkpoint=0, checkpoint_dir=run, best_metric=config.checkpoint.metric
            ),
        )

    @classmethod
    def from_json(cls, text: str, source: str = STATE_FILE) -> TrainState:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{source}: not valid JSON ({e})") from None
        except RecursionError:
            raise CheckpointError(f"{source}: nested too deeply to be a train state") from None
        version = raw.get("schema_version", 1) if isinstance(raw, dict) else None
        if isinstance(version, int) and version > SCHEMA_VERSION:
            raise SchemaTooNewError(
                f"{source}: schema_version {version} is newer than this a2b_pipeline understands "
                f"({SCHEMA_VERSION}); upgrade a2b_pipeline to load it"
            )
        try:
            if version == 1:
                raw = _upgrade_v1(raw)
            inline = None
            if version in (1, 2):  # they kept the history in this file
                inline = raw.pop("metric_history", [])
                raw = {**raw, "schema_version": SCHEMA_VERSION}
            state = cls.model_validate(raw)
            state._upgraded = version == 1
            if inline is not None:
                state.metric_history = TypeAdapter(list[MetricRecord]).validate_python(inline)
        except ValidationError as e:
            raise CheckpointError(format_validation_error(e, source)) from None
        except (KeyError, TypeError, ValueError) as e:  # a schema-1 file missing what the upgrade needs
            raise CheckpointError(f"{source}: not a valid schema-1 state ({type(e).__name__}: {e})") from None
        except RecursionError:
            raise CheckpointError(f"{source}: nested too deeply to be a train state") from None
        actual = state.config.config_hash()
        if actual != state.config_hash:  # the config was edited after the checkpoint was written
            raise CheckpointError(
                f"{source}: config_hash {state.config_hash} does not match the config it holds ({actual}): "
                "edited after it was written; refused"
            )
        return state

    def to_json(self) -> str:
        return self.model_dump_json(indent=1)

    def snapshot(self) -> TrainState:
        """A copy that a background checkpoint write can serialise while the loop goes on changing this
        state: the containers the loop changes in place are copied; the config and the metric records,
        which nothing changes once made, are shared (a deep copy of a long run's metric history took
        ~0.2 s per checkpoint)."""
        ck = self.checkpoint_state
        snap = self.model_copy(
            update={
                "batches_drawn": dict(self.batches_drawn),
                "rank_rng_states": list(self.rank_rng_states),
                "metric_state": MetricState(metrics=dict(self.metric_state.metrics)),
                "checkpoint_state": ck.model_copy(
                    update={"files": dict(ck.files), "checkpoint_paths": list(ck.checkpoint_paths)}
                ),
            }
        )
        snap._history = list(self._history) if self._history is not None else None
        return snap

    @classmethod
    def from_checkpoint(cls, checkpoint_path: str | Path) -> TrainState:
        """Load a checkpoint directory, or a run directory's newest checkpoint that verifies (an older
        one when the newest is torn, corrupt or leads out of the run directory, as after a crash mid-write
        or a planted symlink). A step_* entry or pointer given directly must lead into its own run
        directory: one that leads into another run is refused, naming that run, before anything is read."""
        path = Path(checkpoint_path)
        if (path / STATE_FILE).exists():
            if STEP_DIR.match(path.name) or path.name in ("last", "best") or path.is_symlink():
                entry_inside(path.absolute().parent, path)
            return _load_verified(path)
        if not path.is_dir():
            raise CheckpointError(f"{path}: no such checkpoint or run directory")
        errors = []
        for ckpt in reversed(list_checkpoints(path)):
            try:
                entry_inside(path, ckpt)
                return _load_verified(ckpt)
            except SchemaTooNewError:
                raise
            except CheckpointError as e:
                errors.append(str(e))
        detail = "; ".join(errors) if errors else "it holds no step_* checkpoint"
        raise CheckpointError(f"{path}: no valid checkpoint ({detail})")

    # ---- writing ----

    def to_checkpoint(
        self, checkpoint_path: str | Path, tensors: dict[str, dict[str, torch.Tensor]] | None = None
    ) -> None:
        """Write this state as checkpoint directory `checkpoint_path`, atomically, with the digest of
        every file. The weight and optimizer files are `tensors` (file name -> tensors: what train()
        passes) or, without them, copies of the files this state names (verified against their digests);
        a state that names no weights is refused before anything is written. Once the write has succeeded
        this state describes the new checkpoint (its paths lead there); a failed write leaves it as it was."""
        path = Path(checkpoint_path).absolute()
        copies = {} if tensors is not None else self._files_to_copy(path)
        names = set(tensors or copies)
        ms, ck = self.model_state, self.checkpoint_state
        ema = path / EMA_FILE if EMA_FILE in names else None
        best_here = ck.best_step is not None and ck.best_step == self.global_step
        new = self.model_copy(
            update={
                "model_state": ms.model_copy(
                    update={
                        "model_loaded": True,
                        "last_model_path": path / MODEL_FILE,
                        "ema_path": ema,
                        "best_model_path": (ema or path / MODEL_FILE) if best_here else ms.best_model_path,
                    }
                ),
                "optimizer_state": self.optimizer_state.model_copy(
                    update={"moments_path": path / OPTIMIZER_FILE}
                ),
                "checkpoint_state": ck.model_copy(
                    update={
                        "checkpoint_dir": path.parent,
                        "steps_since_last_checkpoint": 0,
                        "checkpoint_paths": [p for p in ck.checkpoint_paths if p != path and p.exists()]
                        + [path],
                    }
                ),
                "updated_at": time.time(),
                "config_hash": self.config.config_hash(),  # checked on load: it must describe the config
            }
        )

        def state_json(files: dict[str, str]) -> bytes:
            new.checkpoint_state.files = files
            return new.to_json().encode()

        history = b"".join(r.__pydantic_serializer__.to_json(r) + b"\n" for r in self.metric_history)
        write_checkpoint_dir(path, state_json, tensors or {}, copies, {METRICS_FILE: history})
        for name in ("model_state", "optimizer_state", "checkpoint_state", "updated_at", "config_hash"):
            setattr(self, name, getattr(new, name))

    def _files_to_copy(self, dest: Path) -> dict[str, tuple[Path, str]]:
        """(source, digest) of each file of the checkpoint this state was loaded from or written as."""
        src = self.last_checkpoint
        if src is None:
            raise CheckpointError(
                f"{dest}: this TrainState names no model weights (model_state.model_loaded is False: it "
                "has not been trained or loaded from a checkpoint); train() it, or pass `tensors`"
            )
        files = self.checkpoint_state.files
        for needed in (MODEL_FILE, OPTIMIZER_FILE):
            if needed not in files:
                raise CheckpointError(f"{src}: {needed} is not listed in its {STATE_FILE}")
        # the history is written from memory: it may have grown since
        return {n: (checkpoint_file(src, n), d) for n, d in files.items() if n != METRICS_FILE}


# ---- loading ----


def load_tensors(ckpt_dir: str | Path, name: str, state: TrainState | None = None) -> dict[str, torch.Tensor]:
    """Read a safetensors file of a checkpoint after checking its digest against the state."""
    ckpt_dir = Path(ckpt_dir)
    state = state or TrainState.from_checkpoint(ckpt_dir)
    expected = state.checkpoint_state.files.get(name)
    file = checkpoint_file(ckpt_dir, name) if expected is not None else ckpt_dir / name
    return read_verified_tensors(file, expected, ckpt_dir / STATE_FILE)


def _load_verified(ckpt: Path) -> TrainState:
    state_file = ckpt / STATE_FILE
    state = TrainState.from_json(read_state_text(state_file), str(state_file))
    ckpt = ckpt.resolve()
    for name, digest in state.checkpoint_state.files.items():
        verify_file(checkpoint_file(ckpt, name), digest)  # only regular files inside it are read
    _rebase(state, ckpt)
    if METRICS_FILE in state.checkpoint_state.files:
        state._history_file = (ckpt / METRICS_FILE, state.checkpoint_state.files[METRICS_FILE])
    return state


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
    if state._upgraded and ms.model_loaded:  # schema 1 did not record sizes: read the files' headers
        ms.model_ram_size_bytes = tensor_bytes(ckpt / MODEL_FILE)[0]
        if OPTIMIZER_FILE in files:
            size, dtype = tensor_bytes(ckpt / OPTIMIZER_FILE)
            state.optimizer_state.moments_ram_size_bytes = size
            state.optimizer_state.moments_dtype = dtype or torch.float32


# ---- schema 1 -> 2 ----

_STATUS_V1 = {"created": "initialized", "running": "in_progress", "failed": "stopped"}


def _upgrade_v1(raw: dict[str, Any]) -> dict[str, Any]:
    """A schema-1 train_state.json (fields rng, model, optimizer, meta_loader, metrics, checkpoint,
    run_dir) as schema 2. Paths are filled in by _rebase once the directory is known. Long because it is
    one table from the old fields to the new, read top to bottom; splitting it would scatter the mapping."""
    import base64

    cfg = RunConfig.model_validate(raw["config"])
    run = Path(raw["run_dir"])
    ck = raw.get("checkpoint") or {}
    last = Path(ck.get("last_path") or run / "last")

    def rng(r: dict[str, Any], rank: int) -> dict[str, Any]:
        keys = r["numpy_keys"]
        # pydantic wrote bytes as URL-safe base64
        torch_states = {"cpu": list(base64.urlsafe_b64decode(r["torch_cpu"]))}
        for i, s in enumerate(r.get("torch_cuda") or []):
            torch_states[f"cuda:{i}"] = list(base64.urlsafe_b64decode(s))
        numpy = _numpy_bytes(keys, r["numpy_pos"], r["numpy_has_gauss"], r["numpy_cached_gaussian"])
        return {
            "seed": cfg.seed + rank,
            "torch_rng_state": torch_states,
            "numpy_rng_state": numpy,
            "python_rng_state": r["python"],
        }

    rngs = [rng(r, i) for i, r in enumerate(raw.get("rng") or [])] or [RNGState.seeded(cfg.seed).model_dump()]
    model, opt = raw.get("model"), raw.get("optimizer")
    files = ck.get("files") or {}
    out: dict[str, Any] = {
        k: raw[k]
        for k in (
            "config",
            "config_hash",
            "message",
            "epoch",
            "global_step",
            "samples_seen",
            "batches_drawn",
            "world_size",
            "num_threads",
            "data_version",
            "bad_validations",
            "wandb_run_id",
            "wandb_run_path",
            "created_at",
            "updated_at",
        )  # fmt: skip
        if k in raw
    }
    status = raw.get("status", "created")
    out["status"] = _STATUS_V1.get(status, status)
    if status == "failed":
        out["stop_reason"] = "error"
    out["rng_state"], out["rank_rng_states"] = rngs[0], rngs[1:]
    out["model_state"] = {
        "model_loaded": model is not None and MODEL_FILE in files,
        "model_ram_size_bytes": 0,  # filled from the file header below, where it exists
        "model_dtype": (model or {}).get("dtype", "torch.float32"),
        "model_device": (model or {}).get("device", "cpu"),
        "best_model_path": str(run / "best" / MODEL_FILE),
        "last_model_path": str(last / MODEL_FILE),
        "architecture": (model or {}).get("name", cfg.model.name),
        "ema_path": str(last / model["ema_file"]) if model and model.get("ema_file") else None,
        "num_parameters": (model or {}).get("num_parameters", 0),
        "input_shape": (model or {}).get("input_shape"),
        "output_shape": (model or {}).get("output_shape"),
    }
    out["optimizer_state"] = {
        "last_step": raw.get("global_step", 0),
        "moments_ram_size_bytes": 0,
        "moments_dtype": "torch.float32",
        "moments_device": (model or {}).get("device", "cpu"),
        "moments_path": str(last / OPTIMIZER_FILE),
        **{k: v for k, v in (opt or {}).items() if k != "file"},
    }
    if not opt:
        out["optimizer_state"].update(name=cfg.optimizer.name, lr=cfg.optimizer.lr)
    ml = raw.get("meta_loader")
    types = {d.name: d.type for d in cfg.data.datasets}
    if ml:
        loaders = ml.get("loaders") or [{"name": d.name} for d in cfg.data.datasets]
        out["meta_dataloader_state"] = {
            "split": ml["split"],
            "sampling_weights": ml["weights"],
            "dataloader_states": [
                {
                    "last_batch_idx": c - 1,
                    "dataset": types.get(d.get("name"), cfg.data.datasets[i].type),
                    "split": ml["split"],
                    "name": d.get("name"),
                    "num_batches": d.get("num_batches"),
                }
                for i, (c, d) in enumerate(zip(ml["consumed"], loaders, strict=True))
            ],
            **{k: ml[k] for k in ("format", "epoch", "seed", "generator_state", "draw_block", "draw_offset")},
        }
    else:
        fresh = TrainState.from_config(cfg, run)
        out["meta_dataloader_state"] = fresh.meta_dataloader_state.model_dump()
    history = [m for m in raw.get("metrics") or [] if not m["name"].startswith("test/")]
    out["metric_history"] = history
    out["metric_state"] = {"metrics": {m["name"]: m["value"] for m in history}}
    out["checkpoint_state"] = {
        "steps_since_last_checkpoint": 0,
        "checkpoint_dir": str(run),
        **{k: ck[k] for k in ("best_metric", "best_value", "best_step", "files") if k in ck},
    }
    return out  # sizes, which the first layout did not record, are read from the files by _rebase
