"""Grouped k-fold cross-validation in Dagster: experiment x fold partitions, and a summary per experiment.

    fold_training_run [experiment x fold] -> fold_evaluation [experiment x fold] -> cv_summary [experiment]

For configs with `data.split.folds` (the sensor registers them in `cv_experiments`). Bodies call the core
(a2b_pipeline/experiments/cv.py), the same functions as `a2b cv`, in the same layout
(`<checkpoint.dir>/<experiment>/<name>-cv-<hash of the effective config>/fold-<k>/`); a relaunched fold
resumes its checkpoints. A fold can be rerun alone: it is a partition of its own. Each is an
`@experiment_asset` (defs/template.py) like the experiment's assets, on the experiment x fold partitions
(`step.fold`) or, for the summary, on `cv_experiments`.
"""

import json
import warnings
from pathlib import Path
from typing import Any

from dagster import (
    AssetDep,
    AutomationCondition,
    BetaWarning,
    Config,
    Failure,
    MetadataValue,
    MultiPartitionKey,
    MultiToSingleDimensionPartitionMapping,
)
from pydantic import Field

from a2b_pipeline.defs.assets.training import ON_A_GPU, run_where_configured, slurm_job_dir
from a2b_pipeline.defs.common import short_digest, state_sha256, upstream_record
from a2b_pipeline.defs.partitions import cv_experiments, experiment_folds
from a2b_pipeline.defs.template import AssetStep, Produced, experiment_asset
from a2b_pipeline.experiments import CV_SUMMARY_FILE

CV_GROUP = "a2b_cv"

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


class FoldTrainingConfig(Config):
    fresh: bool = Field(
        default=False,
        description="Train this fold anew in a new run directory (`fold-<k>.attempt-<n>`); the earlier one "
        "stays where it is.",
    )


def _fold_facts(step: AssetStep, state: Any) -> dict[str, Any]:
    """What both fold records say about the fold's run. `config_hash` is the CV experiment's (what the
    template pins downstream), `fold_config_hash` the fold's own run config's."""
    return {
        "fold": step.fold,
        "folds": step.folds,
        "config_hash": step.exp.config_hash,
        "fold_config_hash": state.config_hash,
        "data_version": state.data_version,
        "run_dir": str(state.run_dir),
        "status": state.status,
        "global_step": state.global_step,
    }


def _fold_metadata(step: AssetStep) -> dict[str, Any]:
    return {"fold": MetadataValue.int(step.fold), "folds": MetadataValue.int(step.folds)}


@experiment_asset(
    code_version="1",
    config=FoldTrainingConfig,
    partitions_def=experiment_folds,
    group_name=CV_GROUP,
    kinds={"pytorch"},
    **ON_A_GPU,
    description="Trains one fold of a cross-validated experiment (data.split.folds), tested on that fold's "
    "groups. "
    "Resumes the fold's run directory when it has checkpoints; a complete fold is reported as it is.",
)
def fold_training_run(step: AssetStep) -> Produced:
    from a2b_pipeline.experiments.cv import cv_dir, fold_config
    from a2b_pipeline.runs import fold_dir

    exp, fold = step.exp, step.fold
    state = run_where_configured(
        step.context,
        fold_config(exp.cfg, fold),
        fold_dir(cv_dir(exp.cfg, exp.dir), fold),
        fresh=step.config.fresh,
        job_dir=slurm_job_dir(step),
        say=lambda message: step.log.info(f"fold {fold}: {message}"),
    )[0].state
    best, last = state.best_checkpoint or state.last_checkpoint, state.last_checkpoint
    stopped = f"{state.status} at step {state.global_step}: {state.message}"
    return Produced(
        record={
            **_fold_facts(step, state),
            "best_checkpoint": str(best) if best else None,
            "message": state.message,
        },
        version_parts=[fold, short_digest(state_sha256(last)) if last else None],
        metadata={**_fold_metadata(step), "run_dir": MetadataValue.path(state.run_dir)},
        state=state,
        checkpoint=last,
        failure=None if state.status == "complete" else f"fold {fold} {stopped}. Launch it again to resume.",
    )


