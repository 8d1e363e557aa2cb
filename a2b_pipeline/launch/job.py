"""Inside a Slurm job: `srun python -m a2b_pipeline.launch.job train CONFIG --run-dir RUN_DIR`.

Each rank takes its rank and world size from Slurm's environment (SLURM_PROCID, SLURM_NTASKS,
SLURM_LOCALID; the batch script sets MASTER_ADDR/MASTER_PORT) and runs the `a2b` command line as
`torchrun` would. Rank 0, when Dagster launched the job, opens the Dagster Pipes session: the library's
log lines (progress, validation) stream to the Dagster run, and at the end it reports the run's facts as
the materialization's metadata. Exit status: the command's (0 complete, 3 stopped and resumable).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any


def rank_env_from_slurm(environ: dict[str, str]) -> dict[str, str]:
    """torch.distributed's variables from Slurm's, for a step started by srun with more than one task."""
    world = int(environ.get("SLURM_NTASKS", "1"))
    if world <= 1 or "WORLD_SIZE" in environ:
        return {}
    return {
        "RANK": environ["SLURM_PROCID"],
        "WORLD_SIZE": str(world),
        "LOCAL_RANK": environ.get("SLURM_LOCALID", "0"),
        "LOCAL_WORLD_SIZE": environ.get("SLURM_NTASKS_PER_NODE", "1").split("(")[0],
    }


def open_pipes(rank: int) -> Any:
    """Rank 0's Dagster Pipes context when Dagster launched the job (its parameters in the environment),
    with the library's log lines forwarded to it; None otherwise."""
    if rank != 0 or "DAGSTER_PIPES_CONTEXT" not in os.environ:
        return None
    from dagster_pipes import open_dagster_pipes

    from a2b_pipeline.launch.logs import ToDagsterLog

    pipes = open_dagster_pipes()
    logging.getLogger("a2b_pipeline").addHandler(ToDagsterLog(pipes.log))
    return pipes


def run_facts(run_dir: str, world_size: int, seconds: float, code: int) -> dict[str, Any]:
    """What the job reports as metadata: where and how it ran, and what the run directory now holds."""
    from a2b_pipeline.checkpoint.directory import list_checkpoints
    from a2b_pipeline.state import TrainState

    facts: dict[str, Any] = {
        "slurm_job_id": os.environ.get("SLURM_JOB_ID", ""),
        "slurm_nodes": os.environ.get("SLURM_JOB_NODELIST", ""),
        "slurm_restarts": int(os.environ.get("SLURM_RESTART_COUNT", "0")),
        "world_size": world_size,
        "job_seconds": round(seconds, 1),
        "job_exit_code": code,
    }
    if list_checkpoints(run_dir):
        state = TrainState.from_checkpoint(run_dir)
        facts.update(
            job_status=state.status,
            job_global_step=state.global_step,
            job_checkpoint=str(state.last_checkpoint),
        )
    return facts


def main(argv: list[str]) -> int:
    os.environ.update(rank_env_from_slurm(dict(os.environ)))
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    from a2b_pipeline import cli
    from a2b_pipeline.cli.train_commands import EXIT_STOPPED

    run_dir = argv[argv.index("--run-dir") + 1] if "--run-dir" in argv else None
    start = time.monotonic()
    pipes = open_pipes(rank)
    if pipes is None:
        return cli.main(argv)
    job = os.environ.get("SLURM_JOB_ID")
    pipes.log.info(f"Slurm job {job} started: {world} rank(s) running `a2b {' '.join(argv)}`")
    try:
        code = cli.main(argv)
    except BaseException:
        pipes.close()  # the Dagster side fails the step with Slurm's words and the job log's end
        raise
    if code == EXIT_STOPPED:
        # Stopped by a signal: a requeue (or a cancel) follows. The session stays open: the requeued job
        # writes on in the same message file, and only the run's last job closes it.
        pipes.log.warning(f"Slurm job {job}: training stopped at a checkpoint (exit {code})")
        return code
    if code == 0 and run_dir:
        pipes.report_asset_materialization(metadata=run_facts(run_dir, world, time.monotonic() - start, code))
    pipes.close()
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
