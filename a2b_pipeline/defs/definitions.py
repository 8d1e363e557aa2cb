"""The one `Definitions` object of the code location (workspace.yaml loads `a2b_pipeline.defs:defs`)."""

from __future__ import annotations

from dagster import Definitions

from a2b_pipeline.defs.assets import ASSETS
from a2b_pipeline.defs.checks import CHECKS
from a2b_pipeline.defs.jobs import data_refresh_job, experiment_job
from a2b_pipeline.defs.resources import default_resources
from a2b_pipeline.defs.schedules import retrain_schedule
from a2b_pipeline.defs.sensors import corpus_change_sensor, experiment_configs_sensor


def build_defs(resources: dict | None = None) -> Definitions:
    return Definitions(
        assets=ASSETS,
        asset_checks=CHECKS,
        jobs=[experiment_job, data_refresh_job],
        schedules=[retrain_schedule],
        sensors=[experiment_configs_sensor, corpus_change_sensor],
        resources=resources or default_resources(),
    )


defs = build_defs()
