"""RunConfig: the whole experiment as data (pydantic v2). YAML in, YAML out.

Every part forbids unknown keys so that a typo fails loudly before training starts.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import reprlib
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    SerializeAsAny,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)

from a2b_pipeline import plugins
from a2b_pipeline.files import FileRefusedError, open_regular
from a2b_pipeline.security import literal_secret, redact


class Strict(BaseModel):
    """Every config part: unknown keys fail, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class PathField:
    """Marks a config field that holds a local path or a URL (`Annotated[str, PathField()]`), so code that
    moves a config elsewhere (relative paths under a data root) finds every such field by its type."""

    def __repr__(self) -> str:
        return "PathField()"


ConfigPath = Annotated[str, PathField()]
OptionalConfigPath = Annotated[str | None, PathField()]


def map_paths(model: BaseModel, fn: Callable[[str], str]) -> None:
    """Apply `fn` to every `PathField` value in `model` and its nested models and lists, in place
    (assignments are validated). None values stay None."""
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        if any(isinstance(m, PathField) for m in info.metadata):
            if value is not None:
                setattr(model, name, fn(value))
        elif isinstance(value, BaseModel):
            map_paths(value, fn)
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, BaseModel):
                    map_paths(item, fn)


def _known_corpus_type(name: str) -> str:
    if name not in plugins.CORPUS_TYPES.names():
        raise ValueError(f"unknown dataset type {name!r}; known: {', '.join(plugins.CORPUS_TYPES.names())}")
    return name


# The name of a corpus type registered in a2b_pipeline.data.corpora (synthetic, manifest, hku956, pmemo2019,
# or one a plugin adds): one module per type, so adding a type edits nothing here.
DatasetType = Annotated[str, AfterValidator(_known_corpus_type)]


# Bounds that keep a config runnable: values past them validate as numbers but can't be seeded, allocated
# or iterated over in a useful time (#16). They are far above anything a model of this kind uses.
Seed = Annotated[int, Field(gt=-(2**62), lt=2**62)]  # torch takes 64-bit seeds (+ rank, + offsets)
Finite = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
Count = Annotated[int, Field(gt=0, le=1024)]  # layers, levels, heads, multipliers
Width = Annotated[int, Field(gt=0, le=65536)]  # channels, hidden sizes, kernel sizes
Beta = Annotated[float, Field(ge=0.0, lt=1.0)]


def no_literal_secret(v: str | None) -> str | None:
    """A path field's validator: the config is persisted (checkpoints, Dagster records, wandb), so a
    credential goes in as a reference."""
    if v is not None and literal_secret(v):
        raise ValueError(
            f"{redact(v)} carries a credential (userinfo or a token/signature parameter), which would be "
            "written into every checkpoint and record: name it as ${ENV_VAR} (filled in from the "
            "environment when the file is opened) or use the storage's credential chain (AWS_*)"
        )
    return v


# The options every dataset carried, whatever its type, before each corpus type owned its own (the
# synthetic generator's settings, HKU956's audio_dir and signal_rates), at their defaults. A dataset of a
# type without them ignores them, as it always did (a stored checkpoint, an old config, or a dataset whose
# `type` an override changed spells them out), and hashes (names its run directory) with these values, as
# it did when they were at their defaults.
SHARED_OPTIONS_OF_OLD: dict[str, Any] = {
    "synthetic": {"subjects": 6, "recordings_per_subject": 3, "seconds": 30.0, "seed": 0},
    "audio_dir": None,
    "signal_rates": {},
}


