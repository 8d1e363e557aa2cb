"""The Dagster layer under bad input and with a secret in the environment.

- `dagster dev` (no `-h`) listens on loopback only: every TCP socket any of its processes (webserver,
  daemon, code server) listens on is 127.0.0.1 / ::1, found through /proc, no traffic involved;
- with WANDB_API_KEY set and wandb really running (offline), the key appears nowhere: not in any
  run's event log or asset metadata, not in any file written (asset records, checkpoints, wandb's own
  offline run files, byte for byte), not in what the processes print;
- `data.on_bad_recording: skip`: the skipped recordings (a missing file while listing, NaN values while
  decoding) are counted in the asset metadata with their rows and paths, and the graph trains on the rest.
(test_dagster.py covers the plain webserver's bind address and a secret with tracking disabled.)
"""

from __future__ import annotations

import os
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from _util import LOOPBACK, dagster_env, free_port, listening_sockets, serving, tiny_config

defs = pytest.importorskip("a2b_pipeline.defs", reason="the Dagster layer (a2b_pipeline.defs) is not there")

from dagster import AssetKey, DagsterInstance, materialize  # noqa: E402

from a2b_pipeline.data.manifest import read_manifest  # noqa: E402
from a2b_pipeline.data.synthetic import write_synthetic_corpus  # noqa: E402
from a2b_pipeline.defs.assets import ASSETS, experiments  # noqa: E402
from a2b_pipeline.defs.checks import CHECKS  # noqa: E402
from a2b_pipeline.defs.resources import ExperimentStore, QualityGate, TrainDevice, WandbTracking  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SECRET = "f00dfacef00dfacef00dfacef00dfacef00dface"  # the shape of a wandb API key (40 hex)
ASSET_ORDER = ["corpus_manifest", "dataset_splits", "meta_loader_spec", "training_run", "best_checkpoint"]


# ---- dagster dev listens on loopback only ----


def _session_pids(sid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[3]) == sid:  # after "pid (comm)": state ppid pgrp session ...
            pids.append(int(entry.name))
    return pids


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    try:
        for fd in (Path("/proc") / str(pid) / "fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        pass
    return inodes


def test_dagster_dev_listens_on_loopback_only_and_prints_no_secret(tmp_path: Path) -> None:
    port = free_port()
    home = tmp_path / "home"
    home.mkdir()
    env = dagster_env(
        DAGSTER_HOME=str(home),
        A2B_DATA_ROOT=str(tmp_path / "data"),
        A2B_CONFIGS_DIR=str(tmp_path / "configs"),
        WANDB_API_KEY=SECRET,
    )
    log_path = tmp_path / "dagster_dev.log"
    with serving("dagster dev", port, env, log_path, timeout=150) as proc:
        # the code location loaded (its server is up too) before we look at every process's sockets
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/graphql?query=%7Bversion%7D", timeout=30) as r:
            assert r.status == 200
        time.sleep(2.0)
        pids = _session_pids(proc.pid)
        assert len(pids) >= 2, f"expected dagster dev to start a webserver and more: {pids}"
        inodes = set().union(*(_socket_inodes(p) for p in pids))
        sockets = [(ip, p) for ip, p, inode in listening_sockets() if inode in inodes]
    out = log_path.read_text()
    assert ("127.0.0.1", port) in sockets or ("::ffff:127.0.0.1", port) in sockets, (sockets, out[-2000:])
    exposed = [(ip, p) for ip, p in sockets if ip not in LOOPBACK]
    assert not exposed, f"dagster dev listens beyond loopback: {exposed} (all: {sockets})"
    assert f"http://127.0.0.1:{port}" in out
    assert SECRET not in out


# ---- a secret in the environment, wandb running offline, a corpus with bad recordings ----


@pytest.fixture
def experiment(tmp_path: Path) -> dict:
    manifest = write_synthetic_corpus(
        tmp_path / "corpus", subjects=4, recordings_per_subject=2, seconds=16.0, seed=5
    )
    recs = read_manifest(str(manifest), "wild", channels=["eda", "hr"])
    Path(recs[0].audio_path).unlink()  # row 1: a missing file, skipped while listing
    sig = Path(recs[2].signals["eda"].path)  # row 3: NaN values, skipped while decoding
    lines = sig.read_text().splitlines()
    t, _, hr = lines[20].split(",")
    lines[20] = f"{t},nan,{hr}"
    sig.write_text("\n".join(lines) + "\n")

    raw = tiny_config(
        tmp_path,
        [
            "name=wild",
            "data.on_bad_recording=skip",
            "train.max_steps=4",
            "train.val_every_n_steps=4",
            "tracking.wandb_mode=offline",
        ],
    ).model_dump(mode="json")
    raw["data"]["datasets"] = [{"name": "wild", "type": "manifest", "manifest": str(manifest)}]
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "wild.yaml").write_text(yaml.safe_dump(raw))
    return {
        "configs": configs,
        "root": tmp_path / "data",
        "missing": (1, recs[0].audio_path),
        "nan": (3, str(sig)),
    }


def test_skips_in_metadata_and_no_secret_anywhere_with_wandb_offline(
    tmp_path: Path, experiment: dict, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("WANDB_API_KEY", SECRET)
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(experiments.name, ["wild"])
    result = materialize(
        [*ASSETS, *CHECKS],
        instance=instance,
        resources={
            "store": ExperimentStore(
                data_root=str(experiment["root"]), configs_dir=str(experiment["configs"])
            ),
            "tracking": WandbTracking(mode="config"),  # the config's: offline
            "compute": TrainDevice(device="cpu"),
            "quality": QualityGate(metric="test/pearson", floor=-1.0),
        },
        partition_key="wild",
        selection=[AssetKey(a) for a in ASSET_ORDER],
        raise_on_error=False,
    )
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    mats = {
        e.asset_key.to_user_string(): e.materialization for e in result.get_asset_materialization_events()
    }
    assert sorted(mats) == sorted(ASSET_ORDER)

    md = {k: v.value for k, v in mats["corpus_manifest"].metadata.items()}
    row, path = experiment["missing"]
    assert md["skipped_count"] == 1 and md["recordings"] == 7
    assert f"| wild | {row} |" in md["skipped"] and path in md["skipped"], md["skipped"]
    md = {k: v.value for k, v in mats["dataset_splits"].metadata.items()}
    assert md["skipped_count"] == 2 and md["recordings_used"] == 6, md
    row, path = experiment["nan"]
    assert f"| wild | {row} | {path} |" in md["skipped"] and "NaN/inf" in md["skipped"], md["skipped"]

    md = {k: v.value for k, v in mats["training_run"].metadata.items()}
    assert md["status"] == "complete" and md["global_step"] == 4
    assert md["wandb_run_path"], "wandb ran (offline), so the run path is in the metadata"
    assert list(tmp_path.rglob("offline-run-*")), "wandb wrote its offline run (in the run directory)"

    # the key is nowhere: event logs (all metadata included), any file the test wrote, output
    for run in instance.get_runs():
        for event in instance.all_logs(run.run_id):
            assert SECRET not in repr(event), event
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) > 30
    for p in files:
        assert SECRET.encode() not in p.read_bytes(), p
    out, err = capfd.readouterr()
    assert SECRET not in out and SECRET not in err
