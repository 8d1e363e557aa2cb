"""`a2b sweep`, `cv`, `leaderboard`: many runs of one question (experiments/)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from a2b_pipeline.cli.train_commands import EXIT_STOPPED, train_or_resume
from a2b_pipeline.configs import ConfigError, check_paths, load_config
from a2b_pipeline.experiments import CV_SUMMARY_FILE


def cmd_sweep(args: argparse.Namespace) -> int:
    from a2b_pipeline.experiments.sweeps import format_table, load_sweep

    sweep = load_sweep(args.file)
    chosen = [e for e in sweep.experiments if not args.only or e.name in args.only]
    unknown = sorted(set(args.only) - {e.name for e in sweep.experiments})
    if unknown:
        raise ConfigError(f"{args.file}: no experiment {', '.join(unknown)} in this sweep")
    if args.write_configs:
        out = Path(args.write_configs)
        out.mkdir(parents=True, exist_ok=True)
        for e in chosen:
            (out / f"{e.name}.yaml").write_text(e.config.to_yaml())
    if args.json:
        rows = [{"name": e.name, "config_hash": e.config_hash, "overrides": e.overrides} for e in chosen]
        print(json.dumps({"sweep": sweep.name, "file": str(sweep.path), "experiments": rows}, indent=1))
    else:
        print(format_table(sweep, chosen))
    if not args.train:
        return 0
    for e in chosen:
        check_paths(e.config, source=f"{args.file}: {e.name}")
    from a2b_pipeline.runs import process_group

    stopped = []
    with process_group():  # one process group (under torchrun) for the whole sweep
        for e in chosen:
            print(f"== {e.name} ({e.config_hash})", file=sys.stderr)
            state = train_or_resume(e.config, fresh=args.fresh)
            print(f"{e.name}\t{state.status}\t{state.run_dir}")
            if state.status != "complete":
                stopped.append(e.name)
    if stopped:
        print(f"not complete (run the command again to resume): {', '.join(stopped)}", file=sys.stderr)
        return EXIT_STOPPED
    return 0


def cmd_cv(args: argparse.Namespace) -> int:
    import torch

    from a2b_pipeline.experiments.cv import require_folds, run_cv

    cfg = load_config(args.config, args.set)
    require_folds(cfg)
    check_paths(cfg, source=args.config)
    device = "cuda" if torch.cuda.is_available() and cfg.train.device != "cpu" else "cpu"
    from a2b_pipeline.runs import process_group

    with process_group():  # one process group (under torchrun) for every fold
        summary = run_cv(cfg, args.dir, fresh=args.fresh, device=device, only=args.fold or None)
    if args.json:
        print(json.dumps(summary, indent=1, sort_keys=True))
    else:
        print(f"# {summary['experiment']}: {summary['folds_evaluated']}/{summary['folds']} folds evaluated")
        print(f"{'metric':<48} {'mean':>8} {'std':>8}  n")
        for key, st in summary["stats"].items():
            mean = "n/a" if st["mean"] is None else f"{st['mean']:.4f}"
            std = "n/a" if st["std"] is None else f"{st['std']:.4f}"
            print(f"{key:<48} {mean:>8} {std:>8}  {st['n']}")
        print(Path(summary["dir"]) / CV_SUMMARY_FILE)
    for problem in summary["problems"]:
        print(f"warning: {problem}", file=sys.stderr)
    wanted = set(args.fold or range(summary["folds"]))
    done = {r["fold"] for r in summary["fold_results"] if r["report"]}
    return 0 if wanted <= done else EXIT_STOPPED


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from a2b_pipeline.experiments import leaderboard

    rows = leaderboard.rows_from_runs_dir(args.runs_dir, metric=args.metric)
    if args.csv:
        Path(args.csv).write_text(leaderboard.to_csv(rows))
    print(leaderboard.to_csv(rows) if args.format == "csv" else leaderboard.to_markdown(rows))
    return 0


# ---- their options ----


def add_sweep(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("sweep", help="list a sweep's experiments (name, config hash); --train runs them")
    s.add_argument("file", help="a sweep file, e.g. configs/sweeps/architectures.yaml")
    s.add_argument("--json", action="store_true")
    s.add_argument("--only", action="append", default=[], metavar="NAME", help="just this experiment")
    s.add_argument("--write-configs", default=None, metavar="DIR", help="write each experiment's YAML")
    s.add_argument(
        "--train", action="store_true", help="train each experiment in turn (resumes unfinished ones)"
    )
    s.add_argument(
        "--fresh", action="store_true", help="with --train: train each anew in a new run directory"
    )
    s.set_defaults(fn=cmd_sweep)


def add_cv(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser(
        "cv", help="grouped k-fold cross-validation (data.split.folds): train, evaluate, summarize"
    )
    s.add_argument("config")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    s.add_argument("--fold", action="append", type=int, default=[], help="only this fold (repeatable)")
    s.add_argument("--dir", default=None, help="parent of the CV directory (default: checkpoint.dir)")
    s.add_argument("--fresh", action="store_true", help="train the folds anew, each in a new run directory")
    s.add_argument("--json", action="store_true", help="print the whole summary")
    s.set_defaults(fn=cmd_cv)


def add_leaderboard(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("leaderboard", help="the leaderboard of the runs under a directory (no Dagster)")
    s.add_argument("runs_dir")
    s.add_argument("--metric", default="pearson", choices=["pearson", "ccc", "mae", "mse"])
    s.add_argument("--format", default="markdown", choices=["markdown", "csv"])
    s.add_argument("--csv", default=None, metavar="OUT.csv", help="also write the table as CSV")
    s.set_defaults(fn=cmd_leaderboard)
