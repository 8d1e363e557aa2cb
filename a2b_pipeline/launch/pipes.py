"""The Dagster side of a training step run as a Slurm job: submit it inside a Dagster Pipes session, watch
it to its end, and say what happened in the run's log.

The job's log lines and its metadata come back through the Pipes message file on the shared filesystem
(`PipesFileMessageReader`); the context goes the same way (`PipesFileContextInjector`). Terminating the
Dagster run cancels the job (scancel); a job that fails or is cancelled outside Dagster fails the step
with Slurm's state, reason and exit code, and the end of the job's log.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from dagster import (
    Failure,
    PipesFileContextInjector,
    PipesFileMessageReader,
    open_pipes_session,
)

from a2b_pipeline.launch import slurm
from a2b_pipeline.launch.slurm import JobFiles, JobInfo, SlurmError, SlurmJobSpec


def job_name(experiment: str) -> str:
    return f"a2b:{experiment}"


def run_slurm_training(
    context: Any,
    spec: SlurmJobSpec,
    cfg: Any,  # RunConfig: the effective config (absolute paths)
    run_dir: Path,
    job_dir: Path,
    poll_seconds: float,
    python: str,
) -> dict[str, Any]:
    """Train `cfg` in `run_dir` as a Slurm job (the `a2b train` command on every rank); block until the job
    completes, through requeues. Returns the metadata the job reported; raises Failure when it doesn't
    complete, and cancels it when the Dagster step is interrupted."""
    files = JobFiles(job_dir)
    job_dir.mkdir(parents=True, exist_ok=True)
    files.config.write_text(cfg.to_yaml())
    train_args = ["train", str(files.config), "--run-dir", str(run_dir)]
    files.script.write_text(slurm.batch_script(spec, files, job_name(cfg.name), train_args, python))
    with open_pipes_session(
        context=context,
        context_injector=PipesFileContextInjector(str(job_dir / "pipes-context.json")),
        message_reader=PipesFileMessageReader(str(job_dir / "pipes-messages.jsonl")),
    ) as session:
        started = time.monotonic()
        job_id = slurm.submit(files, env=session.get_bootstrap_env_vars())
        context.log.info(
            f"submitted Slurm job {job_id} ({spec.nodes} node(s) x {spec.tasks_per_node} rank(s)); "
            f"script {files.script}, log {files.log(job_id)}"
        )
        final = _watch(context, job_id, poll_seconds)
        context.log.info(f"{final.describe()} after {time.monotonic() - started:.1f}s")
    if final.state != "COMPLETED":
        raise Failure(
            description=f"{final.describe()}. The run directory {run_dir} keeps its checkpoints: launch "
            f"again to resume. End of the job log {files.log(job_id)}:\n{slurm.log_tail(files.log(job_id))}",
            metadata={"slurm_job_id": job_id, "slurm_state": final.state, "job_log": str(files.log(job_id))},
        )
    reported: dict[str, Any] = {}
    for result in session.get_results():
        reported.update(result.metadata or {})
    return {"slurm_job_id": job_id, "job_log": str(files.log(job_id)), **reported}


def _watch(context: Any, job_id: str, poll_seconds: float) -> JobInfo:
    """Wait for the job's end, saying in the run's log when it starts, is requeued and ends; a Dagster
    interruption (Terminate in the UI) cancels the job before it goes on."""

    def said(old: JobInfo | None, new: JobInfo) -> None:
        if old is not None and new.restarts > old.restarts:
            context.log.warning(
                f"Slurm job {job_id} was requeued (restart {new.restarts}: preempted, a time limit ahead, or "
                "`scontrol requeue`); waiting for it to run again: it resumes from its newest checkpoint"
            )
        where = f" on {new.nodes}" if new.state == "RUNNING" and new.nodes else ""
        reason = f" ({new.reason})" if new.reason not in ("None", "") and not new.final else ""
        context.log.info(f"Slurm job {job_id}: {new.state}{where}{reason}")

    try:
        return slurm.wait(job_id, poll_seconds, said)
    except BaseException:  # DagsterExecutionInterruptedError is one: the run was terminated
        try:
            slurm.cancel(job_id)
            context.log.warning(f"the Dagster step ended before Slurm job {job_id}: cancelled it (scancel)")
        except SlurmError as e:
            context.log.error(f"could not cancel Slurm job {job_id}: {e}")
        raise
