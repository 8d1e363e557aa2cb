"""The one shape of every experiment asset: `@experiment_asset` wraps a body that only calls the core.

Before the body (the preamble): load the experiment's effective config, read the record of each
upstream asset the body needs *as the instance recorded it* (path + sha256 of its latest
materialization of this partition) and refuse one built from another config. During the body: the
library's log lines go to the run's log. After it (the epilogue): write this materialization's record
and TrainState as files of its own, build the lineage metadata (config, data, TrainState, checkpoint)
after the asset's own metadata, and return a `MaterializeResult` whose `DataVersion` folds in the
config hash, so a changed config or corpus marks everything downstream stale.
"""

# No `from __future__ import annotations`: Dagster reads the asset functions' annotations as objects.
import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
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
    MetadataValue,
    asset,
)

from a2b_pipeline.defs.common import (
    Experiment,
    lineage_metadata,
    load_experiment,
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
    """What a body gets: the run's context, the experiment, the upstream records it asked for, and
    the launch config (for assets that take one)."""

    context: AssetExecutionContext
    exp: Experiment
    upstream: dict[str, dict[str, Any]]
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

    def previous_record(self) -> dict[str, Any] | None:
        """This asset's own latest record for the partition (None when there is none or it is unreadable):
        what a body compares its inputs with to skip work that would give the same result."""
        try:
            return upstream_record(self.context, self.context.asset_key.to_user_string())
        except Failure:
            return None


@dataclass
class Produced:
    """What a body returns; the template turns it into files, metadata and a MaterializeResult."""

    record: dict[str, Any]  # the asset's own record (experiment and config hash are added)
    data_version: str | None  # the corpus data version this materialization is about
    version_parts: list[Any]  # folded with the config hash into the Dagster DataVersion
    metadata: dict[str, Any] = field(default_factory=dict)  # the asset's own, shown before the lineage
    state: "TrainState | None" = None  # None: the planned TrainState of a run of this config and data
    state_path: Path | None = None  # where `state` already lives (a checkpoint's train_state.json)
    checkpoint: Path | None = None
    checks: list[AssetCheckResult] = field(default_factory=list)
    failure: str | None = None  # set: not a materialization, a Failure with this description
    reused: str | None = None  # set: nothing was recomputed; says what was reused (first metadata row)
    trained: bool = False  # `state` comes from a training run: status, step, best metric are shown


class _ToDagsterLog(logging.Handler):
    def __init__(self, log: Any):
        super().__init__(logging.INFO)
        self.log = log

    def emit(self, record: logging.LogRecord) -> None:
        level = "warning" if record.levelno == logging.WARNING else "info"
        if record.levelno >= logging.ERROR:
            level = "error"
        getattr(self.log, level)(f"{record.name}: {record.getMessage()}")


@contextlib.contextmanager
def forward_library_logs(context: Any) -> Iterator[None]:
    """The library's log lines (per-epoch/validation progress) go to the run's log in the UI."""
    logger = logging.getLogger("a2b_pipeline")
    handler = _ToDagsterLog(context.log)
    old_level = logger.level
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def _experiment(context: AssetExecutionContext) -> Experiment:
    r = context.resources
    try:
        return load_experiment(context.partition_key, r.store, r.tracking, r.compute)
    except ValueError as e:  # ConfigError, or a resource setting the config rejects
        raise Failure(f"experiment {context.partition_key!r}: {e}") from None


def guard_upstream(exp: Experiment, rec: dict[str, Any], asset_name: str) -> None:
    if rec.get("config_hash") != exp.config_hash:
        raise Failure(
            f"{exp.config_file} changed since {asset_name} was materialized (config hash "
            f"{rec.get('config_hash')} -> {exp.config_hash}): materialize {asset_name} and what follows again"
        )


def redacted(metadata: dict[str, Any]) -> dict[str, Any]:
    """Metadata with every URL shown without its credentials (security.redact_text): texts, markdown, paths,
    URLs and JSON values alike; numbers and the rest as they are."""
    import json

    from a2b_pipeline.security import redact_text

    out: dict[str, Any] = {}
    for key, value in metadata.items():
        if isinstance(value, str):
            value = redact_text(value)
        elif isinstance(value, MetadataValue) and isinstance(getattr(value, "value", None), str):
            value = type(value)(redact_text(value.value))
        elif isinstance(value, MetadataValue) and isinstance(getattr(value, "value", None), dict | list):
            text = json.dumps(value.value, default=str)
            if redact_text(text) != text:
                value = type(value)(json.loads(redact_text(text)))
        out[key] = value
    return out


def _materialize(
    body: Callable[[AssetStep], Produced], reads: Sequence[str], context: AssetExecutionContext, config: Any
) -> MaterializeResult:
    name = context.asset_key.to_user_string()
    exp = _experiment(context)
    upstream = {}
    for up in reads:
        upstream[up] = upstream_record(context, up)
        guard_upstream(exp, upstream[up], up)
    step = AssetStep(context=context, exp=exp, upstream=upstream, config=config)
    with forward_library_logs(context):
        out = body(step)

    head = {"experiment": exp.name, "config_hash": exp.config_hash, "code_version": step.code_version}
    record = write_record(exp, name, step.run_id, {**head, **out.record, "reused": out.reused})
    state, state_path = out.state, out.state_path
    if state is None or state_path is None:
        state, state_path = write_planned_state(exp, name, step.run_id, out.data_version)
    lineage = lineage_metadata(
        exp, state, state_path, out.data_version, record, checkpoint=out.checkpoint, trained=out.trained
    )
    metadata = redacted({**({"reused": out.reused} if out.reused else {}), **out.metadata, **lineage})
    if out.failure:
        raise Failure(description=out.failure, metadata=metadata)
    tags = {}
    if out.reused:  # on the materialization and on the run, where the runs list shows it
        tags = {"a2b/reused": "true"}
        context.instance.add_run_tags(step.run_id, {f"a2b/reused_{name}": "true"})
    version = DataVersion(sha256_json([exp.config_hash, *out.version_parts])[:20])
    return MaterializeResult(metadata=metadata, data_version=version, check_results=out.checks, tags=tags)


def experiment_asset(
    *,
    code_version: str,
    reads: Sequence[str] = (),
    config: type[Config] | None = None,
    **asset_kwargs: Any,
) -> Callable[[Callable[[AssetStep], Produced]], Any]:
    """`@experiment_asset(code_version=..., reads=[upstream asset names], deps=[...], ...)` over
    `def name(step: AssetStep) -> Produced`: a partitioned asset of the group with the shared preamble
    and epilogue. `config`: the launch config class (shown in the launchpad); other keyword arguments
    go to `@asset`. Bump the asset's own `code_version` when its body changes what it produces."""

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
        return asset(
            name=body.__name__,
            partitions_def=experiments,
            group_name=GROUP,
            code_version=code_version,
            required_resource_keys=RESOURCE_KEYS,
            **asset_kwargs,
        )(compute)

    return decorate
