"""The leaderboard: every experiment's evaluation (and every cross-validation's summary) in one table.

    evaluation [experiments], cv_summary [cv_experiments] -> leaderboard

Rebuilt by declarative automation whenever any evaluation or CV summary is materialized (no job to run
by hand; `dagster dev` runs the automation sensor). Registered experiments without an evaluation are
rows too, with what happened: `failed` (their latest run failed), `running`, `not evaluated` (trained,
not evaluated) or `missing` (never materialized). The rows and their rendering are the core's
(a2b_pipeline/experiments/leaderboard.py, the same table `a2b leaderboard RUNS_DIR` prints); this asset
only finds what the instance recorded.
"""

from pathlib import Path
from typing import Any

from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetRecordsFilter,
    DagsterRunStatus,
    Failure,
    MaterializeResult,
    MetadataValue,
    RunsFilter,
    TableColumn,
    TableRecord,
    TableSchema,
    asset,
)

from a2b_pipeline.defs.assets.cv import REBUILD_ON_ANY_UPDATE, cv_summary
from a2b_pipeline.defs.assets.evaluation import evaluation
from a2b_pipeline.defs.common import atomic_write, png_markdown, upstream_record
from a2b_pipeline.defs.partitions import cv_experiments, experiments
from a2b_pipeline.files import read_json

LEADERBOARD_GROUP = "a2b_leaderboard"
_RUNNING = {DagsterRunStatus.QUEUED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED}


def _latest_metadata(
    context: AssetExecutionContext, asset_name: str, partition: str
) -> dict[str, Any] | None:
    """The metadata of the asset's latest materialization of the partition (with `_timestamp`), or None."""
    res = context.instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey(asset_name), asset_partitions=[partition]), limit=1
    )
    if not res.records or res.records[0].asset_materialization is None:
        return None
    md = {k: v.value for k, v in res.records[0].asset_materialization.metadata.items()}
    return {**md, "_timestamp": res.records[0].timestamp}


def _latest_run(context: AssetExecutionContext, tag: str, partition: str) -> Any:
    records = context.instance.get_run_records(RunsFilter(tags={tag: partition}), limit=1)
    return records[0].dagster_run if records else None


def _failed_since(context: AssetExecutionContext, name: str, timestamp: float) -> str | None:
    """The id of the partition's latest run when it failed after `timestamp` (an evaluation's), else None."""
    records = context.instance.get_run_records(RunsFilter(tags={"dagster/partition": name}), limit=1)
    if not records or records[0].dagster_run.status != DagsterRunStatus.FAILURE:
        return None
    started = records[0].start_time or records[0].create_timestamp.timestamp()
    return records[0].dagster_run.run_id[:8] if started > timestamp else None


def _config_facts(store: Any, name: str) -> dict[str, Any]:
    try:
        cfg = store.load_config(name)
    except (ValueError, OSError):
        return {}
    return {"model": cfg.model.name, "datasets": [d.name for d in cfg.data.datasets]}


def _status_row(context: AssetExecutionContext, name: str, tag: str, kind: str, **facts: Any) -> Any:
    """The row of an experiment without an evaluation: what its latest run says."""
    from a2b_pipeline.experiments import leaderboard as lb

    run = _latest_run(context, tag, name)
    if run is None:
        return lb.missing_row(name, "missing", "never materialized", kind=kind, **facts)
    if run.status == DagsterRunStatus.FAILURE:
        return lb.missing_row(name, "failed", f"run {run.run_id[:8]} failed", kind=kind, **facts)
    if run.status in _RUNNING:
        return lb.missing_row(name, "running", f"run {run.run_id[:8]}", kind=kind, **facts)
    what = "evaluation" if kind == "run" else "its folds and cv_summary"
    return lb.missing_row(name, "not evaluated", f"materialize {what}", kind=kind, **facts)


