"""Sensors: one registers run configs as experiment partitions, one notices changed corpora.

Neither reads file contents beyond the configs: the corpus sensor compares size + mtime (local) or size +
ETag (object stores) of each dataset's manifest, or of every file under a corpus root, with what the
experiment's latest corpus_manifest materialization recorded of them.
"""

import json

from dagster import (
    AssetCheckEvaluation,
    AssetCheckSeverity,
    AssetKey,
    AssetRecordsFilter,
    DefaultSensorStatus,
    RunFailureSensorContext,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    run_failure_sensor,
    sensor,
)

from a2b_pipeline.defs.assets.data import CORPUS_AVAILABLE
from a2b_pipeline.defs.common import (
    CORPUS_FINGERPRINT,
    corpus_fingerprint,
    corpus_sources,
    missing_corpora,
)
from a2b_pipeline.defs.jobs import data_refresh_job, leaderboard_job
from a2b_pipeline.defs.partitions import cv_experiments, experiments, folds
from a2b_pipeline.defs.resources import ExperimentStore

MAX_REFRESH_REQUESTS = 4  # data refreshes either sensor asks for per tick; the rest wait for the next ticks


def _cursor(context: SensorEvaluationContext) -> dict:
    try:
        value = json.loads(context.cursor or "{}")
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def corpus_status(store: ExperimentStore, name: str) -> str:
    """ "" when the experiment's corpora are on this machine, else why not (or why the config is unusable)."""
    from a2b_pipeline.configs import ConfigError

    try:
        return "; ".join(missing_corpora(store.rebase(store.load_config(name))))
    except ConfigError as e:
        return f"the config does not load: {e}"


def _corpus_check(name: str, problem: str) -> AssetCheckEvaluation:
    return AssetCheckEvaluation(
        asset_key=AssetKey("corpus_manifest"),
        check_name=CORPUS_AVAILABLE,
        passed=not problem,
        partition=name,
        severity=AssetCheckSeverity.WARN,
        description=problem or "every dataset's manifest or corpus root is on this machine",
        metadata={"checked_by": "experiment_configs_sensor"},
    )


@sensor(
    job=data_refresh_job,
    minimum_interval_seconds=30,
    default_status=DefaultSensorStatus.RUNNING,
    description="Registers each YAML under the configs dir, and each experiment of each sweep under "
    "configs/sweeps/, as an experiment partition (configs with data.split.folds also as cv_experiments, "
    "with their fold keys), and marks (check corpus_available) the experiments whose corpus is not on this "
    "machine; when a registered config's content changes, refreshes that experiment's data assets "
    "(training then shows as stale).",
)
def experiment_configs_sensor(context: SensorEvaluationContext, store: ExperimentStore):
    cursor = _cursor(context)
    seen: dict[str, str] = cursor.get("configs", {})
    corpus_seen: dict[str, str] = cursor.get("corpus", {})
    known = set(context.instance.get_dynamic_partitions(experiments.name))
    problems: list[str] = []
    now: dict[str, str] = {}
    for name in store.experiments(problems):
        now[name] = store.fingerprint(name)
    for problem in problems:
        context.log.warning(problem)
    new = sorted(set(now) - known)
    changed = sorted(k for k in now if k in known and k in seen and seen[k] != now[k])
    # at most MAX_REFRESH_REQUESTS refreshes a tick (an edited base config changes every sweep experiment on
    # it); the others keep their old fingerprint in the cursor, so the next ticks ask for them
    changed, later = changed[:MAX_REFRESH_REQUESTS], changed[MAX_REFRESH_REQUESTS:]
    requests = [RunRequest(run_key=f"config-{k}-{now[k][:12]}", partition_key=k) for k in changed]
    if new:
        context.log.info(f"registering experiments: {new}")
    # the corpus check, evaluated whenever an experiment's corpus status changes (or it is new)
    corpus = {name: corpus_status(store, name) for name in now}
    checks = [_corpus_check(n, p) for n, p in sorted(corpus.items()) if corpus_seen.get(n) != p]
    adds = [experiments.build_add_request(new)] if new else []
    return SensorResult(
        run_requests=[r for r in requests if not corpus[r.partition_key]],
        dynamic_partitions_requests=adds + _cv_partition_requests(context, store, sorted(now)),
        asset_events=checks,
        cursor=json.dumps(
            {"configs": {**now, **{k: seen[k] for k in later}}, "corpus": corpus}, sort_keys=True
        ),
    )


