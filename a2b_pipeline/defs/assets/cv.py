"""Grouped k-fold cross-validation in Dagster: experiment x fold partitions, and a summary per experiment.

    fold_training_run [experiment x fold] -> fold_evaluation [experiment x fold] -> cv_summary [experiment]

For configs with `data.split.folds` (the sensor registers them in `cv_experiments`). Bodies call the core
(a2b_pipeline/experiments/cv.py), the same functions as `a2b cv`, in the same layout
(`<checkpoint.dir>/<experiment>/<name>-cv-<hash of the effective config>/fold-<k>/`); a relaunched fold
resumes its checkpoints. A fold can be rerun alone: it is a partition of its own.
"""

import json
import warnings
from pathlib import Path
from typing import Any

from dagster import (
    AssetDep,
    AssetExecutionContext,
    AutomationCondition,
    BetaWarning,
    Config,
    DataVersion,
    Failure,
    MaterializeResult,
    MetadataValue,
    MultiPartitionKey,
    MultiToSingleDimensionPartitionMapping,
    asset,
)
from pydantic import Field

from a2b_pipeline.checkpoint.directory import STATE_FILE
from a2b_pipeline.defs.assets.training import GPU_POOL, GPU_TAGS, run_where_configured
from a2b_pipeline.defs.common import (
    Experiment,
    lineage_metadata,
    load_experiment,
    sha256_json,
    upstream_record,
    write_record,
)
from a2b_pipeline.defs.partitions import cv_experiments, experiment_folds
from a2b_pipeline.defs.template import forward_library_logs

CV_GROUP = "a2b_cv"
RESOURCE_KEYS = {"store", "tracking", "compute"}

# Build when missing (unless its last build failed: no retry loop) and rebuild whenever any upstream
# partition was materialized since the last request, also while others are missing (a summary of 2 of 3
# folds says so); never while a build of its own is running. Unlike eager(), missing upstream doesn't block.
# Since the last *request*, not since_last_handled(): that also resets on the build's own materialization,
# so an upstream update that lands while a build runs (a sweep's evaluations finishing close together) was
# lost, and the leaderboard kept showing that experiment as running.
REBUILD_ON_ANY_UPDATE = (
    (
        (AutomationCondition.missing() & ~AutomationCondition.execution_failed())
        | AutomationCondition.any_deps_updated().since(AutomationCondition.newly_requested())
    )
    & ~AutomationCondition.in_progress()
).with_label("rebuild_on_any_upstream_update")


def _keys(context: AssetExecutionContext) -> tuple[str, int]:
    key = context.partition_key
    dims = key.keys_by_dimension if isinstance(key, MultiPartitionKey) else {}
    return dims["experiment"], int(dims["fold"])


def _experiment(context: AssetExecutionContext, name: str) -> tuple[Experiment, int]:
    """The experiment and its number of folds; a fold key beyond it, or a config without folds, fails."""
    from a2b_pipeline.experiments.cv import require_folds

    r = context.resources
    try:
        exp = load_experiment(name, r.store, r.tracking, r.compute)
        return exp, require_folds(exp.cfg)
    except ValueError as e:  # ConfigError, or a setting the config rejects
        raise Failure(f"experiment {name!r}: {e}") from None


def _fold_of(context: AssetExecutionContext) -> tuple[Experiment, int, int, Path]:
    from a2b_pipeline.experiments.cv import cv_dir

    name, fold = _keys(context)
    exp, folds = _experiment(context, name)
    if fold >= folds:
        raise Failure(
            f"experiment {name!r} has data.split.folds={folds}: fold {fold} doesn't exist (0..{folds - 1})"
        )
    return exp, folds, fold, cv_dir(exp.cfg, exp.dir)


class FoldTrainingConfig(Config):
    fresh: bool = Field(
        default=False,
        description="Train this fold anew in a new run directory (`fold-<k>.attempt-<n>`); the earlier one "
        "stays where it is.",
    )


