"""Drive `dagster dev` through its GraphQL API as the UI does, after `a2b demo`, with the sensors as shipped.

    .venv/bin/python scripts/ui_sequence.py [--work DIR] [--experiments tcn,architectures.tcn] [--quick]

1. `a2b demo` into a new DAGSTER_HOME (the shipped configs; `--quick`: a copy with training cut short,
   data and models as shipped);
2. `dagster dev` on a free 127.0.0.1 port (webserver + daemon: schedules and sensors as shipped);
3. launches `experiment_job` for each experiment (GraphQL launchRun, as the launchpad), one after the other,
   and waits for each;
4. relaunches `demo` with training_run `fresh: true`, and waits;
5. waits for the corpus sensor to tick, then checks: every run succeeded, no `data_refresh_job` run, the
   demo corpora unchanged since the demo, and every file every materialization recorded (records,
   TrainStates, checkpoints with all their files, reports, plots) against its recorded digest.

Prints each step and exits 1 naming the first check that failed. Stops `dagster dev` (by its pid) at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "docker"))
import smoke_client as ui  # noqa: E402  (the GraphQL calls, stdlib only)

ASSETS = ui.EXPERIMENT_ASSETS
SENSOR_TICK = 75  # s: corpus_change_sensor's minimum interval is 60 s


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def files(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def quick_configs(to: Path) -> Path:
    import yaml

    shutil.copytree(REPO / "configs", to)
    for path in to.glob("*.yaml"):
        raw = yaml.safe_load(path.read_text())
        if isinstance(raw.get("train"), dict):
            raw["train"].update({"max_steps": 8, "log_every_n_steps": 4, "val_every_n_steps": 4})
            raw["checkpoint"]["every_n_steps"] = 4
            path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return to


def check_recorded_files(home: Path, partitions: list[str]) -> int:
    """Every file every materialization recorded, against its digest; how many were checked."""
    from dagster import AssetKey, AssetRecordsFilter, DagsterInstance

    from a2b_pipeline.checkpoint.directory import STATE_FILE
    from a2b_pipeline.state import TrainState

    checked = 0
    with DagsterInstance.from_config(str(home)) as instance:
        for partition in partitions:
            for asset in ASSETS:
                flt = AssetRecordsFilter(asset_key=AssetKey(asset), asset_partitions=[partition])
                for rec in instance.fetch_materializations(flt, limit=1000).records:
                    md = {k: v.value for k, v in rec.asset_materialization.metadata.items()}
                    where = f"{asset} [{partition}] of run {rec.run_id}"
                    blob = Path(md["record"]).read_bytes()
                    assert hashlib.sha256(blob).hexdigest().startswith(md["record_sha256"]), where
                    record = json.loads(blob)
                    assert Path(md["train_state"]).is_file(), where
                    if "checkpoint" in md:
                        ckpt = Path(md["checkpoint"])
                        sha = hashlib.sha256((ckpt / STATE_FILE).read_bytes()).hexdigest()
                        assert sha.startswith(md["checkpoint_sha256"]), where
                        TrainState.from_checkpoint(ckpt)  # every file against its digest
                    for path_key, sha_key in (("report_path", "report_sha256"), ("plot", "plot_sha256")):
                        if sha_key in record:
                            sha = hashlib.sha256(Path(record[path_key]).read_bytes()).hexdigest()
                            assert sha == record[sha_key], (where, path_key)
                    checked += 1
    return checked


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", help="working folder (default: a new temporary one, removed on success)")
    p.add_argument("--experiments", default="tcn,architectures.tcn")
    p.add_argument("--quick", action="store_true", help="train a few steps (a copy of configs/)")
    p.add_argument("--timeout", type=float, default=1800, help="per run, seconds")
    args = p.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="a2b-ui-"))
    work.mkdir(parents=True, exist_ok=True)
    configs = quick_configs(work / "configs") if args.quick else REPO / "configs"
    home, root = work / "home", work / "data"
    bin_dir = Path(sys.executable).parent
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "A2B_DATA_ROOT": str(root),
        "A2B_CONFIGS_DIR": str(configs),
        "A2B_WANDB_MODE": "disabled",
        "A2B_DEVICE": "cpu",
    }
    say(f"a2b demo into {work}")
    subprocess.run(
        [bin_dir / "a2b", "demo", "--dagster-home", str(home), "--data-root", str(root)], env=env, check=True
    )
    corpora = root / "data" / "demo"
    after_demo = files(corpora)

    port = free_port()
    url = f"http://127.0.0.1:{port}/graphql"
    log = open(work / "dagster-dev.log", "w")  # noqa: SIM115  (open for the server's life)
    server = subprocess.Popen(
        [bin_dir / "dagster", "dev", "-h", "127.0.0.1", "-p", str(port), "-w", str(REPO / "workspace.yaml")],
        env=env,
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its webserver and daemon children go with it
    )
    failed, launched = "", []
    try:
        say(f"dagster dev (pid {server.pid}) on {url}: {ui.wait_web(url, 180)}")
        for sensor in ("experiment_configs_sensor", "corpus_change_sensor"):
            status = ui.sensor_status(url, sensor)
            assert status == "RUNNING", f"{sensor} is {status}"
        experiments = [e for e in args.experiments.split(",") if e]
        for name in experiments:
            ui.add_partition(url, name)  # as the launchpad's "Add partition" (the sensor may have done it)
            run_id = ui.launch(url, "experiment_job", name)
            say(f"{name}: run {run_id} launched")
            done_by = ui.wait_run(url, run_id, args.timeout)
            say(f"{name}: SUCCESS (run {done_by})")
            launched.append(name)
        run_id = ui.launch(url, "experiment_job", "demo", fresh=True)
        say(f"demo fresh: run {run_id} launched")
        say(f"demo fresh: SUCCESS (run {ui.wait_run(url, run_id, args.timeout)})")
        say(f"waiting {SENSOR_TICK}s for the sensors to tick")
        time.sleep(SENSOR_TICK)
        refreshes = ui.job_runs(url, "data_refresh_job")
        assert not refreshes, f"the sensors launched data_refresh_job runs: {refreshes}"
        assert files(corpora) == after_demo, "a corpus file changed after the demo"
        say("no data_refresh_job run; the demo corpora are as the demo wrote them")
    except (AssertionError, ui.SmokeError, subprocess.CalledProcessError) as e:
        failed = str(e)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()
    if not failed:
        try:
            n = check_recorded_files(home, ["demo", *launched])
            say(f"{n} materializations: every recorded file matches its digest")
        except AssertionError as e:
            failed = f"recorded file does not check out: {e}"
    if failed:
        say(f"FAILED: {failed} (logs in {work})")
        return 1
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    say("passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
