"""The Dagster layer, end to end on a tiny config: real files, a real instance, no mocks.

- the whole graph materialized in-process (through `run_demo`, into a persistent DAGSTER_HOME) and its
  lineage: evaluation -> checkpoint -> TrainState -> config hash + data version of dataset_splits;
- staleness: a changed config gives corpus_manifest a new data version and marks downstream stale;
- the real webserver on a free 127.0.0.1 port, queried over GraphQL for the asset graph;
- `dagster definitions validate` and `dagster asset list`;
- a training_run materialization interrupted (SIGTERM / SIGKILL) resumes from its checkpoint;
- checks failing where they should, sensors and the schedule, no secret in metadata.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest
from _util import ASSET_NAMES, LOOPBACK, dagster_env, free_port, listening_sockets, serving, tiny_config
from dagster import (
    AssetCheckKey,
    AssetCheckSeverity,
    AssetKey,
    AssetRecordsFilter,
    AssetSelection,
    DagsterInstance,
    build_schedule_context,
    build_sensor_context,
    materialize,
)

from a2b_pipeline.defs import defs
from a2b_pipeline.defs.assets import ASSETS, experiments
from a2b_pipeline.defs.checks import CHECKS
from a2b_pipeline.defs.resources import ExperimentStore, QualityGate, TrainDevice, WandbTracking

REPO = Path(__file__).resolve().parents[1]
# cross-validation (experiment x fold) and the leaderboard over everything (tests/test_dagster_experiments.py)
MORE_ASSET_NAMES = ["fold_training_run", "fold_evaluation", "cv_summary", "leaderboard"]
FAKE_KEY = "0123456789abcdef0123456789abcdef01234567"  # looks like a wandb key; must never show up


def torch_cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _write_config(configs: Path, name: str, tmp: Path, overrides: list[str]) -> Path:
    configs.mkdir(parents=True, exist_ok=True)
    path = configs / f"{name}.yaml"
    path.write_text(tiny_config(tmp, [f"name={name}", *overrides]).to_yaml())
    return path


def _resources(root: Path, configs: Path, floor: float = -1.0) -> dict:
    return {
        "store": ExperimentStore(data_root=str(root), configs_dir=str(configs)),
        "tracking": WandbTracking(mode="disabled"),
        "compute": TrainDevice(device="cpu"),
        "quality": QualityGate(metric="test/pearson", floor=floor),
    }


def _latest(instance: DagsterInstance, asset: str, partition: str):
    res = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey(asset), asset_partitions=[partition]), limit=1
    )
    return res.records[0].asset_materialization if res.records else None


def _md(mat) -> dict:
    return {k: v.value for k, v in mat.metadata.items()}


# ---- the whole graph, once per module, in a persistent DAGSTER_HOME ----


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from a2b_pipeline.cli.demo import run_demo

    tmp = tmp_path_factory.mktemp("dagster_demo")
    configs = tmp / "configs"
    _write_config(configs, "demo", tmp, [])
    home, root = tmp / "home", tmp / "data"
    old = os.environ.get("WANDB_API_KEY")
    os.environ["WANDB_API_KEY"] = FAKE_KEY
    log = tmp / "demo.out"
    try:
        with open(log, "w") as out:
            code = run_demo(home, root, configs_dir=configs, tracking_mode="disabled", device="cpu", out=out)
    finally:
        if old is None:
            os.environ.pop("WANDB_API_KEY", None)
        else:
            os.environ["WANDB_API_KEY"] = old
    return {"code": code, "home": home, "root": root, "configs": configs, "tmp": tmp, "out": log.read_text()}


def test_demo_materializes_everything_and_says_where_to_look(demo):
    assert demo["code"] == 0, demo["out"]
    out = demo["out"]
    assert f"DAGSTER_HOME={demo['home']}" in out and "dagster dev" in out and "127.0.0.1:3000" in out
    with DagsterInstance.from_config(str(demo["home"])) as instance:
        for name in ASSET_NAMES:
            assert _latest(instance, name, "demo") is not None, name
        assert instance.get_dynamic_partitions(experiments.name) == ["demo"]


def test_lineage_from_evaluation_back_to_config_and_data(demo):
    from a2b_pipeline.state import TrainState

    with DagsterInstance.from_config(str(demo["home"])) as instance:
        md = {name: _md(_latest(instance, name, "demo")) for name in ASSET_NAMES}
        ev_mat = _latest(instance, "evaluation", "demo")
    splits, run, best, ev = md["dataset_splits"], md["training_run"], md["best_checkpoint"], md["evaluation"]

    # evaluation names the checkpoint best_checkpoint recorded, with the same sha256
    assert ev["checkpoint"] == best["checkpoint"]
    assert ev["checkpoint_sha256"] == best["checkpoint_sha256"]
    ckpt = Path(ev["checkpoint"])
    full = hashlib.sha256((ckpt / "train_state.json").read_bytes()).hexdigest()
    assert len(ev["checkpoint_sha256"]) == 16 and full.startswith(ev["checkpoint_sha256"])  # as shown
    # ... whose TrainState names the config hash and data version that dataset_splits recorded
    state = TrainState.from_checkpoint(ckpt)
    assert ev["train_state"] == str(ckpt / "train_state.json")
    assert state.config_hash == splits["config_hash"] == ev["config_hash"]
    assert state.data_version == splits["data_version"] == ev["data_version"]
    # the best checkpoint: the final one (complete) or an earlier one whose validation scored higher
    assert state.global_step == best["best_step"]
    assert state.status == ("complete" if state.global_step == 6 else "in_progress")
    assert run["status"] == "complete" and run["global_step"] == 6
    assert best["best_metric"] == "val/pearson" and best["best_step"] == state.checkpoint_state.best_step
    # every asset carries the same config hash; the records on disk match their sha256
    assert {m["config_hash"] for m in md.values()} == {state.config_hash}
    for m in md.values():
        rec = Path(m["record"])
        assert hashlib.sha256(rec.read_bytes()).hexdigest().startswith(m["record_sha256"])
        # no text value wider than the UI's value column (digests were cut at its edge)
        assert all(len(v) <= 40 for k, v in m.items() if "sha256" in k or "digest" in k), m
        assert Path(m["train_state"]).exists()
    # test metrics and the plot (inline PNG and a file)
    assert {"test/pearson", "test/mse", "test/loss"} <= set(ev)
    assert ev["plot"].startswith("![") and "data:image/png;base64," in ev["plot"]
    assert Path(ev["plot_path"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # ... the full evaluation: the record and the run's evaluation-test.json hold the same report, with
    # the model and every baseline; the UI shows its summary table
    record = json.loads(Path(ev["record"]).read_text())
    report = record["report"]
    assert json.loads(Path(ev["report_path"]).read_text()) == report
    assert Path(ev["report_path"]) == ckpt.parent / "evaluation-test.json"
    assert set(report["summary"]["predictors"]) == {"model", "constant", "other_listeners", "audio_linear"}
    assert report["summary"]["predictors"]["model"]["recording"]["pearson"]["mean"]["value"] is not None
    headline = report["summary"]["predictors"]["model"]["recording"]["pearson"]["mean"]["value"]
    summary_rows = {r.data["predictor"]: r.data for r in ev["summary"].records}  # a table shown inline
    assert {"model", "audio_linear", "better than audio_linear by"} <= set(summary_rows)
    assert summary_rows["model"]["pearson mean"].startswith(f"{headline:.3f}")
    # which config produced it, in a few lines, on every asset a training run feeds
    for name in ("training_run", "best_checkpoint", "evaluation"):
        config = {r.data["setting"]: r.data["value"] for r in md[name]["config"].records}
        assert config["model"].startswith(f"{state.config.model.name}, ") and "params" in config["model"]
        assert config["optimizer"].startswith(f"{state.config.optimizer.name}, lr ")
        assert config["group_by"] == "subject" and config["steps"] == "6" and "weight" in config["datasets"]
    assert ev["recording_r/model"] == float(f"{headline:.4g}")  # rounded for reading; full in the record
    assert splits["group_by"] == "subject" and splits["dropped_count"] == 0
    # the corpus listing: recordings and skipped count; dataset_splits' windows
    cm = md["corpus_manifest"]
    assert cm["recordings"] == 16 and cm["skipped_count"] == 0
    assert splits["train_windows"] > 0 and splits["test_windows"] > 0
    # Dagster data versions: the downstream run pinned the upstream version it read
    assert ev_mat.tags.get("dagster/data_version")
    assert "dagster/input_data_version/best_checkpoint" in ev_mat.tags


def test_checks_ran_and_passed(demo):
    with DagsterInstance.from_config(str(demo["home"])) as instance:
        for asset, check in [
            ("corpus_manifest", "corpus_files_readable"),
            ("dataset_splits", "targets_finite"),
            ("dataset_splits", "split_coverage"),
            ("evaluation", "evaluation_metrics_ok"),
        ]:
            rec = instance.event_log_storage.get_latest_asset_check_execution_by_key(
                [AssetCheckKey(AssetKey(asset), check)]
            )
            ev = rec[AssetCheckKey(AssetKey(asset), check)]
            assert ev.evaluation, (asset, check)
            if check == "evaluation_metrics_ok" and not ev.evaluation.passed:
                # a 6-step model need not beat its baselines: the gate warns (never errors), saying by what
                md = {k: v.value for k, v in ev.evaluation.metadata.items()}
                assert ev.evaluation.severity == AssetCheckSeverity.WARN, md
                assert md["verdict"].startswith("WARN") and md["best_baseline"], md
            else:
                assert ev.evaluation.passed, (asset, check)
            # each experiment's checks are its own: the result is tied to the partition
            assert ev.evaluation.partition == "demo", (asset, check, ev.evaluation.partition)


def test_a_record_rewritten_after_its_materialization_is_refused_downstream(demo):
    """The page shows a record's sha256 cut to 16 hex digits; that is still what the next asset checks."""
    with DagsterInstance.from_config(str(demo["home"])) as instance:
        record = Path(_md(_latest(instance, "best_checkpoint", "demo"))["record"])
        original = record.read_bytes()
        record.write_bytes(original.replace(b'"step"', b'"step" ', 1))  # same JSON, other bytes
        try:
            res = materialize(
                [*ASSETS],
                instance=instance,
                resources=_resources(demo["root"], demo["configs"]),
                partition_key="demo",
                selection=[AssetKey("evaluation")],
                raise_on_error=False,
            )
        finally:
            record.write_bytes(original)
        assert not res.success
        (failure,) = [e for e in res.all_events if e.is_step_failure]
        text = str(failure.step_failure_data.error.message)
        assert f"{record} changed after its materialization was recorded" in text, text


