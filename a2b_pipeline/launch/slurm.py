"""A training run as a Slurm job, through Slurm's own commands (sbatch, scontrol, scancel): no Dagster here.

The batch script runs `srun python -m a2b_pipeline.launch.job train CONFIG --run-dir RUN_DIR`: every rank
runs the `a2b train` command, which resumes the run directory's newest checkpoint when there is one. So
a requeued job (`scontrol requeue`, a preemption, or the job's own requeue ahead of its time limit) picks
up where the last checkpoint left off, bit for bit. Ahead of the time limit (`--signal=B:USR1@N`) the
script asks the ranks to stop (SIGTERM: the trainer checkpoints at the next step and exits) and requeues
the job itself.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

# Job states after which Slurm runs nothing more for the job (squeue(1) "JOB STATE CODES").
FINAL_STATES = {
    "BOOT_FAIL",
    "CANCELLED",
    "COMPLETED",
    "DEADLINE",
    "FAILED",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "PREEMPTED",
    "TIMEOUT",
}
REQUEUE_SIGNAL = "USR1"  # sent to the batch shell only (B:), which turns it into SIGTERM for the ranks


class SlurmError(RuntimeError):
    """A Slurm command failed, or the job ended without completing; the text is what Slurm said."""


class SlurmJobSpec(BaseModel):
    """What a training job asks Slurm for. None: the cluster's default (sbatch's own)."""

    model_config = ConfigDict(extra="forbid")

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: str | None = Field(default=None, description="time limit, sbatch --time (e.g. 04:00:00)")
    nodes: int = Field(default=1, ge=1)
    tasks_per_node: int = Field(default=1, ge=1, description="ranks per node (one per GPU)")
    gpus_per_node: int = Field(default=0, ge=0)
    cpus_per_task: int | None = Field(default=None, ge=1)
    mem: str | None = Field(default=None, description="memory per node, sbatch --mem (e.g. 32G)")
    signal_seconds: int = Field(
        default=120, ge=1, description="checkpoint and requeue this long before the time limit"
    )
    sbatch_args: list[str] = Field(default_factory=list, description="more sbatch options, as given")

    def directives(self) -> list[str]:
        """The `#SBATCH` options, one per line."""
        opts = [
            f"--nodes={self.nodes}",
            f"--ntasks-per-node={self.tasks_per_node}",
            "--requeue",
            "--open-mode=append",  # a requeued job appends to the same log
            f"--signal=B:{REQUEUE_SIGNAL}@{self.signal_seconds}",
        ]
        named = {
            "partition": self.partition,
            "account": self.account,
            "qos": self.qos,
            "time": self.time,
            "cpus-per-task": self.cpus_per_task,
            "mem": self.mem,
        }
        opts += [f"--{k}={v}" for k, v in named.items() if v is not None]
        if self.gpus_per_node:
            opts.append(f"--gpus-per-node={self.gpus_per_node}")
        return opts + list(self.sbatch_args)


@dataclass
class JobFiles:
    """A launch's files, in a directory of its own on the shared filesystem."""

    dir: Path

    @property
    def script(self) -> Path:
        return self.dir / "job.sbatch"

    @property
    def config(self) -> Path:
        return self.dir / "config.yaml"

    def log(self, job_id: str) -> Path:
        return self.dir / f"slurm-{job_id}.out"


def batch_script(spec: SlurmJobSpec, files: JobFiles, name: str, train_args: list[str], python: str) -> str:
    """The sbatch script: srun starts the ranks (rank and world size from Slurm's environment, job.py);
    the rendezvous is the first node's address; USR1 ahead of the time limit -> checkpoint -> requeue."""
    header = [f"#SBATCH --job-name={name}", f"#SBATCH --output={files.dir}/slurm-%j.out"]
    header += [f"#SBATCH {opt}" for opt in spec.directives()]
    command = shlex.join([python, "-m", "a2b_pipeline.launch.job", *train_args])
    return "\n".join(
        [
            "#!/bin/bash",
            *header,
            "# Written by a2b_pipeline.launch.slurm for one launch of a training step.",
            'echo "a2b: job $SLURM_JOB_ID, restart ${SLURM_RESTART_COUNT:-0}, nodes $SLURM_JOB_NODELIST"',
            'first=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
            "# rendezvous: the first node's NodeAddr (its name unless the cluster says otherwise)",
            'addr=$(scontrol show node -o "$first" | tr " " "\\n" | sed -n "s/^NodeAddr=//p")',
            "export MASTER_ADDR=${addr:-$first}",
            "export MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))",
            "requeue=0",
            "# SIGTERM to the ranks themselves (the steps, not this shell): srun turns a SIGTERM of its",
            "# own into SIGKILL for them (`srun: forcing job termination`): no checkpoint, a lost step",
            f'trap \'requeue=1; echo "a2b: {REQUEUE_SIGNAL}: time limit or preemption ahead, checkpointing";'
            " scancel --signal=TERM $SLURM_JOB_ID' " + REQUEUE_SIGNAL,
            f"srun --kill-on-bad-exit=1 {command} &",
            "step=$!",
            "wait $step; rc=$?",
            "# a trapped signal ends `wait` early: wait again until the ranks have checkpointed and exited",
            "while kill -0 $step 2>/dev/null; do wait $step; rc=$?; done",
            'if [ $requeue = 1 ]; then echo "a2b: requeueing job $SLURM_JOB_ID"; '
            "scontrol requeue $SLURM_JOB_ID; exit 0; fi",
            "exit $rc",
            "",
        ]
    )


