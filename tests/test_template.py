"""The asset template (a2b_pipeline/defs/template.py), as a newcomer uses it: an asset written here, in the
test, the way its docstring says (a body that loads, calls, reports), materialized for real after the
package's corpus_manifest. What the template promises around the body: the record file with the
experiment, config hash and code version; the planned TrainState beside it; lineage metadata after the
asset's own, pinning the record by sha256; a DataVersion from the config hash and `version_parts`; a
refusal of an upstream built from another config; `failure` and a fold key that doesn't exist as failed
runs that say why.
"""

import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest
from _util import tiny_config
from dagster import AssetKey, AssetRecordsFilter, DagsterInstance, MultiPartitionKey, materialize

from a2b_pipeline.defs.assets import corpus_manifest
from a2b_pipeline.defs.common import sha256_json
from a2b_pipeline.defs.partitions import cv_experiments, experiment_folds, experiments, folds
from a2b_pipeline.defs.resources import ExperimentStore, TrainDevice, WandbTracking
from a2b_pipeline.defs.template import AssetStep, Produced, experiment_asset


@experiment_asset(
    code_version="3",
    reads=["corpus_manifest"],
    kinds={"python"},
    description="How many recordings each subject has.",
)
def recordings_per_subject(step: AssetStep) -> Produced:
    corpus = step.upstream["corpus_manifest"]
    per_subject = Counter(
        f"{d['name']}/{r['subject_id']}" for d in corpus["datasets"] for r in d["recordings"]
    )
    return Produced(
        record={"data_version": corpus["data_version"], "per_subject": dict(per_subject)},
        version_parts=[dict(per_subject)],
        metadata={"subjects": len(per_subject)},
        failure="asked to fail" if step.exp.cfg.train.max_steps == 7 else None,
    )


@experiment_asset(code_version="1", partitions_def=experiment_folds, group_name="a2b_cv")
def fold_number(step: AssetStep) -> Produced:
    return Produced(record={"fold": step.fold, "folds": step.folds}, version_parts=[step.fold])


def _write_config(tmp_path: Path, overrides: list[str]) -> None:
    config = tiny_config(tmp_path, ["name=exp", "data.split.folds=2", *overrides])
    (tmp_path / "configs" / "exp.yaml").write_text(config.to_yaml())


@pytest.fixture
def world(tmp_path: Path) -> dict:
    configs = tmp_path / "configs"
    configs.mkdir()
    _write_config(tmp_path, [])
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(experiments.name, ["exp"])
    instance.add_dynamic_partitions(cv_experiments.name, ["exp"])
    instance.add_dynamic_partitions(folds.name, ["0", "1", "2"])
    resources = {
        "store": ExperimentStore(data_root=str(tmp_path / "data"), configs_dir=str(configs)),
        "tracking": WandbTracking(mode="disabled"),
        "compute": TrainDevice(device="cpu"),
    }
    return {"tmp": tmp_path, "instance": instance, "resources": resources}


def _materialize(world: dict, assets: list, partition="exp"):
    return materialize(
        assets,
        instance=world["instance"],
        resources=world["resources"],
        partition_key=partition,
        raise_on_error=False,
    )


def _latest(instance: DagsterInstance, asset: str, partition="exp"):
    res = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey(asset), asset_partitions=[partition]), limit=1
    )
    return res.records[0].asset_materialization


def _failure(result) -> str:
    return result.get_step_failure_events()[0].event_specific_data.error.message


def test_an_asset_written_on_the_template_records_its_lineage(world):
    res = _materialize(world, [corpus_manifest, recordings_per_subject])
    assert res.success
    instance = world["instance"]
    corpus = _latest(instance, "corpus_manifest")
    mat = _latest(instance, "recordings_per_subject")
    md = {k: v.value for k, v in mat.metadata.items()}

    record_path = Path(md["record"])
    assert record_path.parent.name == "recordings_per_subject" and record_path.stem == res.run_id
    record = json.loads(record_path.read_text())
    assert hashlib.sha256(record_path.read_bytes()).hexdigest().startswith(md["record_sha256"])
    cfg_hash = corpus.metadata["config_hash"].value
    assert (
        record["experiment"] == "exp" and record["config_hash"] == cfg_hash and record["code_version"] == "3"
    )
    assert sum(record["per_subject"].values()) == corpus.metadata["recordings"].value
    # the asset's own metadata first, then the lineage; no training fields for a state that is only planned
    assert list(md)[0] == "subjects" and md["subjects"] == len(record["per_subject"])
    assert md["data_version"] == record["data_version"] == corpus.metadata["data_version"].value
    assert md["config_hash"] == cfg_hash and "status" not in md and "checkpoint" not in md
    planned = json.loads(Path(md["train_state"]).read_text())
    assert planned["status"] == "initialized" and planned["data_version"] == record["data_version"]
    assert mat.tags["dagster/data_version"] == sha256_json([cfg_hash, record["per_subject"]])[:20]


def test_the_template_refuses_another_configs_upstream_and_reports_a_failure(world):
    assert _materialize(world, [corpus_manifest]).success
    _write_config(world["tmp"], ["train.max_steps=7"])
    stale = _materialize(world, [recordings_per_subject])
    assert not stale.success
    assert "changed since corpus_manifest was materialized" in _failure(stale)

    res = _materialize(world, [corpus_manifest, recordings_per_subject])  # now of this config: the body fails
    assert not res.success and "asked to fail" in _failure(res)
    records = Path(_latest(world["instance"], "corpus_manifest").metadata["record"].value).parents[1]
    assert (records / "recordings_per_subject" / f"{res.run_id}.json").is_file()  # the record is kept


def test_a_fold_partition_names_the_fold_and_one_beyond_the_folds_fails(world):
    key = MultiPartitionKey({"experiment": "exp", "fold": "1"})
    assert _materialize(world, [fold_number], key).success
    record = json.loads(
        Path(_latest(world["instance"], "fold_number", key).metadata["record"].value).read_text()
    )
    assert record["fold"] == 1 and record["folds"] == 2
    beyond = _materialize(world, [fold_number], MultiPartitionKey({"experiment": "exp", "fold": "2"}))
    assert not beyond.success and "fold 2 doesn't exist (0..1)" in _failure(beyond)