def test_no_secret_in_metadata_or_logs(demo):
    with DagsterInstance.from_config(str(demo["home"])) as instance:
        runs = instance.get_runs()
        assert runs
        for run in runs:
            for event in instance.all_logs(run.run_id):
                assert FAKE_KEY not in repr(event), event
    for path in demo["root"].rglob("*"):
        if path.is_file() and path.suffix in (".json", ".yaml", ".log", ".txt"):
            assert FAKE_KEY not in path.read_text(errors="ignore"), path


def test_changed_config_gives_new_data_version_and_marks_downstream_stale(demo, tmp_path):
    from dagster._core.definitions.data_version import StaleStatus
    from dagster._utils.test.data_versions import get_stale_status_resolver

    home = demo["home"]
    with DagsterInstance.from_config(str(home)) as instance:
        old = _latest(instance, "corpus_manifest", "demo")
        before = old.tags["dagster/data_version"]
        fresh = get_stale_status_resolver(instance, ASSETS)
        assert fresh.get_status(AssetKey("evaluation"), "demo") == StaleStatus.FRESH
        # a changed data setting: re-materialize corpus_manifest only
        configs = tmp_path / "configs"
        _write_config(configs, "demo", demo["tmp"], ["data.hop_seconds=2.0"])
        res = materialize(
            [*ASSETS],
            instance=instance,
            resources=_resources(demo["root"], configs),
            partition_key="demo",
            selection=[AssetKey("corpus_manifest")],
        )
        assert res.success
        new = _latest(instance, "corpus_manifest", "demo")
        after = new.tags["dagster/data_version"]
        assert after != before
        # the older materialization's record and TrainState are files of its own, left as they were
        old_md, new_md = _md(old), _md(new)
        assert old_md["record"] != new_md["record"] and old_md["train_state"] != new_md["train_state"]
        old_sha = hashlib.sha256(Path(old_md["record"]).read_bytes()).hexdigest()
        assert old_sha.startswith(old_md["record_sha256"])
        old_state = json.loads(Path(old_md["train_state"]).read_text())
        assert old_state["config"]["data"]["hop_seconds"] == 4.0
        assert json.loads(Path(new_md["train_state"]).read_text())["config"]["data"]["hop_seconds"] == 2.0
        resolver = get_stale_status_resolver(instance, ASSETS)
        assert resolver.get_status(AssetKey("dataset_splits"), "demo") == StaleStatus.STALE
        causes = resolver.get_stale_causes(AssetKey("dataset_splits"), "demo")
        assert any(c.dependency and c.dependency.asset_key == AssetKey("corpus_manifest") for c in causes), (
            causes
        )
        # and the downstream guard refuses to run on a config its upstream was not built from
        res = materialize(
            [*ASSETS],
            instance=instance,
            resources=_resources(demo["root"], demo["configs"]),
            partition_key="demo",
            selection=[AssetKey("dataset_splits")],
            raise_on_error=False,
        )
        assert not res.success
        failure = res.get_step_failure_events()[0].event_specific_data.error.message
        assert "changed since corpus_manifest was materialized" in failure


