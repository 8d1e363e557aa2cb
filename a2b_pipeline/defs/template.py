"""The one shape of every experiment asset: load, call the core, report.

To add an asset, read one asset file (assets/training.py's `best_checkpoint` is a short one) and write:

    @experiment_asset(
        code_version="1",           # bump it when the body changes what the asset produces
        reads=["best_checkpoint"],  # the upstream records the body reads; also its deps (the graph's edges)
        kinds={"pytorch"},          # every other keyword goes to Dagster's `@asset`
        description="What the asset is, for the UI.",
    )
    def my_asset(step: AssetStep) -> Produced:
        from a2b_pipeline.evaluation import something  # heavy imports inside: the code location loads fast

        best = step.upstream["best_checkpoint"]                     # load
        result = something(step.exp.cfg, best["checkpoint"])       # call the core
        return Produced(record={...}, version_parts=[...], metadata={...})  # report

and add it to the file's list of assets (assets/__init__.py's ASSETS, or CV_ASSETS). The body gets an
`AssetStep`: the experiment of the partition (`step.exp.cfg` is its effective config), the upstream
records, the launch config and Dagster's context. It returns a `Produced`: the record the next asset reads,
what its data version is made of, and its metadata. The template does the rest, the same for every asset:

- before the body: load the partition's experiment (a fold partition's fold must exist), read the record of
  each upstream asset in `reads` as the instance recorded it (path + sha256 of its latest materialization
  of this partition) and refuse one built from another config;
- during it: the library's log lines go to the run's log;
- after it: write this materialization's record (and, for the assets before training, the TrainState a run
  of this config and data starts from) as files of its own under `<checkpoint.dir>/<experiment>/dagster/
  <asset>/`; put the lineage metadata (config, data, TrainState, checkpoint) after the asset's own; and
  return a `MaterializeResult` whose `DataVersion` folds the config hash into `version_parts`, so a
  changed config or corpus marks everything downstream stale.
"""

# No `from __future__ import annotations`: Dagster reads the asset functions' annotations as objects.
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dagster import (
    AssetCheckResult,
    AssetExecutionContext,
    Config,
    DataVersion,
    Failure,
    MaterializeResult,
    MultiPartitionKey,
    asset,
)

from a2b_pipeline.checkpoint.directory import STATE_FILE
from a2b_pipeline.defs.common import (
    Experiment,
    forward_library_logs,
    lineage_metadata,
    load_experiment,
    redacted,
    sha256_json,
    upstream_record,
    write_planned_state,
    write_record,
)
from a2b_pipeline.defs.partitions import GROUP, experiments

if TYPE_CHECKING:
    from a2b_pipeline.state import TrainState

RESOURCE_KEYS = {"store", "tracking", "compute"}


@dataclass
class AssetStep:
    """What a body gets: the run's context, the experiment (and fold, on an experiment x fold partition),
    the upstream records it asked for, and the launch config (for assets that take one)."""

    context: AssetExecutionContext
    exp: Experiment
    fold: int | None = None
    upstream: dict[str, dict[str, Any]] = field(default_factory=dict)
    config: Any = None

    @property
    def log(self) -> Any:
        return self.context.log

    @property
    def run_id(self) -> str:
        return self.context.run.run_id

    @property
    def code_version(self) -> str | None:
        return self.context.assets_def.code_versions_by_key.get(self.context.asset_key)

    @property
    def folds(self) -> int:
        """The experiment's number of cross-validation folds (`data.split.folds`); none: a Failure."""
        from a2b_pipeline.experiments.cv import require_folds

        try:
            return require_folds(self.exp.cfg)
        except ValueError as e:  # ConfigError
            raise Failure(f"experiment {self.exp.name!r}: {e}") from None

    def previous_record(self) -> dict[str, Any] | None:
        """This asset's own latest record for the partition (None when there is none or it is unreadable):
        what a body compares its inputs with to skip work that would give the same result."""
        try:
            return upstream_record(self.context, self.context.asset_key.to_user_string())
        except Failure:
            return None


@dataclass
class Produced:
    """What a body reports; the template turns it into files, metadata and a MaterializeResult.

    `record` is what the next asset reads (the template adds the experiment, the config hash and the code
    version); its `data_version`, where it has one, is the corpus data version the materialization is
    about. `version_parts` are folded with the config hash into the Dagster DataVersion: what the asset
    produced that matters downstream. `metadata` is the asset's own, shown before the lineage.

    `state` is the TrainState the asset is about: a run's or a checkpoint's (its status, step and best
    metric are shown), read from `checkpoint`'s train_state.json or else the run directory's. Without one,
    an asset about the corpus (a record with a data version) gets the TrainState a run of this config and
    data starts from, written beside its record.
    """

    record: dict[str, Any]
    version_parts: list[Any]
    metadata: dict[str, Any] = field(default_factory=dict)
    state: "TrainState | None" = None
    checkpoint: Path | None = None
    checks: list[AssetCheckResult] = field(default_factory=list)
    failure: str | None = None  # set: not a materialization, a Failure with this description (record kept)
    reused: str | None = None  # set: nothing was recomputed; says what was reused (first metadata row)