@experiment_asset(
    code_version="1",
    reads=["fold_training_run"],
    partitions_def=experiment_folds,
    group_name=CV_GROUP,
    kinds={"pytorch"},
    description="Evaluates one fold's best checkpoint on its held-out groups: the model and the baselines, "
    "per channel, with intervals (evaluate.evaluate_report; written to the fold's evaluation-test.json).",
)
def fold_evaluation(step: AssetStep) -> Produced:
    from a2b_pipeline.experiments.cv import evaluate_fold
    from a2b_pipeline.security import Grant
    from a2b_pipeline.state import TrainState
    from a2b_pipeline.training.engine import pick_device

    exp = step.exp
    state = TrainState.from_checkpoint(step.upstream["fold_training_run"]["run_dir"])
    device = str(pick_device(exp.cfg, local_rank=0))
    report, path, groups = evaluate_fold(state, device, Grant.from_config(exp.cfg, str(exp.config_file)))
    return Produced(
        record={
            **_fold_facts(step, state),
            "checkpoint": report["checkpoint"],
            "report": str(path),
            "test_groups": groups,
            "metrics": report["metrics"],
        },
        version_parts=[step.fold, report["metrics"]],
        metadata={
            **{k: MetadataValue.float(float(v)) for k, v in sorted(report["metrics"].items())},
            **_fold_metadata(step),
            "report": MetadataValue.path(str(path)),
            "test_groups": MetadataValue.json(groups),
        },
        state=state,
        checkpoint=Path(report["checkpoint"]),
    )


with warnings.catch_warnings():  # beta in Dagster 1.13; it is the documented way to fan in one dimension
    warnings.simplefilter("ignore", BetaWarning)
    _EVERY_FOLD = MultiToSingleDimensionPartitionMapping("experiment")  # experiment <- each experiment|fold


def _fold_result(step: AssetStep, root: Path, k: int) -> Any:
    """Fold k as its latest fold_evaluation recorded it: missing, stale (another config) or evaluated."""
    from a2b_pipeline.experiments.cv import FoldResult

    key = MultiPartitionKey({"experiment": step.exp.name, "fold": str(k)})
    try:
        rec = upstream_record(step.context, "fold_evaluation", partition=key)
    except Failure:
        return FoldResult(fold=k, run_dir=str(root / f"fold-{k}"), status="missing", message="not evaluated")
    if rec.get("config_hash") != step.exp.config_hash:
        return FoldResult(
            fold=k, run_dir=rec["run_dir"], status="stale", message="evaluated for an older config"
        )
    return FoldResult(
        fold=k,
        run_dir=rec["run_dir"],
        status=rec["status"],
        steps=rec["global_step"],
        config_hash=rec["fold_config_hash"],
        checkpoint=rec["checkpoint"],
        report=rec["report"],
        test_groups=rec["test_groups"],
    )


@experiment_asset(
    code_version="1",
    deps=[AssetDep(fold_evaluation, partition_mapping=_EVERY_FOLD)],
    partitions_def=cv_experiments,
    group_name=CV_GROUP,
    kinds={"python"},
    automation_condition=REBUILD_ON_ANY_UPDATE,
    description="Mean and standard deviation over folds of every metric, for the model, each baseline and "
    "the margins over them (cv_summary.json); folds not evaluated yet are listed as such.",
)
def cv_summary(step: AssetStep) -> Produced:
    from a2b_pipeline.experiments.cv import cv_dir, summarize

    root = cv_dir(step.exp.cfg, step.exp.dir)
    summary = summarize(step.exp.cfg, root, [_fold_result(step, root, k) for k in range(step.folds)])
    path = root / CV_SUMMARY_FILE
    return Produced(
        record={"cv_summary": str(path), "folds_evaluated": summary["folds_evaluated"]},
        version_parts=[summary["stats"]],
        metadata={
            "folds": MetadataValue.int(step.folds),
            "folds_evaluated": MetadataValue.int(summary["folds_evaluated"]),
            "summary": MetadataValue.md(_summary_table(summary)),
            "problems": MetadataValue.json(summary["problems"]),
            "cv_summary": MetadataValue.path(str(path)),
        },
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