def test_evaluation_check_fails_below_its_floor(demo):
    from a2b_pipeline.defs.checks import evaluation_metrics_ok

    # with its asset (whose inputs did not change: reused, nothing recomputed), for the experiment's partition
    with DagsterInstance.from_config(str(demo["home"])) as instance:
        res = materialize(
            [*ASSETS, *CHECKS],
            instance=instance,
            resources=_resources(demo["root"], demo["configs"], floor=1.5),
            selection=AssetSelection.checks(evaluation_metrics_ok) | AssetSelection.assets("evaluation"),
            partition_key="demo",
            raise_on_error=False,
        )
    (ev,) = res.get_asset_check_evaluations()
    assert (
        not ev.passed and "demo: test/pearson" in ev.description and "below the floor 1.5" in ev.description
    )
    assert ev.partition == "demo"
    # a floor or a baseline the model does not reliably beat is a warning; errors are for broken metrics
    assert ev.severity == AssetCheckSeverity.WARN
    md = {k: v.value for k, v in ev.metadata.items()}
    assert {"better than audio_linear by", "verdict"} <= set(md) and "audio_linear" in md["margins"]
    assert "constant" not in md["margins"]  # a constant's r, and so its margin, is undefined


def test_relaunch_reuses_the_complete_run_and_its_evaluation_and_says_so(demo):
    selection = [AssetKey(a) for a in ("training_run", "best_checkpoint", "evaluation")]
    with DagsterInstance.from_config(str(demo["home"])) as instance:
        before = _md(_latest(instance, "evaluation", "demo"))
        res = materialize(
            [*ASSETS, *CHECKS],
            instance=instance,
            resources=_resources(demo["root"], demo["configs"]),
            partition_key="demo",
            selection=selection,
        )
        assert res.success
        run = _latest(instance, "training_run", "demo")
        ev = _latest(instance, "evaluation", "demo")
        tags = instance.get_run_by_id(res.run_id).tags
    # "reused" is the first row of each page, a tag on the materialization and on the run
    for mat in (run, ev):
        assert next(iter(mat.metadata)) == "reused" and mat.metadata["reused"].value.startswith("yes")
        assert mat.tags.get("a2b/reused") == "true"
    assert tags.get("a2b/reused_training_run") == "true" and tags.get("a2b/reused_evaluation") == "true"
    # nothing recomputed: the same checkpoint, metrics and plot file
    after = _md(ev)
    assert (
        after["plot_path"] == before["plot_path"]
        and after["checkpoint_sha256"] == before["checkpoint_sha256"]
    )
    assert {k: v for k, v in after.items() if k.startswith("test/")} == {
        k: v for k, v in before.items() if k.startswith("test/")
    }
    # the training page shows the loss curve first; the evaluation page shows the plot first
    assert (
        list(run.metadata)[1] == "loss_curve" and "data:image/png;base64," in run.metadata["loss_curve"].value
    )
    assert list(ev.metadata)[1] == "plot"


