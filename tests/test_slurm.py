"""The training step as a Slurm job, on a real local Slurm (two slurmd on this host, slurm/cluster.sh):
the Dagster Pipes round trip (the job's log lines and metadata in the Dagster run), a requeue in the
middle of training that ends with the weights of an uninterrupted run, two-node DDP through srun, a job
cancelled outside Dagster failing the step in Slurm's words, and a terminated step cancelling its job.

Skipped, with the reason, where there is no Slurm to start (not root, or no slurmctld/munged): install it
with `bash slurm/cluster.sh install`.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from _util import REPO, dagster_env, tiny_config
from dagster import AssetKey, DagsterInstance, materialize

from a2b_pipeline.defs.assets import ASSETS, experiments
from a2b_pipeline.defs.resources import ExperimentStore, SlurmJob, TrainDevice, WandbTracking
from a2b_pipeline.launch import slurm

TRAIN_CHAIN = [AssetKey(n) for n in ("corpus_manifest", "dataset_splits", "meta_loader_spec", "training_run")]


def _why_no_slurm() -> str | None:
    if os.geteuid() != 0:
        return "the local Slurm cluster needs root (slurmd starts jobs as their users)"
    missing = [b for b in ("slurmctld", "slurmd", "munged", "sbatch") if shutil.which(b) is None]
    if missing:
        return f"no {', '.join(missing)} here: `bash slurm/cluster.sh install` (Debian's slurm-wlm + munge)"
    return None


@pytest.fixture(scope="session")
def cluster():
    """A two-node cluster (a2b-n1, a2b-n2; one CPU each) for the session; SLURM_CONF points at it."""
    why = _why_no_slurm()
    if why:
        pytest.skip(why)
    # not under pytest's tmp_path: its folders are private to root, and munged runs as user munge
    where = Path(tempfile.mkdtemp(prefix="a2b-slurm-"))
    started = subprocess.run(
        ["bash", str(REPO / "slurm" / "cluster.sh"), "start", str(where), "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(where / "slurm.conf")
    try:
        assert started.returncode == 0, started.stderr + "".join(
            p.read_text() for p in (where / "log").glob("*.log")
        )
        yield where
    finally:
        subprocess.run(["bash", str(REPO / "slurm" / "cluster.sh"), "stop", str(where)], timeout=120)
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old
        shutil.rmtree(where, ignore_errors=True)


def _experiment(tmp_path: Path, name: str, overrides: list[str]) -> tuple[Path, Path]:
    configs = tmp_path / "configs"
    configs.mkdir(parents=True, exist_ok=True)
    (configs / f"{name}.yaml").write_text(tiny_config(tmp_path, [f"name={name}", *overrides]).to_yaml())
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return configs, home


def _resources(tmp_path: Path, configs: Path, **job: Any) -> dict[str, Any]:
    return {
        "store": ExperimentStore(data_root=str(tmp_path / "data"), configs_dir=str(configs)),
        "tracking": WandbTracking(mode="disabled"),
        "compute": TrainDevice(device="cpu", launch="slurm", slurm=SlurmJob(poll_seconds=0.3, **job)),
    }


def _materialize(tmp_path: Path, name: str, overrides: list[str], **job: Any) -> tuple[Any, DagsterInstance]:
    configs, home = _experiment(tmp_path, name, overrides)
    instance = DagsterInstance.from_config(str(home))
    instance.add_dynamic_partitions(experiments.name, [name])
    result = materialize(
        ASSETS,
        instance=instance,
        resources=_resources(tmp_path, configs, **job),
        partition_key=name,
        selection=TRAIN_CHAIN,
        raise_on_error=False,
    )
    return result, instance


def _in_background(
    tmp_path: Path, name: str, overrides: list[str]
) -> tuple[threading.Thread, dict[str, Any]]:
    """_materialize in a thread (the test acts on the job meanwhile); the result and instance in the dict."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        outcome["result"], outcome["instance"] = _materialize(tmp_path, name, overrides)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def _metadata(result: Any) -> dict[str, Any]:
    (mat,) = [m for m in result.asset_materializations_for_node("training_run")]
    return {k: v.value for k, v in mat.metadata.items()}