def _load_step(context: AssetExecutionContext, config: Any) -> AssetStep:
    """The partition's experiment: a plain key names it; an experiment x fold key also names a fold of it,
    which must exist."""
    key, fold = context.partition_key, None
    if isinstance(key, MultiPartitionKey):
        key, fold = key.keys_by_dimension["experiment"], int(key.keys_by_dimension["fold"])
    r = context.resources
    try:
        exp = load_experiment(key, r.store, r.tracking, r.compute)
    except ValueError as e:  # ConfigError, or a resource setting the config rejects
        raise Failure(f"experiment {key!r}: {e}") from None
    step = AssetStep(context=context, exp=exp, fold=fold, config=config)
    if fold is not None and fold >= step.folds:
        raise Failure(
            f"experiment {key!r} has data.split.folds={step.folds}: fold {fold} doesn't exist "
            f"(0..{step.folds - 1})"
        )
    return step


def _guard_upstream(exp: Experiment, rec: dict[str, Any], asset_name: str) -> None:
    if rec.get("config_hash") != exp.config_hash:
        raise Failure(
            f"{exp.config_file} changed since {asset_name} was materialized (config hash "
            f"{rec.get('config_hash')} -> {exp.config_hash}): materialize {asset_name} and what follows again"
        )


def _report(step: AssetStep, out: Produced) -> MaterializeResult:
    """The epilogue: the record and TrainState files, the metadata, the data version."""
    exp, name = step.exp, step.context.asset_key.to_user_string()
    head = {"experiment": exp.name, "config_hash": exp.config_hash, "code_version": step.code_version}
    record = write_record(exp, name, step.run_id, {**head, **out.record, "reused": out.reused})
    data_version = out.record.get("data_version")
    state, state_path = out.state, None
    if state is not None:
        state_path = (out.checkpoint or state.run_dir) / STATE_FILE
    elif data_version:
        state, state_path = write_planned_state(exp, name, step.run_id, data_version)
    lineage = lineage_metadata(
        exp, state, state_path, data_version, record, checkpoint=out.checkpoint, trained=out.state is not None
    )
    metadata = redacted({**({"reused": out.reused} if out.reused else {}), **out.metadata, **lineage})
    if out.failure:
        raise Failure(description=out.failure, metadata=metadata)
    tags = {}
    if out.reused:  # on the materialization and on the run, where the runs list shows it
        tags = {"a2b/reused": "true"}
        step.context.instance.add_run_tags(step.run_id, {f"a2b/reused_{name}": "true"})
    version = DataVersion(sha256_json([exp.config_hash, *out.version_parts])[:20])
    return MaterializeResult(metadata=metadata, data_version=version, check_results=out.checks, tags=tags)


def _materialize(
    body: Callable[[AssetStep], Produced], reads: Sequence[str], context: AssetExecutionContext, config: Any
) -> MaterializeResult:
    step = _load_step(context, config)
    for up in reads:
        step.upstream[up] = upstream_record(context, up)
        _guard_upstream(step.exp, step.upstream[up], up)
    with forward_library_logs(context):
        out = body(step)
    return _report(step, out)


def experiment_asset(
    *,
    code_version: str,
    reads: Sequence[str] = (),
    config: type[Config] | None = None,
    **asset_kwargs: Any,
) -> Callable[[Callable[[AssetStep], Produced]], Any]:
    """`@experiment_asset(code_version=..., reads=[upstream asset names], ...)` over
    `def name(step: AssetStep) -> Produced`: an asset of the experiment partitions and group (other
    `partitions_def` / `group_name` may be given) with the shared preamble and epilogue. Its `deps` are
    the assets it `reads` unless given. `config`: the launch config class (shown in the launchpad); other
    keyword arguments go to `@asset`."""

    def decorate(body: Callable[[AssetStep], Produced]) -> Any:
        if config is None:

            def compute(context: AssetExecutionContext) -> MaterializeResult:
                return _materialize(body, reads, context, None)

        else:

            def compute(context: AssetExecutionContext, config) -> MaterializeResult:  # noqa: ANN001
                return _materialize(body, reads, context, config)

            compute.__annotations__["config"] = config  # the class Dagster builds the launch config from
        # named for the body (not functools.wraps: its __wrapped__ would show Dagster the body's signature)
        for attr in ("__name__", "__qualname__", "__module__", "__doc__"):
            setattr(compute, attr, getattr(body, attr))
        defaults = {"partitions_def": experiments, "group_name": GROUP, "deps": list(reads)}
        return asset(
            name=body.__name__,
            code_version=code_version,
            required_resource_keys=RESOURCE_KEYS,
            **{**defaults, **asset_kwargs},
        )(compute)

    return decorate
