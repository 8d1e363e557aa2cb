"""Where the training step runs: in the Dagster run's own process (the default), or as a Slurm job that
reports back through Dagster Pipes (slurm.py: the Slurm commands; job.py: the job's side; pipes.py: the
Dagster side; logs.py: the library's log lines in the Dagster run's log, from either place)."""