def _fold_facts(exp: Experiment, fold: int, folds: int, state: Any) -> dict[str, Any]:
    """What both fold records say about the fold's run."""
    return {
        "experiment": exp.name,
        "fold": fold,
        "folds": folds,
        "config_hash": state.config_hash,
        "cv_config_hash": exp.config_hash,
        "run_dir": str(state.run_dir),
        "status": state.status,
        "global_step": state.global_step,
    }


@asset(
    partitions_def=experiment_folds,
    group_name=CV_GROUP,
    code_version="1",
    kinds={"pytorch"},
    op_tags=GPU_TAGS,
    pool=GPU_POOL,
    required_resource_keys=RESOURCE_KEYS,
    description="Trains one fold of a cross-validated experiment (data.split.folds), tested on that fold's "
    "groups. "
    "Resumes the fold's run directory when it has checkpoints; a complete fold is reported as it is.",
)
def fold_training_run(context: AssetExecutionContext, config: FoldTrainingConfig) -> MaterializeResult:
    from a2b_pipeline.experiments.cv import fold_config
    from a2b_pipeline.runs import fold_dir

    exp, folds, fold, root = _fold_of(context)
    with forward_library_logs(context):
        state = run_where_configured(
            context,
            fold_config(exp.cfg, fold),
            fold_dir(root, fold),
            fresh=config.fresh,
            job_dir=exp.dir / "slurm" / context.run.run_id,
            say=lambda message: context.log.info(f"fold {fold}: {message}"),
        )[0].state
    best = state.best_checkpoint or state.last_checkpoint
    last = state.last_checkpoint
    record = write_record(
        exp,
        "fold_training_run",
        context.run.run_id,
        {
            **_fold_facts(exp, fold, folds, state),
            "best_checkpoint": str(best) if best else None,
            "message": state.message,
        },
    )
    state_path = (last or Path(state.run_dir)) / STATE_FILE
    md = lineage_metadata(exp, state, state_path, state.data_version, record, checkpoint=last, trained=True)
    md.update(
        {
            "fold": MetadataValue.int(fold),
            "folds": MetadataValue.int(folds),
            "run_dir": MetadataValue.path(state.run_dir),
        }
    )
    if state.status != "complete":
        raise Failure(
            description=f"fold {fold} {state.status} at step {state.global_step}: {state.message}. "
            "Launch it again to resume.",
            metadata=md,
        )
    return MaterializeResult(
        metadata=md,
        data_version=DataVersion(sha256_json([exp.config_hash, fold, md["checkpoint_sha256"]])[:20]),
    )


@asset(
    partitions_def=experiment_folds,
    deps=[fold_training_run],
    group_name=CV_GROUP,
    code_version="1",
    kinds={"pytorch"},
    required_resource_keys=RESOURCE_KEYS,
    description="Evaluates one fold's best checkpoint on its held-out groups: the model and the baselines, "
    "per channel, with intervals (evaluate.evaluate_report; written to the fold's evaluation-test.json).",
)
def fold_evaluation(context: AssetExecutionContext) -> MaterializeResult:
    from a2b_pipeline.experiments.cv import evaluate_fold
    from a2b_pipeline.security import Grant
    from a2b_pipeline.state import TrainState
    from a2b_pipeline.training.engine import pick_device

    exp, folds, fold, _ = _fold_of(context)
    run = upstream_record(context, "fold_training_run")
    if run.get("cv_config_hash") != exp.config_hash:
        raise Failure(
            f"{exp.config_file} changed since fold {fold} was trained: materialize fold_training_run again"
        )
    state = TrainState.from_checkpoint(run["run_dir"])
    device = str(pick_device(exp.cfg, local_rank=0))
    with forward_library_logs(context):
        report, path, groups = evaluate_fold(state, device, Grant.from_config(exp.cfg, str(exp.config_file)))
    record = write_record(
        exp,
        "fold_evaluation",
        context.run.run_id,
        {
            **_fold_facts(exp, fold, folds, state),
            "checkpoint": report["checkpoint"],
            "report": str(path),
            "test_groups": groups,
            "metrics": report["metrics"],
        },
    )
    ckpt = Path(report["checkpoint"])
    md = lineage_metadata(
        exp, state, ckpt / STATE_FILE, state.data_version, record, checkpoint=ckpt, trained=True
    )
    md.update({k: MetadataValue.float(float(v)) for k, v in sorted(report["metrics"].items())})
    md.update(
        {
            "fold": MetadataValue.int(fold),
            "report": MetadataValue.path(str(path)),
            "test_groups": MetadataValue.json(groups),
        }
    )
    return MaterializeResult(
        metadata=md, data_version=DataVersion(sha256_json([exp.config_hash, fold, report["metrics"]])[:20])
    )


