"""Many experiments in Dagster, with real materializations on one instance: a 2x2 sweep registered as four
partitions by the configs sensor, a 3-fold cross-validation as experiment x fold partitions with its
summary, and the leaderboard over all of them (rebuilt by declarative automation, a failed experiment
marked as such)."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest
import yaml
from _util import tiny_config
from dagster import (
    AssetKey,
    AssetRecordsFilter,
    DagsterInstance,
    MultiPartitionKey,
    build_sensor_context,
    evaluate_automation_conditions,
    materialize,
)

from a2b_pipeline.defs.assets import ASSETS, experiments
from a2b_pipeline.defs.assets.cv import CV_ASSETS, cv_summary, fold_evaluation, fold_training_run
from a2b_pipeline.defs.assets.leaderboard import leaderboard
from a2b_pipeline.defs.definitions import build_defs
from a2b_pipeline.defs.partitions import cv_experiments, folds
from a2b_pipeline.defs.resources import ExperimentStore, QualityGate, TrainDevice, WandbTracking
from a2b_pipeline.experiments.sweeps import load_sweep

ALL = [*ASSETS, *CV_ASSETS, leaderboard]
SWEEP = [
    "lr_bs.lr-0.001+batch_size-4",
    "lr_bs.lr-0.001+batch_size-8",
    "lr_bs.lr-0.003+batch_size-4",
    "lr_bs.lr-0.003+batch_size-8",
]


def _md(instance: DagsterInstance, asset: str, partition: str | None = None) -> dict:
    res = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey(asset), asset_partitions=[partition] if partition else None),
        limit=1,
    )
    assert res.records, f"{asset} [{partition}] has no materialization"
    return {k: v.value for k, v in res.records[0].asset_materialization.metadata.items()}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("experiments")
    base = tiny_config(tmp, ["train.max_steps=2", "train.val_every_n_steps=2"]).model_dump(mode="json")
    configs = tmp / "configs"
    (configs / "sweeps").mkdir(parents=True)
    sweep = configs / "sweeps" / "lr_bs.yaml"
    sweep.write_text(
        yaml.safe_dump(
            {"base": base, "grid": {"optimizer.lr": [0.001, 0.003], "data.batch_size": [4, 8]}},
            sort_keys=False,
        )
    )
    (configs / "cvexp.yaml").write_text(
        yaml.safe_dump({**base, "name": "cvexp", "data": {**base["data"], "split": {"folds": 3}}})
    )
    broken = {**base, "name": "broken"}
    broken["data"] = {
        **base["data"],
        "datasets": [{"name": "gone", "type": "manifest", "manifest": str(tmp / "no.csv")}],
    }
    (configs / "broken.yaml").write_text(yaml.safe_dump(broken))
    resources = {
        "store": ExperimentStore(data_root=str(tmp / "data"), configs_dir=str(configs)),
        "tracking": WandbTracking(mode="disabled"),
        "compute": TrainDevice(device="cpu"),
        "quality": QualityGate(metric="test/pearson", floor=-1.0),
    }
    return {
        "tmp": tmp,
        "configs": configs,
        "sweep": sweep,
        "resources": resources,
        "instance": DagsterInstance.ephemeral(),
    }


def test_sensor_registers_a_2x2_sweep_as_four_partitions_and_cv_folds(world):
    from a2b_pipeline.defs.sensors import experiment_configs_sensor

    instance, store = world["instance"], world["resources"]["store"]
    result = experiment_configs_sensor(build_sensor_context(instance=instance, resources={"store": store}))
    for req in result.dynamic_partitions_requests:
        instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
    assert instance.get_dynamic_partitions(experiments.name) == sorted(["broken", "cvexp", *SWEEP])
    assert [e.name for e in load_sweep(world["sweep"]).experiments] == SWEEP  # as `a2b sweep` lists them
    assert instance.get_dynamic_partitions(cv_experiments.name) == ["cvexp"]
    assert instance.get_dynamic_partitions(folds.name) == ["0", "1", "2"]
    again = experiment_configs_sensor(
        build_sensor_context(instance=instance, resources={"store": store}, cursor=result.cursor)
    )
    assert not again.dynamic_partitions_requests and not again.run_requests

    # a sweep partition materializes like any config file's, with its own overrides
    res = materialize(
        ALL, instance=instance, resources=world["resources"], partition_key=SWEEP[1], selection=ASSETS
    )
    assert res.success
    from a2b_pipeline.state import TrainState

    state = TrainState.from_checkpoint(Path(_md(instance, "evaluation", SWEEP[1])["checkpoint"]))
    assert state.config.optimizer.lr == 0.001 and state.config.data.batch_size == 8
    assert state.config.name == SWEEP[1]
    assert _md(instance, "evaluation", SWEEP[1])["config_file"] == str(world["sweep"])
    config = {
        r.data["setting"]: r.data["value"] for r in _md(instance, "evaluation", SWEEP[1])["config"].records
    }
    assert config["overrides"] == "optimizer.lr=0.001, data.batch_size=8"  # what makes it this experiment

    # an experiment that fails (its manifest is gone): a failed run in the instance
    res = materialize(
        ALL,
        instance=instance,
        resources=world["resources"],
        partition_key="broken",
        selection=ASSETS,
        raise_on_error=False,
    )
    assert not res.success


def test_three_fold_cv_partitions_and_summary(world):
    instance = world["instance"]
    for k in range(3):
        key = MultiPartitionKey({"experiment": "cvexp", "fold": str(k)})
        res = materialize(
            ALL,
            instance=instance,
            resources=world["resources"],
            partition_key=key,
            selection=[fold_training_run, fold_evaluation],
        )
        assert res.success
    tested = [
        set(
            _md(instance, "fold_evaluation", MultiPartitionKey({"experiment": "cvexp", "fold": str(k)}))[
                "test_groups"
            ]["subject"]
        )
        for k in range(3)
    ]
    assert all(tested) and not (tested[0] & tested[1] or tested[0] & tested[2] or tested[1] & tested[2])
    assert len(set().union(*tested)) == 8  # every subject of both datasets held out once

    res = materialize(
        ALL, instance=instance, resources=world["resources"], partition_key="cvexp", selection=[cv_summary]
    )
    assert res.success
    md = _md(instance, "cv_summary", "cvexp")
    assert md["folds"] == 3 and md["folds_evaluated"] == 3 and md["problems"] == []
    summary = json.loads(Path(md["cv_summary"]).read_text())
    reports = [json.loads(Path(r["report"]).read_text()) for r in summary["fold_results"]]
    for key in ("metrics/test/pearson", "model/recording/pearson/eda"):
        values = [
            rep["metrics"]["test/pearson"]
            if key.startswith("metrics")
            else rep["summary"]["predictors"]["model"]["recording"]["pearson"]["eda"]["value"]
            for rep in reports
        ]
        assert summary["stats"][key]["mean"] == pytest.approx(statistics.fmean(values))
        assert summary["stats"][key]["std"] == pytest.approx(statistics.stdev(values))
    assert "model/recording/pearson/mean" in md["summary"]


def test_leaderboard_lists_every_experiment_marks_failed_and_rebuilds_on_evaluation(world):
    instance, resources = world["instance"], world["resources"]
    defs = build_defs(resources)
    first = evaluate_automation_conditions(defs=defs, instance=instance)
    assert first.get_num_requested(AssetKey("leaderboard")) == 1  # evaluations exist, no leaderboard yet

    res = materialize(ALL, instance=instance, resources=resources, selection=[leaderboard])
    assert res.success
    md = _md(instance, "leaderboard")
    rows = {r["experiment"]: r for r in csv.DictReader(Path(md["csv"]).read_text().splitlines())}
    assert set(rows) == {"broken", "cvexp", *SWEEP}
    assert rows[SWEEP[1]]["status"] == "evaluated"
    # from the evaluation record's report: whole recordings, with intervals and margins over baselines
    report = json.loads(Path(_md(instance, "evaluation", SWEEP[1])["record"]).read_text())["report"]
    model = report["summary"]["predictors"]["model"]["recording"]["pearson"]
    assert rows[SWEEP[1]]["level"] == "recording"
    assert float(rows[SWEEP[1]]["pearson_eda"]) == model["eda"]["value"]
    assert float(rows[SWEEP[1]]["pearson_eda_low"]) == model["eda"]["ci_low"]
    margin = report["summary"]["margins"]["audio_linear"]["recording"]["pearson"]["mean"]["value"]
    assert float(rows[SWEEP[1]]["margin_audio_linear"]) == margin
    assert (
        rows[SWEEP[1]]["steps"] == "2"
        and rows[SWEEP[1]]["checkpoint"] == _md(instance, "evaluation", SWEEP[1])["checkpoint"]
    )
    assert rows["broken"]["status"] == "failed"
    assert {rows[n]["status"] for n in (SWEEP[0], SWEEP[2], SWEEP[3])} == {"missing"}
    assert rows["cvexp"]["kind"] == "cv (3 folds)" and rows["cvexp"]["status"] == "evaluated"
    summary = json.loads(Path(_md(instance, "cv_summary", "cvexp")["cv_summary"]).read_text())
    assert float(rows["cvexp"]["pearson_mean"]) == summary["stats"]["model/recording/pearson/mean"]["mean"]
    # the files live under the data root's data/ tree, not loose in it (nor in the repository)
    assert Path(md["csv"]).parent == world["tmp"] / "data" / "data" / "leaderboard"
    table = (Path(md["csv"]).parent / "leaderboard.md").read_text().strip()
    assert "| broken | run | **failed** | conv_gru | gone |" in table
    assert md["rows"] == 6 and md["evaluated"] == 2
    assert md["plot"].startswith("![leaderboard](data:image/png;base64,")
    inline = {r.data["experiment"]: r.data for r in md["leaderboard"].records}  # a table the UI shows inline
    assert inline["broken"]["status"] == "failed" and inline[SWEEP[1]]["status"] == "evaluated"
    assert inline[SWEEP[1]]["better than audio_linear by"].startswith(f"{margin:.3f}")

    # handled: nothing to do until an evaluation changes; then the leaderboard (only) is requested again
    second = evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
    assert second.get_num_requested(AssetKey("leaderboard")) == 0
    res = materialize(
        ALL,
        instance=instance,
        resources=resources,
        partition_key=SWEEP[1],
        selection=[AssetKey("evaluation")],
    )
    assert res.success
    third = evaluate_automation_conditions(defs=defs, instance=instance, cursor=second.cursor)
    assert third.get_num_requested(AssetKey("leaderboard")) == 1
    assert third.get_num_requested(AssetKey("cv_summary")) == 0

    # a later run of an evaluated experiment fails (its checkpoint is gone): the row says failed
    ckpt = Path(_md(instance, "evaluation", SWEEP[1])["checkpoint"])
    (ckpt / "train_state.json").unlink()
    res = materialize(
        ALL,
        instance=instance,
        resources=resources,
        partition_key=SWEEP[1],
        selection=[AssetKey("evaluation")],
        raise_on_error=False,
    )
    assert not res.success
    # the failure itself asks for the leaderboard again (no evaluation materialized to trigger it)
    from dagster import RunRequest, build_run_status_sensor_context

    from a2b_pipeline.defs.sensors import leaderboard_after_failure

    ctx = build_run_status_sensor_context(
        sensor_name=leaderboard_after_failure.name,
        dagster_instance=instance,
        dagster_run=res.dagster_run,
        dagster_event=res.get_run_failure_event(),
    ).for_run_failure()
    request = leaderboard_after_failure(ctx)
    assert isinstance(request, RunRequest) and res.dagster_run.run_id in request.run_key
    assert materialize(ALL, instance=instance, resources=resources, selection=[leaderboard]).success
    md = _md(instance, "leaderboard")
    rows = {r["experiment"]: r for r in csv.DictReader(Path(md["csv"]).read_text().splitlines())}
    assert rows[SWEEP[1]]["status"] == "failed" and "failed after this evaluation" in rows[SWEEP[1]]["note"]
    assert rows[SWEEP[1]]["pearson_eda"] != ""  # the numbers of the last good evaluation stay visible