def test_rebase_finds_every_path_field_by_its_type(tmp_path):
    """ExperimentStore.rebase makes each `ConfigPath` field absolute under the data root (URLs and
    absolute paths stay) without a list of field names; the config it was given is left unchanged."""
    from a2b_pipeline.configs import config_from_dict

    raw = tiny_config(tmp_path).model_dump(mode="json")
    raw["data"]["datasets"] = [
        {"name": "m", "type": "manifest", "manifest": "corpora/m.csv"},
        {"name": "h", "type": "hku956", "root": "s3://bucket/HKU956", "audio_dir": "audio/hku"},
    ]
    raw["data"]["cache_dir"] = "cache"
    raw["checkpoint"]["dir"] = "/abs/runs"
    raw["model"] = {"name": "pretrained_encoder", "weights": "enc.safetensors"}
    cfg = config_from_dict(raw)
    root = tmp_path / "root"
    rebased = ExperimentStore(data_root=str(root), configs_dir=str(tmp_path)).rebase(cfg)
    assert rebased.data.datasets[0].manifest == str(root / "corpora/m.csv")
    assert rebased.data.datasets[1].root == "s3://bucket/HKU956"
    assert rebased.data.datasets[1].audio_dir == str(root / "audio/hku")
    assert rebased.data.cache_dir == str(root / "cache") and rebased.checkpoint.dir == "/abs/runs"
    assert rebased.model.weights == str(root / "enc.safetensors")
    assert cfg.data.datasets[0].manifest == "corpora/m.csv"  # a copy was rebased


# ---- the real webserver and the CLI ----


def _graphql(port: int, query: str) -> dict:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        body = json.loads(r.read())
    assert "errors" not in body, body
    return body["data"]