def run_command(args: list[str], timeout: float = 60, env: dict[str, str] | None = None) -> str:
    """A Slurm command's stdout; SlurmError with its stderr when it fails. `env`: added to ours."""
    try:
        done = subprocess.run(
            args,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **env} if env else None,
            check=False,
        )
    except FileNotFoundError:
        raise SlurmError(f"{args[0]}: not found (is Slurm installed here, and on PATH?)") from None
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{shlex.join(args)}: no answer in {timeout:.0f}s") from None
    if done.returncode != 0:
        raise SlurmError(f"{shlex.join(args)}: {(done.stderr or done.stdout).strip()}")
    return done.stdout


def submit(files: JobFiles, env: dict[str, str] | None = None) -> str:
    """sbatch the script; the job id. The job gets this process's environment plus `env` (sbatch's
    default --export=ALL): the Python environment and the Dagster Pipes parameters reach the ranks."""
    out = run_command(["sbatch", "--parsable", str(files.script)], env=env)
    return out.strip().split(";")[0]  # "<id>[;<cluster>]"


@dataclass
class JobInfo:
    """What `scontrol show job` says about a job."""

    job_id: str
    state: str  # PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, TIMEOUT, ...
    reason: str
    exit_code: str  # "<code>:<signal>"
    restarts: int
    nodes: str

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    def describe(self) -> str:
        reason = "" if self.reason in ("None", "") else f", reason {self.reason}"
        return f"Slurm job {self.job_id} {self.state} (exit code {self.exit_code}{reason})"


def job_info(job_id: str) -> JobInfo | None:
    """The job's record in the controller; None once the controller has forgotten it (MinJobAge)."""
    try:
        out = run_command(["scontrol", "show", "job", "-o", job_id])
    except SlurmError as e:
        if "Invalid job id" in str(e):
            return None
        raise
    fields = dict(part.split("=", 1) for part in shlex.split(out.splitlines()[0]) if "=" in part)
    return JobInfo(
        job_id=job_id,
        state=fields.get("JobState", "UNKNOWN"),
        reason=fields.get("Reason", ""),
        exit_code=fields.get("ExitCode", ""),
        restarts=int(fields.get("Restarts", "0")),
        nodes=fields.get("NodeList", ""),
    )


def cancel(job_id: str) -> None:
    """scancel the job (all its steps and the batch shell get SIGTERM, then SIGKILL after KillWait)."""
    run_command(["scancel", job_id])


def queued_jobs(name_prefix: str = "") -> list[str]:
    """Ids of the jobs squeue shows (pending or running), optionally only those named with the prefix."""
    out = run_command(["squeue", "-h", "-o", "%A %j"])
    return [line.split()[0] for line in out.splitlines() if line.split()[1:2][0].startswith(name_prefix)]


def wait(
    job_id: str,
    poll_seconds: float,
    on_change: Callable[[JobInfo | None, JobInfo], None],
    sleep: Callable[[float], None] = time.sleep,
) -> JobInfo:
    """Poll the job until it reaches a final state; `on_change(old, new)` on every change of state, restart
    count or node list (a requeue shows as a new restart). A job the controller forgot is reported as
    its last known state (it can only be forgotten after ending)."""
    last: JobInfo | None = None
    while True:
        info = job_info(job_id)
        if info is None:
            if last is None:
                raise SlurmError(f"Slurm job {job_id}: the controller does not know it")
            return last
        if last is None or (info.state, info.restarts, info.nodes) != (last.state, last.restarts, last.nodes):
            on_change(last, info)
        last = info
        if info.final:
            return info
        sleep(poll_seconds)


def log_tail(path: Path, lines: int = 30) -> str:
    """The job log's last lines (what the job said before it ended), or a note that there is none."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no job log at {path})"
    return "\n".join(text.splitlines()[-lines:])


def default_python() -> str:
    """The interpreter the job runs: this one (the environment on the shared filesystem)."""
    return sys.executable