def experiment_rows(context: AssetExecutionContext, store: Any) -> list[Any]:
    """A row per registered experiment and per cross-validated experiment."""
    from a2b_pipeline.experiments import leaderboard as lb

    rows = []
    cv_names = set(context.instance.get_dynamic_partitions(cv_experiments.name))
    for name in context.instance.get_dynamic_partitions(experiments.name):
        facts = _config_facts(store, name)
        md = _latest_metadata(context, "evaluation", name)
        if md is None:
            if name in cv_names:
                continue  # cross-validated, no plain-split evaluation: its CV row stands for it
            rows.append(_status_row(context, name, "dagster/partition", "run", **facts))
            continue
        try:
            record = upstream_record(context, "evaluation", partition=name)
        except Failure as e:
            rows.append(lb.missing_row(name, "failed", str(e), **facts))
            continue
        report = record.get("report") or {**record, "channels": record.get("channels", [])}
        row = lb.row_from_report(report, name)
        row.model = row.model or facts.get("model", "")
        row.datasets = row.datasets or facts.get("datasets", [])
        row.steps = row.steps if row.steps is not None else md.get("global_step")
        failed = _failed_since(context, name, md["_timestamp"])
        if failed:  # shown as failed, with the numbers of its last good evaluation
            row.status, row.note = (
                "failed",
                f"run {failed} failed after this evaluation; {row.note}".rstrip("; "),
            )
        rows.append(row)
    for name in sorted(cv_names):
        facts = _config_facts(store, name)
        md = _latest_metadata(context, "cv_summary", name)
        if md is None or not Path(str(md.get("cv_summary"))).is_file():
            rows.append(_status_row(context, name, "dagster/partition/experiment", "cv", **facts))
            continue

        rows.append(lb.row_from_cv_summary(read_json(str(md["cv_summary"]), what="CV summary")))
    return rows


def leaderboard_dir(store: Any) -> Path:
    """`<data root>/data/leaderboard`: beside the corpora, in the tree the data root's files live in (with
    the default data root, the repository's ignored `data/`), never loose in the data root itself."""
    return store.root / "data" / "leaderboard"


@asset(
    deps=[evaluation, cv_summary],
    group_name=LEADERBOARD_GROUP,
    code_version="1",
    kinds={"python"},
    required_resource_keys={"store"},
    automation_condition=REBUILD_ON_ANY_UPDATE,
    description="One table of every experiment: model, datasets, the main test metric per channel with its "
    "interval, the margin over each baseline, steps, config hash, checkpoint; cross-validations as mean ± "
    "std over folds; failed and missing experiments marked. A table + plot here; CSV and Markdown in "
    "<data root>/data/leaderboard/.",
)
def leaderboard(context: AssetExecutionContext) -> MaterializeResult:
    from a2b_pipeline.experiments import leaderboard as lb

    store = context.resources.store
    rows = experiment_rows(context, store)
    out = leaderboard_dir(store)
    table = lb.to_markdown(rows)
    columns, records = lb.to_table(rows)
    png = lb.plot(rows) if rows else b""
    csv_path, md_path, png_path = out / "leaderboard.csv", out / "leaderboard.md", out / "leaderboard.png"
    atomic_write(csv_path, lb.to_csv(rows).encode())
    atomic_write(md_path, (table + "\n").encode())
    if png:
        atomic_write(png_path, png)
    not_ok = [r for r in rows if not r.ok]
    context.log.info(f"leaderboard: {len(rows)} rows, {len(not_ok)} without an evaluation")
    return MaterializeResult(
        metadata={
            # a table the UI renders inline (Markdown would hide behind "[Show Markdown]")
            "leaderboard": MetadataValue.table(
                [TableRecord(r) for r in records],
                schema=TableSchema([TableColumn(c, "string") for c in columns]),
            ),
            "plot": png_markdown(png, "leaderboard") if png else MetadataValue.md("_no experiments_"),
            "csv": MetadataValue.path(str(csv_path)),
            "markdown": MetadataValue.path(str(md_path)),
            "rows": MetadataValue.int(len(rows)),
            "evaluated": MetadataValue.int(len(rows) - len(not_ok)),
            "not_evaluated": MetadataValue.json({r.experiment: r.status for r in not_ok}),
        }
    )