@pytest.mark.slow
def test_webserver_on_localhost_serves_the_asset_graph_and_the_demo(demo, tmp_path):
    port = free_port()
    env = dagster_env(
        DAGSTER_HOME=str(demo["home"]),
        A2B_DATA_ROOT=str(demo["root"]),
        A2B_CONFIGS_DIR=str(demo["configs"]),
    )
    with serving("dagster-webserver", port, env, tmp_path / "webserver.log"):
        addresses = {ip for ip, p, _ in listening_sockets() if p == port}
        assert addresses and addresses <= LOOPBACK, addresses
        data = _graphql(port, "{ assetNodes { assetKey { path } dependencyKeys { path } opNames } }")
        nodes = {n["assetKey"]["path"][-1]: n for n in data["assetNodes"]}
        assert set(ASSET_NAMES) <= set(nodes), sorted(nodes)
        for up, down in zip(ASSET_NAMES, ASSET_NAMES[1:], strict=False):
            deps = [d["path"][-1] for d in nodes[down]["dependencyKeys"]]
            assert deps == [up], (down, deps)
        assert nodes["corpus_manifest"]["dependencyKeys"] == []
        # the demo's materialization is what the UI shows for partition "demo"
        data = _graphql(
            port,
            """{ assetOrError(assetKey: {path: ["evaluation"]}) { ... on Asset {
                 assetMaterializations(partitions: ["demo"], limit: 1) { partition runId
                   metadataEntries { label ... on PathMetadataEntry { path } } } } } }""",
        )
        (mat,) = data["assetOrError"]["assetMaterializations"]
        assert mat["partition"] == "demo"
        paths = {e["label"]: e.get("path") for e in mat["metadataEntries"]}
        assert paths["checkpoint"] and Path(paths["checkpoint"]).is_dir()
        assert "plot" in paths
    assert f"http://127.0.0.1:{port}" in (tmp_path / "webserver.log").read_text()


@pytest.mark.slow
def test_cli_validates_workspace_and_lists_the_assets(tmp_path):
    bindir = Path(sys.executable).parent
    env = dagster_env(DAGSTER_HOME=str(tmp_path))
    commands = {
        "validate": [str(bindir / "dagster"), "definitions", "validate", "-w", "workspace.yaml"],
        "list": [str(bindir / "dagster"), "asset", "list", "-m", "a2b_pipeline.defs"],
    }
    procs = {
        k: subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for k, cmd in commands.items()
    }
    out = {k: (p.communicate(timeout=180), p.returncode) for k, p in procs.items()}
    (stdout, stderr), code = out["validate"]
    assert code == 0, stdout + stderr
    (stdout, stderr), code = out["list"]
    assert code == 0, stderr
    listed = [line.strip() for line in stdout.splitlines() if line.strip()]
    assert sorted(listed) == sorted(ASSET_NAMES + MORE_ASSET_NAMES), stdout


def test_code_location_loads_without_torch_and_tags_training_for_a_gpu():
    code = textwrap.dedent(
        """
        import sys, json
        from a2b_pipeline.defs import defs
        g = defs.resolve_asset_graph()
        tr = defs.resolve_assets_def("training_run")
        print(json.dumps({"torch": "torch" in sys.modules,
                          "assets": sorted(k.to_user_string() for k in g.get_all_asset_keys()),
                          "tags": dict(tr.op.tags), "pool": tr.op.pool}))
        """
    )
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=dagster_env(), capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout.strip().splitlines()[-1])
    assert info["torch"] is False
    assert info["assets"] == sorted(ASSET_NAMES + MORE_ASSET_NAMES)
    assert info["tags"]["gpu"] == "1" and "nvidia.com/gpu" in json.dumps(info["tags"]["dagster-k8s/config"])
    assert info["pool"] == "gpu"
    job = defs.resolve_job_def("experiment_job")
    assert job.tags["gpu"] == "1" and "nvidia.com/gpu" in job.tags["dagster-k8s/config"]


# ---- interrupt and resume ----

_TRAIN_SCRIPT = """
import sys
from dagster import AssetKey, DagsterInstance, materialize
from a2b_pipeline.defs.assets import ASSETS
from a2b_pipeline.defs.resources import default_resources
with DagsterInstance.from_config(sys.argv[1]) as instance:
    r = materialize(ASSETS, instance=instance, resources=default_resources(), partition_key="resume",
                    selection=[AssetKey("training_run")], raise_on_error=False)
sys.exit(0 if r.success else 3)
"""


def _attempt(script: Path, home: Path, env: dict, run_dir: Path, after_step: int, sig: int, log: Path) -> int:
    """Materialize training_run in a subprocess; once a checkpoint past `after_step` exists, send `sig`."""
    from a2b_pipeline.checkpoint.directory import STEP_DIR, list_checkpoints

    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, str(script), str(home)], cwd=REPO, env=env, stdout=out, stderr=out
        )
        deadline = time.monotonic() + 180
        while not any(int(STEP_DIR.match(c.name)[1]) > after_step for c in list_checkpoints(run_dir)):
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(sig)
        return proc.wait(timeout=60)


