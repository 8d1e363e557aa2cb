"""What watching Slurm jobs costs the Dagster side: launch (sbatch) and poll (scontrol show job) latency per
job, a trivial job's submit-to-done time, and the memory of a run worker waiting on its job (a process
that has imported the code location), with an extrapolation to N concurrent experiments.

Needs a running cluster (SLURM_CONF; `bash slurm/cluster.sh start DIR` then `. DIR/env`).

    .venv/bin/python bench/slurm_overhead.py [--jobs N] [--poll-seconds S]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from a2b_pipeline.launch import slurm  # noqa: E402


def timed(fn, *args):  # noqa: ANN001, ANN202
    t0 = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t0, out


def cpu_seconds(fn, *args) -> float:  # noqa: ANN001
    """CPU time of this process and its children (the Slurm client commands) spent in fn."""

    def now() -> float:
        s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime

    t0 = now()
    fn(*args)
    return now() - t0


def run_worker_rss_mb() -> float:
    """Peak RSS of a process that imported the Dagster code location and the launch module (torch-free)."""
    code = (
        "import resource, a2b_pipeline.defs, a2b_pipeline.launch.pipes; "
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=10, help="trivial jobs to submit")
    p.add_argument("--poll-seconds", type=float, default=5.0, help="the step's poll interval to extrapolate")
    args = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="a2b-slurm-bench-"))
    files = slurm.JobFiles(work)
    files.script.write_text("#!/bin/bash\n#SBATCH --output=/dev/null\ntrue\n")
    submit_s, done_s, ids = [], [], []
    for _ in range(args.jobs):
        t0 = time.perf_counter()
        job_id = slurm.submit(files)
        submit_s.append(time.perf_counter() - t0)
        ids.append(job_id)
        slurm.wait(job_id, 0.1, lambda old, new: None)
        done_s.append(time.perf_counter() - t0)
    shutil.rmtree(work)
    poll_s = [timed(slurm.job_info, ids[-1])[0] for _ in range(30)]
    poll_cpu = cpu_seconds(lambda: [slurm.job_info(ids[-1]) for _ in range(30)]) / 30
    rss = run_worker_rss_mb()

    ms = lambda xs: 1000 * statistics.median(xs)  # noqa: E731
    print(f"sbatch (launch): median {ms(submit_s):.1f} ms over {args.jobs} jobs")
    print(f"scontrol show job (one poll): median {ms(poll_s):.1f} ms wall, {1000 * poll_cpu:.1f} ms CPU")
    print(f"trivial job, submit -> COMPLETED seen: median {statistics.median(done_s):.2f} s")
    print(f"run worker waiting on a job (code location imported): {rss:.0f} MB RSS")
    per_job_cpu = poll_cpu / args.poll_seconds
    for n in (10, 100, 500):
        print(
            f"  {n:>4} concurrent experiments, poll every {args.poll_seconds:g}s: "
            f"{n * per_job_cpu * 100:.1f}% of one core polling, {n / args.poll_seconds:.0f} scontrol "
            f"calls/s, at least {n * rss / 1024:.1f} GB of run workers (the import alone)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