def _messages(instance: DagsterInstance, run_id: str) -> list[str]:
    return [e.message or "" for e in instance.all_logs(run_id)]


def _weights(run_dir: Path) -> dict[str, Any]:
    from a2b_pipeline.checkpoint.store import load_tensors
    from a2b_pipeline.state import TrainState

    state = TrainState.from_checkpoint(run_dir)
    return load_tensors(state.last_checkpoint, "model.safetensors", state)


def _reference(job_dir: Path, out: Path, ranks: int = 1) -> dict[str, Any]:
    """The same effective config (the launch's config.yaml) trained without interruption, without Slurm."""
    launcher = [sys.executable, "-m", "a2b_pipeline.cli"]
    if ranks > 1:
        launcher = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc-per-node={ranks}",
            "-m",
            "a2b_pipeline.cli",
        ]
    done = subprocess.run(
        [*launcher, "train", str(job_dir / "config.yaml"), "--run-dir", str(out)],
        cwd=REPO,
        env=dagster_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return _weights(out)


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _job_dir(metadata: dict[str, Any]) -> Path:
    return Path(metadata["job_log"]).parent


def _wait_job(name: str, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = slurm.queued_jobs(f"a2b:{name}")
        if jobs:
            return jobs[0]
        time.sleep(0.2)
    raise AssertionError(f"no Slurm job a2b:{name} in squeue after {timeout}s")


def _wait_until(what: str, check: Any, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}: not after {timeout}s"
        time.sleep(0.1)


def _checkpoint_past(root: Path, step: int) -> bool:
    from a2b_pipeline.checkpoint.directory import STEP_DIR, list_checkpoints

    return any(
        int(STEP_DIR.match(c.name)[1]) > step for run in root.glob("train-*") for c in list_checkpoints(run)
    )


# ---- what a launch asks Slurm for (no cluster needed) ----


def test_the_job_asks_for_what_the_resource_says(tmp_path):
    """Partition, GPUs, CPUs, memory, time limit, account and QoS from the `compute` resource (here from
    the environment, as the code location reads them) become the batch script's #SBATCH lines."""
    from a2b_pipeline.defs.resources import default_resources

    env = {
        "A2B_LAUNCH": "slurm",
        "A2B_SLURM_PARTITION": "gpu",
        "A2B_SLURM_ACCOUNT": "lab42",
        "A2B_SLURM_QOS": "high",
        "A2B_SLURM_TIME": "04:00:00",
        "A2B_SLURM_NODES": "2",
        "A2B_SLURM_TASKS_PER_NODE": "4",
        "A2B_SLURM_GPUS_PER_NODE": "4",
        "A2B_SLURM_CPUS_PER_TASK": "8",
        "A2B_SLURM_MEM": "200G",
        "A2B_SLURM_SIGNAL_SECONDS": "300",
        "A2B_SLURM_SBATCH_ARGS": "--constraint=a100 --exclusive",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        compute = default_resources()["compute"]
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    assert compute.launch == "slurm"
    files = slurm.JobFiles(tmp_path)
    script = slurm.batch_script(compute.slurm.spec(), files, "a2b:x", ["train", "c.yaml"], "/venv/bin/python")
    lines = {line for line in script.splitlines() if line.startswith("#SBATCH")}
    for want in (
        "--partition=gpu",
        "--account=lab42",
        "--qos=high",
        "--time=04:00:00",
        "--nodes=2",
        "--ntasks-per-node=4",
        "--gpus-per-node=4",
        "--cpus-per-task=8",
        "--mem=200G",
        "--signal=B:USR1@300",
        "--requeue",
        "--constraint=a100",
        "--exclusive",
    ):
        assert f"#SBATCH {want}" in lines, want
    assert "srun --kill-on-bad-exit=1 /venv/bin/python -m a2b_pipeline.launch.job train c.yaml &" in script


def test_a_launch_nobody_knows_is_refused():
    with pytest.raises(ValueError, match="launch must be one of"):
        TrainDevice(launch="kubernetes").apply(tiny_config(Path("/nonexistent")))


def test_ranks_come_from_slurms_environment():
    """srun's variables -> torch.distributed's; one task, or torchrun's own variables, are left alone."""
    from a2b_pipeline.launch.job import rank_env_from_slurm

    two = {"SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_LOCALID": "0", "SLURM_NTASKS_PER_NODE": "1(x2)"}
    assert rank_env_from_slurm(two) == {
        "RANK": "1",
        "WORLD_SIZE": "2",
        "LOCAL_RANK": "0",
        "LOCAL_WORLD_SIZE": "1",
    }
    assert rank_env_from_slurm({**two, "SLURM_NTASKS": "1"}) == {}
    assert rank_env_from_slurm({**two, "WORLD_SIZE": "2"}) == {}


# ---- the round trip, through requeues ----


def slow_steps(model: Any, state: Any) -> None:
    """A2B_MODEL_HOOKS hook: each training forward takes 0.3 s longer, so the test can act mid-training."""
    model.register_forward_pre_hook(lambda module, args: time.sleep(0.3) if module.training else None)


LONGER = [
    "train.max_steps=30",
    "checkpoint.every_n_steps=3",
    "checkpoint.keep_last=20",
    "train.val_every_n_steps=10",
]


def _requeued(job_id: str, restarts: int) -> None:
    """Wait until Slurm has requeued the job `restarts` times, then let it start again soon (Slurm holds
    a requeued job back for a few seconds: BeginTime). Not before its last run has ended on the node
    (PENDING, no longer COMPLETING/REQUEUED), and not in the same second: slurmd refuses a credential
    made no later than the second it revoked the job's last one ("Job credential revoked": FAILED, 1:0)."""
    _wait_until(f"requeue {restarts}", lambda: slurm.job_info(job_id).restarts >= restarts, timeout=60)
    _wait_until(f"requeue {restarts} done", lambda: slurm.job_info(job_id).state in ("PENDING", "RUNNING"))
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now+1"], capture_output=True)


def test_a_slurm_training_run_reports_through_pipes_and_resumes_bit_exactly_after_requeues(
    cluster, tmp_path, monkeypatch
):
    """training_run trains in a Slurm job. Mid-training the job is requeued twice: by `scontrol requeue`
    (as an operator or a preemption does), then by itself after the USR1 Slurm sends ahead of the time
    limit (checkpoint, `scontrol requeue`). The Dagster step waits through both and says so; the job's
    log lines are in the Dagster run's log, its metadata on the materialization, and the final weights
    equal those of the same config trained without interruption, in process."""
    monkeypatch.setenv("A2B_MODEL_HOOKS", f"{__name__}:slow_steps")  # the job gets this environment
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))
    name = "requeued"
    thread, outcome = _in_background(tmp_path, name, LONGER)
    job_id = _wait_job(name)
    runs = tmp_path / "runs" / name
    _wait_until("a checkpoint past step 6", lambda: _checkpoint_past(runs, 6) or not thread.is_alive())
    assert thread.is_alive(), "the run ended before the test could requeue its job"
    slurm.run_command(["scontrol", "requeue", job_id])
    _requeued(job_id, 1)
    _wait_until("a checkpoint past step 15", lambda: _checkpoint_past(runs, 15) or not thread.is_alive())
    assert thread.is_alive(), "the run ended before the test could signal its job"
    slurm.run_command(["scancel", "--batch", "--signal=USR1", job_id])  # what --signal=B:USR1@N sends
    _requeued(job_id, 2)
    thread.join(timeout=300)

    result, instance = outcome["result"], outcome["instance"]
    assert result.success
    md = _metadata(result)
    assert md["slurm_job_id"] == job_id and md["slurm_restarts"] == 2 and md["world_size"] == 1
    assert md["job_status"] == "complete" and md["job_global_step"] == md["global_step"] == 30
    messages = _messages(instance, result.run_id)
    assert any(f"submitted Slurm job {job_id}" in m for m in messages)
    assert any(m.startswith(f"Slurm job {job_id} started") for m in messages)  # from the job, via Pipes
    assert any(m.startswith("a2b_pipeline.train: step 10 (epoch") for m in messages)  # the trainer's own
    assert sum(f"Slurm job {job_id} was requeued" in m for m in messages) == 2
    # both requeues stopped the trainer at a checkpoint (SIGTERM), none killed it mid-step
    assert sum(f"Slurm job {job_id}: training stopped at a checkpoint" in m for m in messages) == 2
    assert any(f"Slurm job {job_id} COMPLETED" in m for m in messages)
    log = Path(md["job_log"]).read_text()
    assert "USR1: time limit or preemption ahead" in log and f"requeueing job {job_id}" in log
    assert _same(_weights(Path(md["run_dir"])), _reference(_job_dir(md), tmp_path / "reference"))


# ---- two nodes ----


def test_two_node_ddp_through_srun(cluster, tmp_path):
    """One experiment on both nodes: srun starts a rank on each (rank and world size from Slurm), the
    replicas agree, and the result equals two ranks started by torchrun on one machine."""
    result, _ = _materialize(tmp_path, "ddp", [], nodes=2)
    assert result.success
    md = _metadata(result)
    assert md["world_size"] == 2 and md["slurm_nodes"] == "a2b-n[1-2]"
    log = Path(md["job_log"]).read_text()
    digests = {line.rsplit(" ", 1)[1] for line in log.splitlines() if "final weights sha256" in line}
    assert len(digests) == 1 and "rank 1 of 2" in log
    assert _same(_weights(Path(md["run_dir"])), _reference(_job_dir(md), tmp_path / "reference", ranks=2))


# ---- ends outside and inside Dagster ----


def test_a_job_cancelled_outside_dagster_fails_the_step_in_slurms_words(cluster, tmp_path):
    name = "cancelled"
    thread, outcome = _in_background(tmp_path, name, ["train.max_steps=100000"])
    job_id = _wait_job(name)
    _wait_until("the job running", lambda: slurm.job_info(job_id).state == "RUNNING")
    slurm.cancel(job_id)
    thread.join(timeout=120)
    result = outcome["result"]
    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    text = failure.step_failure_data.error.message + (
        failure.step_failure_data.user_failure_data.description or ""
    )
    assert f"Slurm job {job_id} CANCELLED" in text and "End of the job log" in text


_TERMINATE_SCRIPT = """
import sys
from dagster import AssetKey, DagsterInstance, materialize
from a2b_pipeline.defs.assets import ASSETS
from a2b_pipeline.defs.resources import default_resources
with DagsterInstance.from_config(sys.argv[1]) as instance:
    r = materialize(ASSETS, instance=instance, resources=default_resources(), partition_key=sys.argv[2],
                    selection=[AssetKey(n) for n in sys.argv[3:]], raise_on_error=False)
sys.exit(0 if r.success else 3)
"""


def test_terminating_the_step_cancels_its_job(cluster, tmp_path):
    """The run worker interrupted (what Terminate in the UI does to it) scancels the job: squeue no longer
    lists it."""
    name = "terminated"
    configs, home = _experiment(tmp_path, name, ["train.max_steps=100000"])
    with DagsterInstance.from_config(str(home)) as instance:
        instance.add_dynamic_partitions(experiments.name, [name])
    script = tmp_path / "materialize.py"
    script.write_text(_TERMINATE_SCRIPT)
    env = dagster_env(
        A2B_DATA_ROOT=str(tmp_path / "data"),
        A2B_CONFIGS_DIR=str(configs),
        A2B_WANDB_MODE="disabled",
        A2B_DEVICE="cpu",
        A2B_LAUNCH="slurm",
        A2B_SLURM_POLL_SECONDS="0.3",
    )
    log = tmp_path / "run.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, str(script), str(home), name, *(k.path[0] for k in TRAIN_CHAIN)],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=out,
        )
        job_id = _wait_job(name)
        _wait_until("the job running", lambda: slurm.job_info(job_id).state == "RUNNING")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) != 0, log.read_text()[-3000:]
    _wait_until("the job gone from squeue", lambda: job_id not in slurm.queued_jobs(), timeout=60)
    assert slurm.job_info(job_id).state == "CANCELLED"