@pytest.mark.slow
def test_interrupted_training_run_resumes_from_its_checkpoint(tmp_path):
    """Attempt 1 is SIGKILLed after its first checkpoint, attempt 2 resumes and is SIGTERMed (it stops
    cleanly with a checkpoint), attempt 3 resumes from that one and completes: no attempt starts over."""
    from a2b_pipeline.state import TrainState

    configs, root, home = tmp_path / "configs", tmp_path / "data", tmp_path / "home"
    overrides = ["train.max_steps=24", "checkpoint.every_n_steps=2", "train.val_every_n_steps=12"]
    _write_config(configs, "resume", tmp_path, [*overrides, "checkpoint.keep_last=50"])
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    with DagsterInstance.from_config(str(home)) as instance:
        instance.add_dynamic_partitions(experiments.name, ["resume"])
        res = materialize(
            ASSETS,
            instance=instance,
            resources=_resources(root, configs),
            partition_key="resume",
            selection=[AssetKey(a) for a in ASSET_NAMES[:3]],
        )
        assert res.success
        splits = _md(_latest(instance, "dataset_splits", "resume"))
    # the run directory the data assets planned (config hash + data version)
    planned = json.loads(Path(splits["train_state"]).read_text())
    run_dir = Path(planned["checkpoint_state"]["checkpoint_dir"])
    assert run_dir.name == f"train-{splits['config_hash']}-{splits['data_version'][:12]}"

    script = tmp_path / "train_asset.py"
    script.write_text(_TRAIN_SCRIPT)
    env = dagster_env(
        A2B_DATA_ROOT=str(root),
        A2B_CONFIGS_DIR=str(configs),
        A2B_WANDB_MODE="disabled",
        A2B_DEVICE="cpu",
        DAGSTER_HOME=str(home),
    )
    # attempt 1: killed hard after its first checkpoint
    code = _attempt(script, home, env, run_dir, 0, signal.SIGKILL, tmp_path / "attempt1.log")
    assert code == -signal.SIGKILL
    first = TrainState.from_checkpoint(run_dir)
    assert 0 < first.global_step < 24
    # attempt 2: resumes, then a clean SIGTERM stop with a checkpoint (status "stopped")
    code = _attempt(script, home, env, run_dir, first.global_step, signal.SIGTERM, tmp_path / "attempt2.log")
    assert code != 0  # stopped is not a materialization
    assert f"from step {first.global_step}" in (tmp_path / "attempt2.log").read_text()
    second = TrainState.from_checkpoint(run_dir)
    assert second.status == "stopped", second.message
    assert first.global_step < second.global_step < 24
    history = [(m.name, m.step) for m in second.metric_history]
    assert [(m.name, m.step) for m in first.metric_history] == history[: len(first.metric_history)]

    # attempt 3, in-process: resumes from the stopped checkpoint and completes
    with DagsterInstance.from_config(str(home)) as instance:
        assert (
            _latest(instance, "training_run", "resume") is None
        )  # the interrupted attempts materialized nothing
        res = materialize(
            ASSETS,
            instance=instance,
            resources=_resources(root, configs),
            partition_key="resume",
            selection=[AssetKey("training_run")],
        )
        assert res.success
        md = _md(_latest(instance, "training_run", "resume"))
    assert md["resumed_from_step"] == second.global_step
    assert md["global_step"] == 24 and md["status"] == "complete"
    assert md["run_dir"] == str(run_dir)
    final = TrainState.from_checkpoint(run_dir)
    assert final.global_step == 24 and final.status == "complete"
    # the metric history continues the interrupted attempts' history instead of starting over
    assert [(m.name, m.step) for m in final.metric_history][: len(history)] == history
    loss_steps = [m.step for m in final.metric_history if m.name == "train/loss"]
    assert loss_steps == sorted(set(loss_steps))


# ---- checks that fail, sensors, schedule ----


@pytest.mark.parametrize("mode", ["error", "skip"])
def test_unreadable_audio_blocks_or_is_skipped_per_config(tmp_path, mode):
    from a2b_pipeline.data.synthetic import write_synthetic_corpus

    manifest = write_synthetic_corpus(
        tmp_path / "corpus", subjects=4, recordings_per_subject=2, seconds=16.0, seed=0
    )
    wav = sorted((tmp_path / "corpus").rglob("*.wav"))[0]
    wav.write_bytes(b"this is not audio" * 100)
    configs = tmp_path / "configs"
    raw = tiny_config(tmp_path, ["name=broken", f"data.on_bad_recording={mode}"]).model_dump(mode="json")
    raw["data"]["datasets"] = [{"name": "corpus", "type": "manifest", "manifest": str(manifest)}]
    configs.mkdir()
    import yaml

    (configs / "broken.yaml").write_text(yaml.safe_dump(raw))
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(experiments.name, ["broken"])
    res = materialize(
        [*ASSETS, *CHECKS],
        instance=instance,
        resources=_resources(tmp_path / "data", configs),
        partition_key="broken",
        selection=[AssetKey("corpus_manifest"), AssetKey("dataset_splits")],
        raise_on_error=False,
    )
    evals = {e.check_name: e for e in res.get_asset_check_evaluations()}
    check = evals["corpus_files_readable"]
    assert not check.passed
    assert str(wav) in check.description and "does not decode" in check.description
    mats = [e for e in res.get_asset_materialization_events()]
    if mode == "error":  # blocking: dataset_splits did not run
        assert [e.asset_key.to_user_string() for e in mats] == ["corpus_manifest"]
    else:  # a warning: dataset_splits ran, skipping and counting the bad recording
        assert check.severity == AssetCheckSeverity.WARN
        assert [e.asset_key.to_user_string() for e in mats] == ["corpus_manifest", "dataset_splits"]
        md = mats[1].materialization.metadata
        skipped_keys = [k for k in md if "skip" in k]
        assert skipped_keys and str(wav) in str({k: md[k].value for k in skipped_keys}), md.keys()


