"""`a2b validate`, `train`, `resume`, `remove-runs`: a run's life from the command line (runs.py decides)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from a2b_pipeline.configs import ConfigError, check_paths, load_config

EXIT_STOPPED = 3  # a run stopped by a signal or a non-finite loss: resumable, not complete


def cmd_validate(args: argparse.Namespace) -> int:
    from a2b_pipeline.training.preflight import check_runnable

    cfg = load_config(args.config, args.set)
    check_paths(cfg, source=args.config)
    check_runnable(cfg, source=args.config)
    print(cfg.to_yaml(), end="")
    print(f"# config hash: {cfg.config_hash()}")
    return 0


def _finish(state) -> int:  # state: TrainState
    print(state.run_dir)
    if state.message:
        print(state.message, file=sys.stderr)
    return 0 if state.status == "complete" else EXIT_STOPPED


def _progress_friendly_logs():
    """On a terminal, log lines print above the training progress bar instead of through it."""
    import contextlib

    from tqdm.contrib.logging import logging_redirect_tqdm

    return logging_redirect_tqdm() if sys.stderr.isatty() else contextlib.nullcontext()


def cmd_train(args: argparse.Namespace) -> int:
    from a2b_pipeline.training.preflight import check_runnable

    cfg = load_config(args.config, args.set)
    check_paths(cfg, args.run_dir, source=args.config)  # before anything is created
    check_runnable(cfg, source=args.config)
    with _progress_friendly_logs():
        return _finish(train_or_resume(cfg, args.run_dir, fresh=args.fresh))


def train_or_resume(cfg, run_dir: str | None = None, fresh: bool = False):  # RunConfig -> TrainState
    """Train `cfg` in its run directory as runs.py's table says (resume, report, refuse, or start anew)."""
    from a2b_pipeline.runs import run_training

    return run_training(cfg, run_dir, fresh=fresh, say=_say).state


def _say(message: str) -> None:
    print(message, file=sys.stderr)


def cmd_resume(args: argparse.Namespace) -> int:
    from a2b_pipeline.checkpoint.directory import CheckpointError
    from a2b_pipeline.runs import find_runs, resume_training
    from a2b_pipeline.state import TrainState

    root = Path(args.path)
    runs = find_runs(root)
    if not runs:
        raise CheckpointError(f"{root}: no checkpoint, run directory or checkpoint.dir with a run")
    if len(runs) > 1:
        print(f"{root} holds {len(runs)} runs; resume one of them:", file=sys.stderr)
        for run in runs:
            try:
                state = TrainState.from_checkpoint(run)
                about = f"{state.status}, step {state.global_step}"
            except Exception as e:  # noqa: BLE001  (a listing: say what is wrong with this one, go on)
                about = f"does not load: {e}"
            print(f"  a2b resume {run}    # {about}", file=sys.stderr)
        return 2
    path = runs[0]
    if path != root:
        print(f"resuming the run in {path}", file=sys.stderr)
    with _progress_friendly_logs():  # nobody else trains there meanwhile (runs.py holds the lock)
        return _finish(resume_training(path, say=_say))


def cmd_remove_runs(args: argparse.Namespace) -> int:
    from a2b_pipeline.runs import is_run_dir, plan_removal, records_near, removal_report, remove_runs

    dirs = [Path(d) for d in args.run_dirs]
    if not_runs := [str(d) for d in dirs if d.is_symlink() or not is_run_dir(d)]:
        raise ConfigError(f"not run directories (nothing removed): {', '.join(not_runs)}")
    roots = [*records_near(dirs), *map(Path, args.records)]
    removal = remove_runs(plan_removal(dirs, roots), dry_run=not args.apply)
    print(removal_report(removal, dry_run=not args.apply))
    return 0


# ---- their options ----


def _config_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("config")
    s.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.max_steps=100",
    )


def add_validate(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("validate", help="print the resolved config or its errors")
    _config_args(s)
    s.set_defaults(fn=cmd_validate)


def add_train(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("train", help="train a config; prints the run directory")
    _config_args(s)
    s.add_argument("--run-dir", default=None, help="default: checkpoint.dir/<name>-<config hash>")
    s.add_argument(
        "--fresh",
        action="store_true",
        help="train anew in a new run directory (<run dir>.attempt-<n>); the earlier run stays",
    )
    s.set_defaults(fn=cmd_train)


def add_remove_runs(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser(
        "remove-runs",
        help="delete run directories on purpose: a dry run (the default) lists them and the Dagster records "
        "that name them (materializations it would orphan); --apply deletes",
    )
    s.add_argument("run_dirs", nargs="+", help="run directories (each attempt is a directory of its own)")
    s.add_argument("--records", action="append", default=[], help="more record folders to search")
    s.add_argument("--apply", action="store_true", help="delete (else only report)")
    s.set_defaults(fn=cmd_remove_runs)


def add_resume(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("resume", help="continue a run to its configured end")
    s.add_argument(
        "path",
        help="a run directory (its newest valid checkpoint), a checkpoint directory, or a checkpoint.dir "
        "holding one run (several: they are listed)",
    )
    s.set_defaults(fn=cmd_resume)
