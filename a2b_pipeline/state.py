"""TrainState: the checkpoint schema and the one source of truth for a run.

The classes and fields of the seed (the founding spec: RNGState, ModelState, DataLoaderState,
MetaDataLoaderState, MetricState, OptimizerState, CheckpointState, TrainState, with from_config,
from_checkpoint and to_checkpoint) are here under the seed's names and types; what a bit-exact resume needs
beyond them (the RunConfig, global step, epoch, every rank's RNG, the draw generator, file digests, the
metric history, the wandb run id) sits beside them in fields of its own. A checkpoint is a directory
written atomically (checkpoint/directory.py):

    step_000000120/
      model.safetensors        weights (the uncompiled, unwrapped module's keys)
      optimizer.safetensors    optimizer moments; the rest of the optimizer state is JSON in train_state.json
      ema.safetensors          EMA weights, when enabled
      metrics.jsonl            the metric history, one logged value a line: long runs log millions, and
                               train_state.json, which every load parses, stays small without them
      train_state.json         this schema, written last: the commit marker, with a digest of every file

This module is the schema; the disk work of from_checkpoint, to_checkpoint and the metric history is
checkpoint/store.py's, and the readers of older schemas (1 and 2, converted on load) are
checkpoint/legacy.py's. Both build on these classes, so the methods import them when called.
"""

from __future__ import annotations

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

from a2b_pipeline.checkpoint.directory import (
    MODEL_FILE,
    OPTIMIZER_FILE,
    STATE_FILE,
    CheckpointError,
    SchemaTooNewError,
)
from a2b_pipeline.configs import DatasetType, RunConfig, format_validation_error

SCHEMA_VERSION = 3
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
            numpy_rng_state=numpy_rng_bytes(keys, pos, has_gauss, cached),
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
            numpy_rng_state=numpy_rng_bytes(*np.random.get_state()[1:]),
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


def numpy_rng_bytes(keys: Any, pos: int, has_gauss: int, cached: float) -> bytes:
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
            from a2b_pipeline.checkpoint.store import read_metric_history

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
            inline = None
            if version in (1, 2):
                from a2b_pipeline.checkpoint import legacy

                raw, inline = legacy.upgrade(raw, version)
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
        from a2b_pipeline.checkpoint import store  # the disk work; it builds on these classes

        return store.load_state(checkpoint_path)

    # ---- writing ----

    def to_checkpoint(
        self, checkpoint_path: str | Path, tensors: dict[str, dict[str, torch.Tensor]] | None = None
    ) -> None:
        """Write this state as checkpoint directory `checkpoint_path`, atomically, with the digest of
        every file. The weight and optimizer files are `tensors` (file name -> tensors: what train()
        passes) or, without them, copies of the files this state names (verified against their digests);
        a state that names no weights is refused before anything is written. Once the write has succeeded
        this state describes the new checkpoint (its paths lead there); a failed write leaves it as it was."""
        from a2b_pipeline.checkpoint import store

        store.save_state(self, checkpoint_path, tensors)