def test_configs_sensor_registers_experiments_and_corpus_sensor_notices_a_change(tmp_path):
    from a2b_pipeline.data.synthetic import write_synthetic_corpus
    from a2b_pipeline.defs.sensors import corpus_change_sensor, experiment_configs_sensor

    manifest = write_synthetic_corpus(
        tmp_path / "corpus", subjects=4, recordings_per_subject=2, seconds=16.0, seed=0
    )
    raw = tiny_config(tmp_path, ["name=watched"]).model_dump(mode="json")
    raw["data"]["datasets"] = [{"name": "corpus", "type": "manifest", "manifest": str(manifest)}]
    configs = tmp_path / "configs"
    configs.mkdir()
    import yaml

    (configs / "watched.yaml").write_text(yaml.safe_dump(raw))
    (configs / "other.yml").write_text(yaml.safe_dump({**raw, "name": "other"}))
    store = ExperimentStore(data_root=str(tmp_path / "data"), configs_dir=str(configs))
    instance = DagsterInstance.ephemeral()

    ctx = build_sensor_context(instance=instance, resources={"store": store})
    result = experiment_configs_sensor(ctx)
    (req,) = result.dynamic_partitions_requests
    assert sorted(req.partition_keys) == ["other", "watched"] and not result.run_requests
    instance.add_dynamic_partitions(experiments.name, list(req.partition_keys))
    # an edited config: its data assets are refreshed
    (configs / "watched.yaml").write_text(yaml.safe_dump({**raw, "seed": 1}))
    result = experiment_configs_sensor(
        build_sensor_context(instance=instance, resources={"store": store}, cursor=result.cursor)
    )
    assert [r.partition_key for r in result.run_requests] == ["watched"]
    assert not result.dynamic_partitions_requests

    def tick(cursor=None):
        return corpus_change_sensor(
            build_sensor_context(instance=instance, resources={"store": store}, cursor=cursor)
        )

    first = tick()
    assert not first.run_requests  # nothing materialized from the corpus yet: nothing to refresh
    res = materialize(
        [*ASSETS],
        instance=instance,
        resources=_resources(tmp_path / "data", configs),
        partition_key="watched",
        selection=[AssetKey("corpus_manifest")],
    )
    assert res.success
    again = tick(first.cursor)
    assert not again.run_requests  # the corpus is as corpus_manifest recorded it
    with open(manifest, "a") as f:  # a new row appended to the manifest, from outside the pipeline
        f.write("\n")
    changed = tick(again.cursor)
    # only the experiment that materialized from it (`other` never did), as data_refresh_job, keyed by content
    assert [r.partition_key for r in changed.run_requests] == ["watched"]
    assert all(r.job_name in (None, "data_refresh_job") for r in changed.run_requests)
    assert changed.run_requests[0].run_key.startswith("corpus-watched-")
    assert not tick(changed.cursor).run_requests  # one request per change, not one per tick


def test_edited_configs_ask_for_at_most_a_few_refreshes_a_tick_and_none_twice(tmp_path):
    from a2b_pipeline.defs.sensors import MAX_REFRESH_REQUESTS, experiment_configs_sensor

    configs = tmp_path / "configs"
    names = [f"e{i}" for i in range(MAX_REFRESH_REQUESTS + 2)]
    for name in names:
        _write_config(configs, name, tmp_path, [])
    store = ExperimentStore(data_root=str(tmp_path / "data"), configs_dir=str(configs))
    instance = DagsterInstance.ephemeral()

    def tick(cursor):
        with build_sensor_context(instance=instance, resources={"store": store}, cursor=cursor) as ctx:
            return experiment_configs_sensor(ctx)

    result = tick(None)
    instance.add_dynamic_partitions(
        experiments.name, list(result.dynamic_partitions_requests[0].partition_keys)
    )
    for name in names:  # every config edited at once (as an edited base config does to a sweep)
        _write_config(configs, name, tmp_path, ["seed=1"])
    asked = []
    for _ in range(3):
        result = tick(result.cursor)
        assert len(result.run_requests) <= MAX_REFRESH_REQUESTS
        asked += [r.partition_key for r in result.run_requests]
    assert sorted(asked) == names  # each once, over two ticks


