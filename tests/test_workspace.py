"""The workspace over time, as a researcher uses it: several experiments sharing generated corpora, the
sensors as shipped, and a fresh relaunch, all on the shipped configs (training cut to a few steps).

- no two shipped configs (or sweep experiments) describe one generated corpus folder differently;
- a synthetic corpus is written whole, and one made with other settings is refused, never rewritten;
- the run storm of issue #22: `a2b demo`, then the shipped `tcn` experiment materialized, then the sensors
  ticked as the daemon does: no corpus file changes, no refresh is requested;
- a `fresh: true` relaunch trains in a new run directory, and every file an earlier materialization
  recorded (records, TrainStates, checkpoints, reports, plots) still matches its digest.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from _util import ASSET_NAMES, REPO, tiny_config
from dagster import AssetKey, AssetRecordsFilter, DagsterInstance, build_sensor_context, materialize

from a2b_pipeline.data.corpora import list_recordings
from a2b_pipeline.data.corpora.synthetic import STAMP, SyntheticCorpusMismatch, folder_conflicts
from a2b_pipeline.defs.assets import ASSETS, experiments
from a2b_pipeline.defs.resources import ExperimentStore, QualityGate, TrainDevice, WandbTracking
from a2b_pipeline.state import TrainState


def test_no_two_shipped_experiments_describe_one_generated_folder_differently(tmp_path):
    store = ExperimentStore(data_root=str(tmp_path), configs_dir=str(REPO / "configs"))
    problems: list[str] = []
    names = store.experiments(problems)
    assert not problems
    assert {"demo", "tcn", "architectures.tcn", "strategy.ccc+mix-1to1"} <= set(names)
    configs = {name: store.rebase(store.load_config(name)) for name in names}
    assert folder_conflicts(configs) == []
    # and the check does catch a difference: the demo's corpus without `stimuli` (what tcn.yaml had)
    tcn = configs["tcn"].model_copy(deep=True)
    tcn.data.datasets[0].synthetic.stimuli = None
    (conflict,) = folder_conflicts({**configs, "tcn": tcn})
    stimuli = configs["demo"].data.datasets[0].synthetic.stimuli
    assert "synth_a" in conflict and f"'stimuli': {stimuli}" in conflict and "tcn" in conflict


def _files(root: Path) -> dict[str, tuple[int, int, str]]:
    """Every file under root: size, mtime (ns), sha256."""
    return {
        str(p.relative_to(root)): (
            p.stat().st_size,
            p.stat().st_mtime_ns,
            hashlib.sha256(p.read_bytes()).hexdigest(),
        )
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_a_synthetic_corpus_is_written_whole_and_never_rewritten_with_other_settings(tmp_path):
    cfg = tiny_config(tmp_path)
    ds = cfg.data.datasets[0]
    listing = list_recordings(ds, cfg.data)
    root = Path(ds.root)
    assert len(listing.recordings) == 8 and (root / "manifest.csv").is_file()
    assert json.loads((root / STAMP).read_text())["spec"]["subjects"] == 4
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]  # the temporary folder was renamed
    before = _files(root)
    assert (
        len(list_recordings(ds, cfg.data).recordings) == 8 and _files(root) == before
    )  # read, not rewritten

    other = tiny_config(tmp_path, ["data.datasets.0.synthetic.subjects=5"])
    with pytest.raises(SyntheticCorpusMismatch) as err:
        list_recordings(other.data.datasets[0], other.data)
    message = str(err.value)
    assert str(root) in message and "subjects: 4 on disk, 5 asked" in message and "synA" in message
    assert _files(root) == before

    # a folder with files but no manifest (half of a corpus from an older writer) is not written into
    half = tmp_path / "half"
    (half / "audio").mkdir(parents=True)
    (half / "audio" / "s01_r01.wav").write_bytes(b"RIFF")
    third = tiny_config(tmp_path, [f"data.datasets.0.root={half}"])
    with pytest.raises(ValueError, match="not a complete synthetic corpus"):
        list_recordings(third.data.datasets[0], third.data)


# ---- the shipped configs in one Dagster home: the demo, tcn, the sensors; then a fresh relaunch ----

SHORT_TRAINING = {"max_steps": 6, "log_every_n_steps": 3, "val_every_n_steps": 3}


def _shipped_configs(to: Path) -> Path:
    """configs/ as shipped (sweeps included), with the demo's and tcn's training cut to a few steps: the
    corpora, the data settings and the models are as shipped."""
    shutil.copytree(REPO / "configs", to)
    for name in ("demo", "tcn"):
        path = to / f"{name}.yaml"
        raw = yaml.safe_load(path.read_text())
        raw["train"].update(SHORT_TRAINING)
        raw["checkpoint"]["every_n_steps"] = 3
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return to


def _resources(root: Path, configs: Path) -> dict:
    return {
        "store": ExperimentStore(data_root=str(root), configs_dir=str(configs)),
        "tracking": WandbTracking(mode="disabled"),
        "compute": TrainDevice(device="cpu"),
        "quality": QualityGate(metric="test/pearson", floor=-1.0),
    }


def _materialize_all(
    instance: DagsterInstance, workspace: dict, partition: str, run_config: dict | None = None
):
    """The six experiment assets of one partition, as "Materialize all" does."""
    return materialize(
        [*ASSETS],
        instance=instance,
        resources=_resources(workspace["root"], workspace["configs"]),
        partition_key=partition,
        selection=[AssetKey(a) for a in ASSET_NAMES],
        run_config=run_config,
    )


class Daemon:
    """Ticks both sensors as the daemon does, each with its cursor kept between ticks, applying the
    partitions they register; collects every run request they make."""

    def __init__(self, instance: DagsterInstance, store: ExperimentStore):
        self.instance, self.store = instance, store
        self.cursors: dict[str, str | None] = {}
        self.requests: list = []

    def tick(self, times: int = 3) -> list:
        from a2b_pipeline.defs.sensors import corpus_change_sensor, experiment_configs_sensor

        for _ in range(times):
            for sensor in (experiment_configs_sensor, corpus_change_sensor):
                cursor = self.cursors.get(sensor.name)
                with build_sensor_context(
                    instance=self.instance, resources={"store": self.store}, cursor=cursor
                ) as ctx:
                    result = sensor(ctx)
                for req in result.dynamic_partitions_requests or []:
                    self.instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
                self.requests += result.run_requests or []
                self.cursors[sensor.name] = result.cursor
        return self.requests


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    from a2b_pipeline.cli.demo import run_demo

    tmp = tmp_path_factory.mktemp("workspace")
    configs = _shipped_configs(tmp / "configs")
    home, root = tmp / "home", tmp / "data"
    with open(tmp / "demo.out", "w") as out:
        code = run_demo(home, root, configs_dir=configs, tracking_mode="disabled", device="cpu", out=out)
    assert code == 0, (tmp / "demo.out").read_text()
    return {"home": home, "root": root, "configs": configs, "corpora": root / "data" / "demo"}


def test_demo_then_tcn_then_the_sensors_change_no_corpus_file_and_request_nothing(workspace):
    corpora = workspace["corpora"]
    after_demo = _files(corpora)
    assert {"synth_a/manifest.csv", "synth_b/manifest.csv"} <= set(after_demo)
    store = ExperimentStore(data_root=str(workspace["root"]), configs_dir=str(workspace["configs"]))
    with DagsterInstance.from_config(str(workspace["home"])) as instance:
        daemon = Daemon(instance, store)
        daemon.tick()  # the UI is open after the demo: the sensors tick, registering every shipped experiment
        assert len(instance.get_dynamic_partitions(experiments.name)) >= 13
        res = _materialize_all(instance, workspace, "tcn")  # "Materialize all" for tcn
        assert res.success
        assert _files(corpora) == after_demo  # tcn read the demo's corpora as they were
        daemon.tick()
    assert daemon.requests == []
    assert _files(corpora) == after_demo


def _short(digest: str, recorded: str) -> bool:
    return len(recorded) >= 16 and digest.startswith(recorded)


def _check_recorded_files(instance: DagsterInstance, partition: str) -> int:
    """Every file every materialization of the partition recorded, against its recorded digest; how many."""
    checked = 0
    for asset in ASSET_NAMES:
        records = instance.fetch_materializations(
            AssetRecordsFilter(asset_key=AssetKey(asset), asset_partitions=[partition]), limit=100
        ).records
        for rec in records:
            md = {k: v.value for k, v in rec.asset_materialization.metadata.items()}
            where = f"{asset} of run {rec.run_id}"
            record_path = Path(md["record"])
            assert _short(hashlib.sha256(record_path.read_bytes()).hexdigest(), md["record_sha256"]), where
            record = json.loads(record_path.read_text())
            assert Path(md["train_state"]).is_file(), where
            checked += 2
            if "checkpoint" in md:
                ckpt = Path(md["checkpoint"])
                sha = hashlib.sha256((ckpt / "train_state.json").read_bytes()).hexdigest()
                assert _short(sha, md["checkpoint_sha256"]), where
                state = TrainState.from_checkpoint(ckpt)  # every file of it against its own digest
                assert _short(state.checkpoint_state.files["model.safetensors"], md["model_digest"]), where
                checked += 1
            if asset == "best_checkpoint":
                assert (
                    hashlib.sha256((Path(record["checkpoint"]) / "train_state.json").read_bytes()).hexdigest()
                    == (record["checkpoint_sha256"])
                )
            if asset == "evaluation":
                for path_key, sha_key in (("report_path", "report_sha256"), ("plot", "plot_sha256")):
                    blob = Path(record[path_key]).read_bytes()
                    assert hashlib.sha256(blob).hexdigest() == record[sha_key], (where, path_key)
                    checked += 1
    return checked


def test_a_fresh_relaunch_trains_in_a_new_directory_and_every_recorded_file_still_checks_out(
    workspace, capsys
):
    with DagsterInstance.from_config(str(workspace["home"])) as instance:
        first = instance.fetch_materializations(
            AssetRecordsFilter(asset_key=AssetKey("training_run"), asset_partitions=["demo"]), limit=1
        ).records[0]
        first_dir = Path(first.asset_materialization.metadata["run_dir"].value)
        before = _files(first_dir)
        res = _materialize_all(
            instance, workspace, "demo", {"ops": {"training_run": {"config": {"fresh": True}}}}
        )
        assert res.success
        latest = instance.fetch_materializations(
            AssetRecordsFilter(asset_key=AssetKey("training_run"), asset_partitions=["demo"]), limit=1
        ).records[0]
        new_dir = Path(latest.asset_materialization.metadata["run_dir"].value)
        assert new_dir == first_dir.with_name(f"{first_dir.name}.attempt-2")
        assert latest.asset_materialization.metadata["resumed_from_step"].value == 0
        assert {n for n in before if not n.startswith(".a2b-lock")} <= set(_files(first_dir))
        assert all(_files(first_dir)[n] == before[n] for n in before if n != ".a2b-lock")  # untouched
        evaluations = instance.fetch_materializations(
            AssetRecordsFilter(asset_key=AssetKey("evaluation"), asset_partitions=["demo"]), limit=10
        ).records
        assert len(evaluations) == 2
        checked = _check_recorded_files(instance, "demo")
        # two launches: six records + TrainStates, three checkpoints, a report and a plot each
        assert checked == 2 * (6 * 2 + 3 + 2)
        # the relaunch's lineage leads to its own run; the first launch's still to the first run
        assert str(new_dir) in evaluations[0].asset_materialization.metadata["checkpoint"].value
        assert str(first_dir) + os.sep in evaluations[1].asset_materialization.metadata["checkpoint"].value

        # old runs go only on purpose: a dry run names the records it would orphan, then --apply
        from a2b_pipeline.cli import main

        first_record = Path(first.asset_materialization.metadata["record"].value)
        assert main(["remove-runs", str(first_dir)]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["would remove"] == [str(first_dir)] and str(first_record) in report["orphaned_records"]
        assert first_dir.is_dir()
        assert main(["remove-runs", str(first_dir), "--apply"]) == 0
        assert json.loads(capsys.readouterr().out)["removed"] == [str(first_dir)]
        assert not first_dir.exists() and TrainState.from_checkpoint(new_dir).status == "complete"
