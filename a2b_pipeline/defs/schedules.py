"""Scheduled retraining of every registered experiment.

The cron comes from A2B_RETRAIN_CRON (default: Mondays 03:00) and A2B_RETRAIN_TIMEZONE (default UTC)
at code-location load. The schedule starts STOPPED: turn it on in the UI (Automation) or with
`dagster schedule start retrain_schedule`. A retrain of an experiment whose config and data did not
change finds its complete run and reports it again; a changed corpus or config trains anew.
"""

import os

from dagster import DefaultScheduleStatus, RunRequest, ScheduleEvaluationContext, SkipReason, schedule

from a2b_pipeline.defs.jobs import RUN_GPU_TAGS, experiment_job
from a2b_pipeline.defs.partitions import experiments
from a2b_pipeline.defs.resources import ExperimentStore
from a2b_pipeline.defs.sensors import corpus_status

RETRAIN_CRON = os.environ.get("A2B_RETRAIN_CRON", "0 3 * * 1")
RETRAIN_TIMEZONE = os.environ.get("A2B_RETRAIN_TIMEZONE", "UTC")


@schedule(
    job=experiment_job,
    cron_schedule=RETRAIN_CRON,
    execution_timezone=RETRAIN_TIMEZONE,
    default_status=DefaultScheduleStatus.STOPPED,
    description="Retrain every registered experiment (one run per partition) on its current corpus; "
    "experiments whose corpus is not on this machine are skipped, with the reason in the tick's log.",
)
def retrain_schedule(context: ScheduleEvaluationContext, store: ExperimentStore):
    keys = context.instance.get_dynamic_partitions(experiments.name)
    if not keys:
        return SkipReason("no experiments registered yet (the experiment_configs_sensor adds them)")
    problems = {k: p for k in keys if (p := corpus_status(store, k))}
    for k, problem in problems.items():
        context.log.warning(f"not retraining {k}: {problem}")
    ready = [k for k in keys if k not in problems]
    if not ready:
        return SkipReason("; ".join(f"{k}: {p}" for k, p in problems.items()))
    stamp = (
        context.scheduled_execution_time.strftime("%Y%m%dT%H%M") if context.scheduled_execution_time else ""
    )
    return [RunRequest(run_key=f"retrain-{k}-{stamp}", partition_key=k, tags=RUN_GPU_TAGS) for k in ready]