class DatasetConfig(Strict):
    """One dataset of the mixture. Its corpus type (`type`) may add options of its own: a subclass of this
    class, named by the type's `CorpusType.config`, validates them. A dataset given as data (YAML, a dict)
    is validated by its type's class; `DatasetConfig(type=...)` builds one of that class too."""

    name: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_.+-]+$")]
    type: DatasetType = "manifest"
    manifest: OptionalConfigPath = None  # path or URL of a manifest (manifest/synthetic types)
    root: OptionalConfigPath = None  # corpus root: directory or fsspec URL (synthetic/hku956/pmemo2019)
    weight: NonNegativeFloat = 1.0

    def __new__(cls, *args: Any, **data: Any) -> DatasetConfig:
        own = _own_class(data.get("type", "manifest")) if cls is DatasetConfig else None
        return super().__new__(own or cls)

    @model_validator(mode="wrap")
    @classmethod
    def _by_type(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> DatasetConfig:
        if cls is DatasetConfig and isinstance(data, dict):
            own = _own_class(data.get("type", "manifest"))
            if own is not None:
                return own.model_validate(data)
        if isinstance(data, dict):
            data = {
                k: v
                for k, v in data.items()
                if not (k in SHARED_OPTIONS_OF_OLD and k not in cls.model_fields)
            }
        return handler(data)

    @field_validator("weight")
    @classmethod
    def _finite_weight(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError(f"weight must be a finite number >= 0, got {v}")
        return v

    _no_literal_secret = field_validator("manifest", "root")(no_literal_secret)

    @model_validator(mode="after")
    def _has_source(self) -> DatasetConfig:
        sources = plugins.CORPUS_TYPES.get(self.type).sources
        if not any(getattr(self, f) for f in sources):
            need = " or ".join(f"`{f}`" for f in sources)
            raise ValueError(f"dataset {self.name!r} of type {self.type!r} needs {need}")
        return self


def _own_class(type_name: Any) -> type[DatasetConfig] | None:
    """The config class of the corpus type called `type_name` when it has options of its own; None for an
    unknown type (the `type` field reports it) or one that uses DatasetConfig itself."""
    if not isinstance(type_name, str) or type_name not in plugins.CORPUS_TYPES.names():
        return None
    own = plugins.CORPUS_TYPES.get(type_name).config
    return None if own is DatasetConfig else own


class SplitConfig(Strict):
    """How recordings are split into train/val/test (data/splits.py): `group_by` names what must not be in
    two splits. `subject` keeps listeners apart; `stimulus` keeps songs apart (an audio model could
    otherwise memorise a song heard by many listeners); `subject_and_stimulus` keeps both apart and drops
    the recordings that would leak (counted and reported)."""

    group_by: Literal["subject", "stimulus", "subject_and_stimulus"] = "subject"
    # Grouped k-fold cross-validation (`a2b cv`): the groups are dealt into `folds` folds; a run with `fold`
    # set tests on that fold's groups (test_fraction is then unused) and takes val (val_fraction) from the
    # other folds' groups. `folds` without `fold`: the ordinary split (`a2b train`); `a2b cv` sets `fold`.
    folds: Annotated[int, Field(ge=2)] | None = None
    fold: NonNegativeInt | None = None

    @model_validator(mode="after")
    def _fold_in_range(self) -> SplitConfig:
        if self.fold is not None and (self.folds is None or self.fold >= self.folds):
            raise ValueError(f"split.fold={self.fold} needs split.folds > {self.fold} (got {self.folds})")
        return self


class WeightMilestone(Strict):
    """From `step` on, the MetaDataLoader draws with `weights` (one per dataset)."""

    step: NonNegativeInt
    weights: list[NonNegativeFloat]


class DataConfig(Strict):
    datasets: Annotated[list[SerializeAsAny[DatasetConfig]], Field(min_length=1)]
    batch_size: Annotated[int, Field(gt=0, le=65536)] = 16
    num_workers: Annotated[int, Field(ge=0, le=256)] = 0
    channels: Annotated[list[str], Field(min_length=1)] = ["eda"]
    sample_rate: Annotated[int, Field(ge=1000, le=768000)] = 16000
    n_mels: Annotated[int, Field(gt=0, le=1024)] = 32
    frame_rate: Annotated[float, Field(gt=0.0, le=1000.0)] = 50.0  # log-mel frames per second
    target_rate: Annotated[float, Field(gt=0.0, le=10000.0)] = 4.0  # biosignal samples per second
    window_seconds: Annotated[float, Field(gt=0.0, le=3600.0)] = 8.0
    hop_seconds: Annotated[float, Field(gt=0.0, le=3600.0)] = 4.0
    normalize: Literal["global", "subject", "none"] = "subject"
    val_fraction: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.2
    test_fraction: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.2
    split: SplitConfig = SplitConfig()
    on_bad_recording: Literal["error", "skip"] = "error"
    duration_tolerance_seconds: NonNegativeFloat = 1.0
    cache_dir: OptionalConfigPath = None  # remote downloads and feature cache; default: ~/.cache/a2b
    # After loading the data, prune the cache (least recently used first) down to this size; entries used
    # in the last hour stay. None: never prune (`a2b cache --max-gb` prunes by hand).
    cache_max_gb: PositiveFloat | None = None
    weight_schedule: list[WeightMilestone] = []
    # Manifests are data from elsewhere: a row's paths must stay under the manifest's folder (no absolute
    # paths, `..` or symlinks out) unless this is true; under Dagster the data root confines
    # checkpoint.dir and cache_dir likewise.
    allow_outside_paths: bool = False
    # Schemes a manifest row may name as an absolute URL (e.g. [s3, https]); none by default. A relative
    # path under a remote manifest is not an absolute URL: it stays under the manifest's folder.
    url_schemes: list[Annotated[str, Field(pattern=r"^[a-z][a-z0-9+.-]*$")]] = []

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError(
                f"val_fraction + test_fraction must be < 1, got {self.val_fraction} + {self.test_fraction}"
            )
        names = [d.name for d in self.datasets]
        if len(set(names)) != len(names):
            raise ValueError(f"dataset names must be unique, got {names}")
        if sum(d.weight for d in self.datasets) <= 0:
            raise ValueError("datasets.*.weight: all weights are zero; at least one must be > 0")
        for i, m in enumerate(self.weight_schedule):
            if len(m.weights) != len(self.datasets):
                raise ValueError(
                    f"weight_schedule.{i}.weights has {len(m.weights)} weights "
                    f"for {len(self.datasets)} datasets"
                )
            if sum(m.weights) <= 0 or not all(math.isfinite(w) for w in m.weights):
                raise ValueError(f"weight_schedule.{i}.weights must be finite and not all zero")
        steps = [m.step for m in self.weight_schedule]
        if steps != sorted(steps):
            raise ValueError(f"weight_schedule steps must increase, got {steps}")
        if len(set(self.channels)) != len(self.channels):
            raise ValueError(f"channels must be unique, got {self.channels}")
        self._check_grid()
        return self

    def _check_grid(self) -> None:
        """Rates and window sizes that validate one by one but can't make a window, or make too many."""
        w = self.window_seconds
        if round(w * self.target_rate) < 1:
            raise ValueError(
                f"target_rate={self.target_rate:g} Hz gives no target sample in a window "
                f"of window_seconds={w:g}"
            )
        if round(w * self.frame_rate) < 1:
            raise ValueError(
                f"frame_rate={self.frame_rate:g} gives no frame in a window of window_seconds={w:g}"
            )
        if self.frame_rate > self.sample_rate / 2:
            raise ValueError(
                f"frame_rate={self.frame_rate:g} is above half of sample_rate={self.sample_rate}: "
                "frames would be less than two samples apart"
            )
        finest = 1.0 / max(self.frame_rate, self.target_rate)
        if self.hop_seconds < finest * (1 - 1e-9):
            # a finer hop repeats the same frames and targets, and on long recordings never ends
            raise ValueError(
                f"hop_seconds={self.hop_seconds:g} is finer than the finest grid step ({finest:g} s at "
                f"frame_rate={self.frame_rate:g}, target_rate={self.target_rate:g})"
            )
        per_batch = self.batch_size * round(w * self.frame_rate) * self.n_mels
        if per_batch > 2**28:  # one batch of features over 1 GiB: not a config this trainer can hold
            raise ValueError(
                f"a batch of features is {per_batch:.3g} values (batch_size={self.batch_size} x "
                f"{round(w * self.frame_rate)} frames x n_mels={self.n_mels}); the limit is 2**28"
            )

    def weights_at(self, step: int) -> list[float]:
        weights = [d.weight for d in self.datasets]
        for m in self.weight_schedule:
            if step >= m.step:
                weights = list(m.weights)
        return weights


# ---- models: one config class per model, chosen by `name` (plugins.MODELS) ----


class FreezeRule(Strict):
    """Parameters whose names start with `prefix` are frozen until step `until_step`."""

    prefix: str
    until_step: NonNegativeInt | None = None  # None: frozen for the whole run


class ModelConfig(Strict):
    """A model's settings. A model is its config class, a subclass whose `name` (a Literal with a default)
    is the model's, plus its architecture: `architecture` is the nn.Module class (or "module:Class", imported
    only when a model is built), built as `Class(cfg, models.ModelIO)`. Defining the subclass registers it
    in plugins.MODELS. A new model is one module holding both, with `MODEL = <its config class>`: under
    a2b_pipeline/models/ it is found by its name, elsewhere by the `a2b_pipeline.models` entry point group
    (`name = "package.module"`). The shipped models' classes below name their architectures by string, so
    validating a config never imports torch. A model given as data (YAML, a dict) is validated by the class
    its `name` names."""

    name: str
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.1
    freeze: list[FreezeRule] = []
    architecture: ClassVar[str | Callable[..., Any]]  # "package.module:Class", or the class itself

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if isinstance(cls.model_fields["name"].default, str):
            plugins.MODELS.register(cls)

    @model_validator(mode="wrap")
    @classmethod
    def _by_name(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> ModelConfig:
        if cls is ModelConfig and isinstance(data, dict) and "name" in data:
            name = data["name"]
            if not isinstance(name, str) or name not in plugins.MODELS.names():
                raise ValueError(f"unknown model {name!r}; known: {', '.join(plugins.MODELS.names())}")
            try:
                return plugins.MODELS.get(name).model_validate(data)
            except ValidationError as e:  # located under the model's name, as a tagged union does
                errors = [{**err, "loc": (name, *err["loc"])} for err in e.errors(include_url=False)]
                raise ValidationError.from_exception_data(e.title, errors) from None  # type: ignore[arg-type]
        return handler(data)


class ConvGRUConfig(ModelConfig):
    name: Literal["conv_gru"] = "conv_gru"
    architecture = "a2b_pipeline.models.conv_gru:ConvGRU"
    conv_channels: Width = 64
    hidden: Width = 64
    layers: Count = 1
    bidirectional: bool = False


class TCNConfig(ModelConfig):
    name: Literal["tcn"] = "tcn"
    architecture = "a2b_pipeline.models.tcn:TCN"
    channels: Width = 64
    levels: Annotated[int, Field(gt=0, le=32)] = 4  # dilation 2**level
    kernel_size: Width = 3


class TransformerConfig(ModelConfig):
    name: Literal["transformer"] = "transformer"
    architecture = "a2b_pipeline.models.transformer:Transformer"
    d_model: Width = 64
    heads: Count = 4
    layers: Count = 2
    ff_mult: Count = 2

    @model_validator(mode="after")
    def _heads_divide(self) -> TransformerConfig:
        if self.d_model % self.heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by heads ({self.heads})")
        return self


class PretrainedEncoderConfig(ModelConfig):
    """A frozen audio encoder loaded from a local safetensors file, plus a trained head."""

    name: Literal["pretrained_encoder"] = "pretrained_encoder"
    architecture = "a2b_pipeline.models.pretrained_encoder:PretrainedEncoderModel"
    weights: ConfigPath  # local .safetensors with the encoder's weights; nothing is fetched
    encoder_channels: Width = 64
    encoder_layers: Count = 3
    hidden: Width = 64
    freeze_encoder: bool = True


HeadConfig = Annotated[ConvGRUConfig | TCNConfig | TransformerConfig, Field(discriminator="name")]


class FinetuneConfig(Strict):
    """Fine-tuning an `hf_encoder`'s encoder: the encoder runs in every step (no embedding cache). Every
    option is a pure function of the step, so a resume continues bit for bit."""

    unfreeze_top_k: Annotated[int, Field(ge=0, le=1024)] = 0  # top transformer layers trained; 0: none
    after_step: NonNegativeInt = 0  # the top k layers stay frozen before this optimizer step
    # The encoder's own learning rate and linear warm-up (counted from after_step); None: optimizer.lr
    lr: Annotated[float, Field(gt=0.0, allow_inf_nan=False)] | None = None
    warmup_steps: NonNegativeInt = 0


class HFEncoderConfig(ModelConfig):
    """A pretrained audio encoder from Hugging Face `transformers` (`pip install -e '.[encoders]'`), its
    hidden states mapped onto the frame grid (data.frame_rate) and fed to a small sequence head."""

    name: Literal["hf_encoder"] = "hf_encoder"
    architecture = "a2b_pipeline.models.hf_encoder:HFEncoderModel"
    # A hub id (`facebook/wav2vec2-base`: needs `revision`, a commit) or a local directory saved with
    # save_pretrained (model + feature extractor). Not a PathField: a hub id must not be rebased under a
    # data root, so a local directory is absolute or relative to the working directory.
    source: Annotated[str, Field(min_length=1)]
    revision: Annotated[str, Field(pattern=r"^[0-9a-f]{40}$")] | None = None
    # The model's own Python code from its repository runs on this machine (MERT needs it): only for
    # sources you trust, at a pinned revision.
    trust_remote_code: bool = False
    # One layer's hidden states (0: the embeddings, -1: the last) or `weighted`: a learned softmax-weighted
    # sum of all layers (the SUPERB / MARBLE probe)
    layer: int | Literal["weighted"] = "weighted"
    # Long audio is encoded in chunks of chunk_seconds overlapping by overlap_seconds (bounded memory);
    # fixed-input encoders (AST, Whisper, CLAP) take at most their input length
    chunk_seconds: Annotated[float, Field(gt=0.0, le=600.0)] = 10.0
    overlap_seconds: Annotated[float, Field(ge=0.0, le=60.0)] = 1.0
    # bf16: the encoder's forward runs under bfloat16 autocast (its weights stay float32, so the optimizer
    # steps them exactly), the head in float32; frozen embeddings are then computed (and cached) in bf16
    encoder_precision: Literal["fp32", "bf16"] = "fp32"
    head: HeadConfig = ConvGRUConfig(conv_channels=64, hidden=64)
    finetune: FinetuneConfig | None = None  # None: frozen, embeddings computed once and cached

    @model_validator(mode="after")
    def _check(self) -> HFEncoderConfig:
        if self.overlap_seconds >= self.chunk_seconds:
            raise ValueError(
                f"overlap_seconds ({self.overlap_seconds:g}) must be less than chunk_seconds "
                f"({self.chunk_seconds:g})"
            )
        local = Path(self.source).expanduser().is_dir() or self.source.startswith((".", "/", "~"))
        if not local and self.revision is None:
            raise ValueError(
                f"source {self.source!r} is a hub id: pin `revision` (a 40-hex commit) so the weights "
                "can't change under the run, or give a local directory"
            )
        return self


class OptimizerConfig(Strict):
    name: Literal["adamw", "sgd", "adam"] = "adamw"
    lr: Annotated[float, Field(gt=0.0, allow_inf_nan=False)] = 1e-3  # inf would pass `PositiveFloat`
    weight_decay: Finite = 0.0
    betas: tuple[Beta, Beta] = (0.9, 0.999)
    momentum: Finite = 0.9  # sgd only
    eps: Annotated[float, Field(gt=0.0, allow_inf_nan=False)] = 1e-8


class SchedulerConfig(Strict):
    name: Literal["constant", "cosine", "linear", "onecycle", "plateau"] = "cosine"
    warmup_steps: NonNegativeInt = 0
    min_lr_ratio: Annotated[float, Field(ge=0.0, le=1.0)] = 0.1
    plateau_factor: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.5
    plateau_patience: NonNegativeInt = 2  # in validations


class LossTerm(Strict):
    name: Literal["mse", "l1", "huber", "ccc", "pearson"]
    weight: NonNegativeFloat = 1.0


class LossConfig(Strict):
    terms: Annotated[list[LossTerm], Field(min_length=1)] = [LossTerm(name="mse")]
    channel_weights: list[NonNegativeFloat] | None = None
    huber_delta: PositiveFloat = 1.0


class TrainConfig(Strict):
    max_steps: PositiveInt | None = None  # optimizer steps; None: run num_epochs
    num_epochs: PositiveInt | None = 10
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    grad_accum_steps: PositiveInt = 1
    grad_clip: PositiveFloat | None = 1.0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    compile: bool = False
    # CPU threads; fixed so a resume is bit-exact
    num_threads: Annotated[int, Field(gt=0, le=1024)] | None = None
    log_every_n_steps: PositiveInt = 10
    val_every_n_steps: PositiveInt | None = None  # None: validate at the end of each epoch
    early_stopping_patience: NonNegativeInt | None = None  # in validations without improvement
    ema_decay: Annotated[float, Field(gt=0.0, lt=1.0)] | None = None
    loss: LossConfig = LossConfig()
    progress_bar: bool = True
    deterministic: bool = True

    @model_validator(mode="after")
    def _has_end(self) -> TrainConfig:
        if self.max_steps is None and self.num_epochs is None:
            raise ValueError("train: set max_steps or num_epochs (or both)")
        return self


class CheckpointConfig(Strict):
    dir: ConfigPath = "runs"  # run directories are created under it
    every_n_steps: PositiveInt | None = None  # None: at each validation
    keep_last: PositiveInt = 2
    metric: str = "val/pearson"
    mode: Literal["max", "min"] = "max"
    # Write in a background thread: the loop waits only for a host copy of the tensors (and for the
    # previous write, if it is still running when the next is due). The copy costs host memory.
    async_write: bool = True

    @field_validator("metric")
    @classmethod
    def _metric_name(cls, v: str) -> str:
        if not v.startswith("val/"):
            raise ValueError(f"checkpoint.metric must be a validation metric 'val/<name>', got {v!r}")
        return v


class TrackingConfig(Strict):
    wandb_mode: Literal["offline", "online", "disabled"] = "offline"
    project: str = "a2b"
    entity: str | None = None
    run_name: str | None = None
    tags: list[str] = []


# How a run is carried out, not one bit of what it computes: config_hash leaves these out.
NOT_HASHED: dict[str, Any] = {"checkpoint": {"async_write"}, "data": {"cache_max_gb"}}
# Settings added after runs existed, as dotted paths ("*": every list item): hashed only when set to
# something other than their default, so the configs that don't use them keep their hashes (and run
# directories).
HASHED_UNLESS_DEFAULT = (
    "data.split",
    "data.datasets.*.synthetic.stimuli",
    "data.allow_outside_paths",
    "data.url_schemes",
)


def drop_defaults(dump: Any, model: Any, path: list[str]) -> None:
    """Remove `path` from `dump` (model.model_dump) where the model's value there is the field's default."""
    if isinstance(model, list):
        for d, m in zip(dump, model, strict=True):
            drop_defaults(d, m, path[1:])
        return
    name = path[0]
    if name not in type(model).model_fields:  # an option of another corpus type (or model) than this one's
        return
    if len(path) == 1:
        default = type(model).model_fields[name].get_default(call_default_factory=True)
        if getattr(model, name) == default:
            dump.pop(name, None)
        return
    drop_defaults(dump[name], getattr(model, name), path[1:])


def with_run_settings(cfg: RunConfig, source: RunConfig) -> RunConfig:
    """`cfg` (a resumed run's) with the NOT_HASHED settings of `source` (the config given now): they
    don't change the run's identity, so the newest say goes."""
    return cfg.model_copy(
        update={
            section: getattr(cfg, section).model_copy(
                update={name: getattr(getattr(source, section), name) for name in names}
            )
            for section, names in NOT_HASHED.items()
        }
    )


class RunConfig(Strict):
    name: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_.+-]+$")] = "run"
    seed: Seed = 0
    data: DataConfig
    model: SerializeAsAny[ModelConfig] = ConvGRUConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    train: TrainConfig = TrainConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    tracking: TrackingConfig = TrackingConfig()

    @model_validator(mode="after")
    def _cross_checks(self) -> RunConfig:
        cw = self.train.loss.channel_weights
        if cw is not None and len(cw) != len(self.data.channels):
            raise ValueError(
                f"train.loss.channel_weights has {len(cw)} weights for {len(self.data.channels)} channels"
            )
        return self

    def config_hash(self) -> str:
        """sha256 of the canonical JSON: the identity of an experiment. Settings that change how a run is
        carried out but not one bit of what it computes are left out, so toggling them continues the same
        run (and adding them kept the hashes, and run directories, of existing configs)."""
        dump = self.model_dump(mode="json", exclude=NOT_HASHED)
        for path in HASHED_UNLESS_DEFAULT:
            drop_defaults(dump, self, path.split("."))
        for ds in dump["data"]["datasets"]:
            for key, default in SHARED_OPTIONS_OF_OLD.items():
                ds.setdefault(key, default)
        blob = json.dumps(dump, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


class ConfigError(ValueError):
    """A config that can't be used; the message names each bad field and value."""


# Reprs in messages are built bounded: the full repr of a value from an untrusted file (a YAML alias bomb,
# a deep JSON) can take gigabytes before it would be cut.
_SHORT = reprlib.Repr()  # Python 3.11: limits are attributes, not arguments
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother, _SHORT.maxlong = 3, 60, 60, 40
_SHORT.maxdict = _SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxset = 6


def short_repr(value: Any, limit: int = 80) -> str:
    """repr() for messages: bounded in depth, items and length, whatever the value."""
    try:
        shown = _SHORT.repr(value)
    except Exception:  # a repr that fails (or recurses): the type is enough
        shown = f"<{type(value).__name__}>"
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


def format_validation_error(err: ValidationError, source: str = "config") -> str:
    lines = [f"{source}: {err.error_count()} invalid field(s)"]
    for e in err.errors()[:50]:
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"][:300]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (typo?)"
        value = e.get("input")
        value = redact(value) if isinstance(value, str) else value  # a URL's credentials are never shown
        shown = redact(short_repr(value)) if not isinstance(value, dict) else "{...}"
        lines.append(f"  {loc}: {msg} (got {shown})")
    if err.error_count() > 50:
        lines.append(f"  ... and {err.error_count() - 50} more")
    return "\n".join(lines)


MAX_CONFIG_BYTES = 1 << 20  # a run config is a few KB
MAX_CONFIG_VALUES = 100_000  # scalars + containers after YAML aliases are expanded


def check_expanded_size(raw: Any, source: str, limit: int = MAX_CONFIG_VALUES) -> None:
    """Refuse a loaded YAML document whose values, counted as validation would visit them (an alias counts
    each time it is used), exceed `limit`: a 2 KB alias bomb expands to billions, and a recursive alias never
    ends. Counting stops at the limit, so this is cheap whatever the document."""
    seen = 0
    stack = [raw]
    while stack:
        node = stack.pop()
        seen += 1
        if seen > limit:
            raise ConfigError(
                f"{source}: more than {limit} values once YAML aliases are expanded "
                "(an alias bomb or a recursive alias?); a run config is much smaller"
            )
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list | tuple):
            stack.extend(node)


def _parse_scalar(text: str, item: str = "") -> Any:
    # YAML gives the natural types: 1e-3 -> float, true -> bool, [a, b] -> list, null -> None
    if text == "":
        return ""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or type(e).__name__
        raise ConfigError(
            f"override {short_repr(item, 120)}: the value is not valid YAML ({problem}); "
            "quote strings that contain ':', '[' or '{'"
        ) from None
    check_expanded_size(value, f"override {short_repr(item, 120)}")
    return value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `dotted.key=value` overrides; list items are addressed by index."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like dotted.key=value")
        key, value = item.split("=", 1)
        set_dotted(raw, key, _parse_scalar(value, item))
    return raw


def set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    """raw[a][b][c] = value for key "a.b.c", creating mappings on the way; list items by index."""
    parts = key.strip().split(".")
    node: Any = raw
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            idx = _index(part, node, ".".join(parts[: i + 1]))
            node = node[idx]
        else:
            node = node.setdefault(part, {})
            if not isinstance(node, dict | list):
                raise ConfigError(f"override {key!r}: {'.'.join(parts[: i + 1])} is not a mapping")
    last = parts[-1]
    if isinstance(node, list):
        node[_index(last, node, key)] = value
    else:
        node[last] = value


def _index(part: str, node: list, where: str) -> int:
    try:
        idx = int(part)
    except ValueError:
        raise ConfigError(f"override: {where} indexes a list, use a number") from None
    if not -len(node) <= idx < len(node):
        raise ConfigError(f"override: {where} is out of range (list has {len(node)} items)")
    return idx


def read_yaml_mapping(path: Path, what: str = "config file", *, empty_ok: bool = False) -> dict[str, Any]:
    """A YAML file whose top level is a mapping (`empty_ok`: an empty file reads as {}); ConfigError naming
    `what` and the file otherwise."""
    raw = parse_yaml(read_config_text(path, what), str(path))  # bounded: size, encoding, alias expansion
    if not raw and empty_ok:  # an empty file (or an empty document) is an empty config
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(raw).__name__}")
    return raw


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read YAML, apply overrides, validate. Relative paths in it are relative to the working directory."""
    path = Path(path)
    raw = apply_overrides(read_yaml_mapping(path, empty_ok=True), overrides or [])
    try:
        cfg = RunConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, str(path))) from None
    return cfg


def read_config_text(path: Path, what: str = "config file") -> str:
    """A config file's text, or a ConfigError that names the file: missing, a directory, unreadable, too big
    for a config, not UTF-8."""
    try:
        with open_regular(path, follow_symlinks=True) as f:  # a FIFO would block in open(): refused
            blob = f.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a {what}") from None
    except FileRefusedError as e:
        raise ConfigError(f"{e} (a {what} must be a regular file)") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config ({e.strerror or e})") from None
    if len(blob) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes; not a run config")
    try:
        return blob.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        bad = blob[e.start : e.start + 1]
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}: {bad!r})") from None


def parse_yaml(text: str, source: str) -> Any:
    """YAML -> plain data, refusing documents that expand past MAX_CONFIG_VALUES (see check_expanded_size)."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML: {str(e)[:500]}") from None
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply to be a run config") from None
    check_expanded_size(raw, source)
    return raw


def config_from_dict(raw: dict[str, Any], source: str = "config") -> RunConfig:
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source)) from None


def check_paths(cfg: RunConfig, run_dir: str | Path | None = None, source: str = "config") -> None:
    """The filesystem checks a config can fail before any work starts: every local `manifest` exists,
    and the run directory (`run_dir`, else under `checkpoint.dir`) can be created. Creates nothing;
    raises ConfigError naming the field and the path."""
    problems = []
    for i, ds in enumerate(cfg.data.datasets):
        if ds.manifest and "://" not in ds.manifest and not Path(ds.manifest).is_file():
            problems.append(f"  data.datasets.{i}.manifest: manifest not found: {ds.manifest}")
    field, target = ("--run-dir", Path(run_dir)) if run_dir else ("checkpoint.dir", Path(cfg.checkpoint.dir))
    existing = target.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        problems.append(f"  {field}: can't create {target}: {existing} is not a directory")
    elif not os.access(existing, os.W_OK | os.X_OK):
        problems.append(f"  {field}: can't create or write {target}: {existing} is not writable")
    if problems:
        raise ConfigError("\n".join([f"{source}: {len(problems)} invalid path(s)", *problems]))