def _cv_partition_requests(
    context: SensorEvaluationContext, store: ExperimentStore, names: list[str]
) -> list:
    """Cross-validated experiments (data.split.folds) and the fold keys "0".."K-1" they need."""
    from a2b_pipeline.configs import ConfigError

    k_of: dict[str, int] = {}
    for name in names:
        try:
            k = store.load_config(name).data.split.folds
        except (ConfigError, OSError):
            continue  # the other sensor ticks and the assets report a broken config
        if k:
            k_of[name] = k
    new_cv = sorted(set(k_of) - set(context.instance.get_dynamic_partitions(cv_experiments.name)))
    have = set(context.instance.get_dynamic_partitions(folds.name))
    new_folds = [str(i) for i in range(max(k_of.values(), default=0)) if str(i) not in have]
    if new_cv:
        context.log.info(f"registering cross-validated experiments: {new_cv}")
    requests = [cv_experiments.build_add_request(new_cv)] if new_cv else []
    return requests + ([folds.build_add_request(new_folds)] if new_folds else [])


def recorded_fingerprint(context: SensorEvaluationContext, name: str) -> str | None:
    """The corpus fingerprint the latest corpus_manifest materialization of `name` recorded (None: never
    materialized, or before fingerprints were recorded): what the pipeline itself last saw of the corpus."""
    result = context.instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey("corpus_manifest"), asset_partitions=[name]), limit=1
    )
    if not result.records or result.records[0].asset_materialization is None:
        return None
    value = result.records[0].asset_materialization.metadata.get(CORPUS_FINGERPRINT)
    return str(value.value) if value is not None else None


@sensor(
    job=data_refresh_job,
    minimum_interval_seconds=60,
    default_status=DefaultSensorStatus.RUNNING,
    description="Watches every materialized experiment's corpus (manifest files, or the files under a corpus "
    "root: size + mtime/ETag) and refreshes its data assets when it differs from what its latest "
    "corpus_manifest recorded: a change from outside the pipeline, never the pipeline's own writes. One "
    f"request per experiment and corpus content (run key), at most {MAX_REFRESH_REQUESTS} per tick.",
)
def corpus_change_sensor(context: SensorEvaluationContext, store: ExperimentStore):
    from a2b_pipeline.configs import ConfigError

    requested: dict[str, str] = _cursor(context)  # experiment -> the fingerprint a refresh was asked for
    requests, waiting = [], 0
    for name in sorted(context.instance.get_dynamic_partitions(experiments.name)):
        recorded = recorded_fingerprint(context, name)
        if recorded is None:
            continue  # nothing materialized from this corpus yet: nothing to refresh
        try:
            cfg = store.rebase(store.load_config(name))
            now = corpus_fingerprint(cfg)
        except (ConfigError, OSError) as e:  # a broken config or an unreachable store: report, go on
            context.log.warning(f"{name}: corpus not checked: {e}")
            continue
        if now == recorded or requested.get(name) == now:
            continue
        if len(requests) >= MAX_REFRESH_REQUESTS:
            waiting += 1
            continue
        context.log.info(f"{name}: corpus changed ({', '.join(corpus_sources(cfg).values())})")
        requests.append(RunRequest(run_key=f"corpus-{name}-{now[:16]}", partition_key=name))
        requested[name] = now
    if waiting:
        context.log.info(f"{waiting} more experiments' corpora changed: refreshed on the next ticks")
    cursor = json.dumps(requested, sort_keys=True)
    if not requests:
        return SensorResult(
            skip_reason=SkipReason("no corpus changed since it was materialized"), cursor=cursor
        )
    return SensorResult(run_requests=requests, cursor=cursor)


@run_failure_sensor(
    request_job=leaderboard_job,
    default_status=DefaultSensorStatus.RUNNING,
    description="Rebuilds the leaderboard when an experiment's run fails, so its row says `failed` (a failed "
    "run materializes no evaluation, so declarative automation alone would leave the row as it was).",
)
def leaderboard_after_failure(context: RunFailureSensorContext) -> RunRequest | SkipReason:
    run = context.dagster_run
    if run.job_name == leaderboard_job.name:  # its own failure: no loop
        return SkipReason("the leaderboard's own run failed")
    return RunRequest(run_key=f"after-failure-{run.run_id}")