def _missing_corpus_config(configs: Path, tmp_path: Path, name: str) -> Path:
    """A config whose corpus (a manifest) is not on this machine."""
    import yaml

    raw = tiny_config(tmp_path, [f"name={name}"]).model_dump(mode="json")
    raw["data"]["datasets"] = [{"name": "far", "type": "manifest", "manifest": str(tmp_path / "nowhere.csv")}]
    configs.mkdir(parents=True, exist_ok=True)
    path = configs / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_retrain_schedule_requests_one_gpu_run_per_experiment_and_skips_missing_corpora(tmp_path):
    from a2b_pipeline.defs.schedules import RETRAIN_CRON, retrain_schedule

    assert retrain_schedule.cron_schedule == RETRAIN_CRON == os.environ.get("A2B_RETRAIN_CRON", "0 3 * * 1")
    tick_time = datetime.datetime(2026, 1, 5, 3, 0, tzinfo=datetime.UTC)
    configs = tmp_path / "configs"
    for name in ("a", "b"):
        _write_config(configs, name, tmp_path, [])
    _missing_corpus_config(configs, tmp_path, "far")
    store = ExperimentStore(data_root=str(tmp_path / "data"), configs_dir=str(configs))

    def tick(instance):
        # `with`: a context built with resources sets Dagster state that must be reset after the tick
        with build_schedule_context(
            instance=instance, scheduled_execution_time=tick_time, resources={"store": store}
        ) as ctx:
            return retrain_schedule(ctx)

    with DagsterInstance.from_config(str(tmp_path)) as instance:  # schedule contexts need a persistent one
        skipped = tick(instance)
        assert "no experiments" in skipped.skip_message
        instance.add_dynamic_partitions(experiments.name, ["far"])
        skipped = tick(instance)
        assert "far: dataset 'far' (manifest): manifest" in skipped.skip_message
        assert "is not on this machine" in skipped.skip_message
        instance.add_dynamic_partitions(experiments.name, ["a", "b"])
        reqs = tick(instance)
    assert sorted(r.partition_key for r in reqs) == ["a", "b"]
    assert {r.run_key for r in reqs} == {"retrain-a-20260105T0300", "retrain-b-20260105T0300"}
    assert all(r.tags["gpu"] == "1" for r in reqs)


def test_missing_corpus_is_marked_before_launch_and_fails_cleanly(tmp_path):
    from a2b_pipeline.defs.sensors import experiment_configs_sensor

    configs = tmp_path / "configs"
    _write_config(configs, "here", tmp_path, [])
    _missing_corpus_config(configs, tmp_path, "far")
    store = ExperimentStore(data_root=str(tmp_path / "data"), configs_dir=str(configs))
    instance = DagsterInstance.ephemeral()

    def tick(cursor=None):
        with build_sensor_context(instance=instance, resources={"store": store}, cursor=cursor) as ctx:
            return experiment_configs_sensor(ctx)

    # the sensor registers both and evaluates the corpus check per partition, before any launch
    result = tick()
    checks = {e.partition: e for e in result.asset_events}
    assert sorted(checks) == ["far", "here"]
    assert checks["here"].passed and checks["here"].check_name == "corpus_available"
    assert not checks["far"].passed and "nowhere.csv is not on this machine" in checks["far"].description
    # an unchanged status is not evaluated again on the next tick
    assert not tick(result.cursor).asset_events
    # launching it anyway: a Dagster Failure whose description says why, first
    instance.add_dynamic_partitions(experiments.name, ["far"])
    res = materialize(
        [*ASSETS, *CHECKS],
        instance=instance,
        resources=_resources(tmp_path / "data", configs),
        partition_key="far",
        selection=[AssetKey("corpus_manifest")],
        raise_on_error=False,
    )
    assert not res.success
    (failure,) = res.get_step_failure_events()
    error = failure.event_specific_data.error
    assert error.cls_name == "Failure"
    assert error.message.startswith("dagster._core.definitions.events.Failure: far: the corpus is not on")


@pytest.mark.skipif(torch_cuda_available(), reason="a GPU is present here: the run would use it, not warn")
def test_a_run_meant_for_a_gpu_that_finds_none_says_so_in_its_log(tmp_path):
    configs = tmp_path / "configs"
    _write_config(configs, "nogpu", tmp_path, ["train.max_steps=2", "train.val_every_n_steps=2"])
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(experiments.name, ["nogpu"])
    resources = {**_resources(tmp_path / "data", configs), "compute": TrainDevice(device="auto")}
    res = materialize(
        [*ASSETS],
        instance=instance,
        resources=resources,
        partition_key="nogpu",
        selection=[AssetKey(n) for n in ASSET_NAMES[: ASSET_NAMES.index("training_run") + 1]],
    )
    assert res.success
    warnings = [e.user_message for e in instance.all_logs(res.run_id) if e.level == logging.WARNING]
    assert any("no GPU found (train.device: auto): training on the CPU" in m for m in warnings), warnings
    from a2b_pipeline.state import TrainState

    state = TrainState.from_checkpoint(_md(_latest(instance, "training_run", "nogpu"))["run_dir"])
    assert state.model_state.model_device.type == "cpu" and state.status == "complete"