with warnings.catch_warnings():  # beta in Dagster 1.13; it is the documented way to fan in one dimension
    warnings.simplefilter("ignore", BetaWarning)
    _EVERY_FOLD = MultiToSingleDimensionPartitionMapping("experiment")  # experiment <- each experiment|fold


@asset(
    partitions_def=cv_experiments,
    deps=[AssetDep(fold_evaluation, partition_mapping=_EVERY_FOLD)],
    group_name=CV_GROUP,
    code_version="1",
    kinds={"python"},
    required_resource_keys=RESOURCE_KEYS,
    automation_condition=REBUILD_ON_ANY_UPDATE,
    description="Mean and standard deviation over folds of every metric, for the model, each baseline and "
    "the margins over them (cv_summary.json); folds not evaluated yet are listed as such.",
)
def cv_summary(context: AssetExecutionContext) -> MaterializeResult:
    from a2b_pipeline.experiments.cv import FoldResult, cv_dir, summarize

    name = context.partition_key
    exp, folds = _experiment(context, name)
    root = cv_dir(exp.cfg, exp.dir)
    results = []
    for k in range(folds):
        key = MultiPartitionKey({"experiment": name, "fold": str(k)})
        try:
            rec = upstream_record(context, "fold_evaluation", partition=key)
        except Failure:
            results.append(
                FoldResult(fold=k, run_dir=str(root / f"fold-{k}"), status="missing", message="not evaluated")
            )
            continue
        if rec.get("cv_config_hash") != exp.config_hash:
            results.append(
                FoldResult(
                    fold=k, run_dir=rec["run_dir"], status="stale", message="evaluated for an older config"
                )
            )
            continue
        results.append(
            FoldResult(
                fold=k,
                run_dir=rec["run_dir"],
                status=rec["status"],
                steps=rec["global_step"],
                config_hash=rec["config_hash"],
                checkpoint=rec["checkpoint"],
                report=rec["report"],
                test_groups=rec["test_groups"],
            )
        )
    summary = summarize(exp.cfg, root, results)
    path = root / "cv_summary.json"
    return MaterializeResult(
        metadata={
            "experiment": name,
            "config_hash": exp.config_hash,
            "folds": MetadataValue.int(folds),
            "folds_evaluated": MetadataValue.int(summary["folds_evaluated"]),
            "summary": MetadataValue.md(_summary_table(summary)),
            "problems": MetadataValue.json(summary["problems"]),
            "cv_summary": MetadataValue.path(str(path)),
        },
        data_version=DataVersion(sha256_json([exp.config_hash, summary["stats"]])[:20]),
    )


def _summary_table(summary: dict[str, Any]) -> str:
    """Markdown: the model's and the baselines' whole-recording metrics, mean ± std over folds."""
    lines = ["| metric | mean | std | folds |", "|---|---|---|---|"]
    for key, st in summary["stats"].items():
        if "/recording/" not in key and not key.startswith("metrics/"):
            continue
        mean = "n/a" if st["mean"] is None else f"{st['mean']:.3f}"
        std = "n/a" if st["std"] is None else f"{st['std']:.3f}"
        lines.append(f"| {key} | {mean} | {std} | {st['n']} |")
    return "\n".join(lines) if len(lines) > 2 else json.dumps(summary["problems"])


CV_ASSETS = [fold_training_run, fold_evaluation, cv_summary]
