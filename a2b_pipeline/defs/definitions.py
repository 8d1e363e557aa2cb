"""The one `Definitions` object of the code location (workspace.yaml loads `a2b_pipeline.defs:defs`)."""

from __future__ import annotations

from dagster import AssetSelection, AutomationConditionSensorDefinition, DefaultSensorStatus, Definitions

from a2b_pipeline.defs.assets import ASSETS
from a2b_pipeline.defs.assets.cv import CV_ASSETS
from a2b_pipeline.defs.assets.leaderboard import LEADERBOARD_GROUP, leaderboard
from a2b_pipeline.defs.checks import CHECKS
from a2b_pipeline.defs.jobs import cv_job, data_refresh_job, experiment_job, leaderboard_job
from a2b_pipeline.defs.resources import default_resources
from a2b_pipeline.defs.schedules import retrain_schedule
from a2b_pipeline.defs.sensors import (
    corpus_change_sensor,
    experiment_configs_sensor,
    leaderboard_after_failure,
)

# Runs what declarative automation asks for (cv_summary, leaderboard); on by default, unlike Dagster's own.
automation_sensor = AutomationConditionSensorDefinition(
    "summaries_automation_sensor",
    target=AssetSelection.assets("cv_summary") | AssetSelection.groups(LEADERBOARD_GROUP),
    default_status=DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="Rebuilds cv_summary when a fold's evaluation changes and the leaderboard when any "
    "evaluation or CV summary does.",
)


def build_defs(resources: dict | None = None) -> Definitions:
    return Definitions(
        assets=[*ASSETS, *CV_ASSETS, leaderboard],
        asset_checks=CHECKS,
        jobs=[experiment_job, data_refresh_job, cv_job, leaderboard_job],
        schedules=[retrain_schedule],
        sensors=[
            experiment_configs_sensor,
            corpus_change_sensor,
            automation_sensor,
            leaderboard_after_failure,
        ],
        resources=resources or default_resources(),
    )


defs = build_defs()
