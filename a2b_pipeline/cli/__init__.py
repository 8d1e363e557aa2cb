"""`a2b`: the command line. Works the same under `torchrun ... -m a2b_pipeline.cli train CONFIG`.

Each subcommand imports what it needs when it runs, so the light ones (`validate`, `synth`, `corpus`,
`cache`) start without torch, and none of them imports Dagster unless it is `demo`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from a2b_pipeline.configs import ConfigError, check_paths, load_config

EXIT_STOPPED = 3  # a run stopped by a signal or a non-finite loss: resumable, not complete


def cmd_synth(args: argparse.Namespace) -> int:
    from a2b_pipeline.data.synthetic import summarize_manifest, write_synthetic_corpus

    manifest = write_synthetic_corpus(
        args.out_dir,
        subjects=args.subjects,
        recordings_per_subject=args.recordings_per_subject,
        seconds=args.seconds,
        seed=args.seed,
        stimuli=args.stimuli,
    )
    print(json.dumps({"manifest": str(manifest), **summarize_manifest(manifest)}, indent=1))
    return 0


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
        print(Path(summary["dir"]) / "cv_summary.json")
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


def cmd_evaluate(args: argparse.Namespace) -> int:
    from a2b_pipeline.evaluation.evaluate import report_path, report_table, run_evaluation, write_report
    from a2b_pipeline.evaluation.gate import verdict

    report = run_evaluation(args.checkpoint, args.split).report
    path, unsaved = report_path(report), None
    try:
        write_report(report)
    except OSError as e:  # a read-only run directory: the report is still shown, and where it failed said
        unsaved = f"error: the report could not be written to {path} ({e})"
    line = f"verdict: {verdict(report).line}"
    if args.json:  # stdout stays one JSON document; the verdict goes to stderr
        print(json.dumps(report, indent=1, sort_keys=True))
        print(line, file=sys.stderr)
    else:
        print(report_table(report, path))
        print(line)
    if unsaved:
        print(unsaved, file=sys.stderr)
        return 1
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from a2b_pipeline.evaluation.predict import predict_files

    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise ConfigError(f"--out {args.out}: exists and is not a directory (predictions go into one)")
    results = predict_files(args.checkpoint, args.audio, args.out, args.device, args.subject)
    for r in results:
        if r.error:
            print(f"error: {r.error}", file=sys.stderr)
        else:
            print(f"{r.source} -> {r.csv} ({r.seconds:.1f} s)")
    if not results:
        print(f"error: no audio files in {', '.join(args.audio)}", file=sys.stderr)
    return 1 if not results or any(r.error for r in results) else 0


def cmd_export_encoder(args: argparse.Namespace) -> int:
    from a2b_pipeline.evaluation.evaluate import export_encoder

    out = export_encoder(args.checkpoint, args.out)
    print(out)
    return 0


def cmd_corpus(args: argparse.Namespace) -> int:
    from a2b_pipeline.cli.corpus import corpus_main

    return corpus_main(args.root, args.type, args.json, args.to_manifest)


def cmd_cache(args: argparse.Namespace) -> int:
    from a2b_pipeline.data import cache_admin

    cache_dir = args.cache_dir or (load_config(args.config).data.cache_dir if args.config else None)
    if args.max_gb is None:
        print(json.dumps(cache_admin.usage(cache_dir), indent=1))
        return 0
    report = cache_admin.prune(
        cache_dir, int(args.max_gb * 1e9), keep_recent_s=args.keep_recent_min * 60, dry_run=args.dry_run
    )
    if not args.verbose:
        report.pop("removed_paths")
    print(json.dumps(report, indent=1))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from a2b_pipeline.cli.demo import run_demo

    return run_demo(
        Path(args.dagster_home), Path(args.data_root), experiment=args.experiment, verbose=args.verbose
    )


def build_parser() -> argparse.ArgumentParser:
    """Every subcommand and its options, in one place (long, but a table: one block per subcommand)."""
    from a2b_pipeline.data import corpora

    p = argparse.ArgumentParser(prog="a2b", description="audio -> biosignal training pipeline")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="write a synthetic corpus (wav + csv + manifest.csv)")
    s.add_argument("out_dir")
    s.add_argument("--subjects", type=int, default=6)
    s.add_argument("--recordings-per-subject", type=int, default=3)
    s.add_argument("--seconds", type=float, default=30.0)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument(
        "--stimuli",
        type=int,
        default=None,
        help="distinct clips shared by the subjects (default: one per recording)",
    )
    s.set_defaults(fn=cmd_synth)

    for name, fn, text in (
        ("validate", cmd_validate, "print the resolved config or its errors"),
        ("train", cmd_train, "train a config; prints the run directory"),
    ):
        s = sub.add_parser(name, help=text)
        s.add_argument("config")
        s.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a config value, e.g. --set train.max_steps=100",
        )
        if name == "train":
            s.add_argument("--run-dir", default=None, help="default: checkpoint.dir/<name>-<config hash>")
            s.add_argument(
                "--fresh",
                action="store_true",
                help="train anew in a new run directory (<run dir>.attempt-<n>); the earlier run stays",
            )
        s.set_defaults(fn=fn)

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

    s = sub.add_parser("leaderboard", help="the leaderboard of the runs under a directory (no Dagster)")
    s.add_argument("runs_dir")
    s.add_argument("--metric", default="pearson", choices=["pearson", "ccc", "mae", "mse"])
    s.add_argument("--format", default="markdown", choices=["markdown", "csv"])
    s.add_argument("--csv", default=None, metavar="OUT.csv", help="also write the table as CSV")
    s.set_defaults(fn=cmd_leaderboard)

    s = sub.add_parser(
        "remove-runs",
        help="delete run directories on purpose: a dry run (the default) lists them and the Dagster records "
        "that name them (materializations it would orphan); --apply deletes",
    )
    s.add_argument("run_dirs", nargs="+", help="run directories (each attempt is a directory of its own)")
    s.add_argument("--records", action="append", default=[], help="more record folders to search")
    s.add_argument("--apply", action="store_true", help="delete (else only report)")
    s.set_defaults(fn=cmd_remove_runs)

    s = sub.add_parser("resume", help="continue a run to its configured end")
    s.add_argument(
        "path",
        help="a run directory (its newest valid checkpoint), a checkpoint directory, or a checkpoint.dir "
        "holding one run (several: they are listed)",
    )
    s.set_defaults(fn=cmd_resume)

    s = sub.add_parser(
        "evaluate",
        help="the model and its baselines on a split: a short table and a verdict (--json: the full report; "
        "always written to <run_dir>/evaluation-<split>.json)",
    )
    s.add_argument("checkpoint", help="a checkpoint directory, or a run directory (its best checkpoint)")
    s.add_argument("--split", default="test", choices=["train", "val", "test"])
    s.add_argument("--json", action="store_true", help="print the full report as JSON (verdict on stderr)")
    s.set_defaults(fn=cmd_evaluate)

    s = sub.add_parser(
        "predict", help="predicted biosignals of audio files (wav/flac/mp3, any rate): a CSV + PNG each"
    )
    s.add_argument("checkpoint", help="a checkpoint directory, or a run directory (its best checkpoint)")
    s.add_argument("audio", nargs="+", help="audio files, or directories (every audio file under them)")
    s.add_argument("--out", required=True, help="directory for <name>.csv, <name>.png and <name>.json")
    s.add_argument(
        "--subject",
        default=None,
        metavar="DATASET/SUBJECT",
        help="with data.normalize: subject, give the signals in this listener's units (default: z-scores)",
    )
    s.add_argument("--device", default="cpu", help="cpu or cuda")
    s.set_defaults(fn=cmd_predict)

    s = sub.add_parser(
        "export-encoder", help="save a conv_gru checkpoint's front-end for `pretrained_encoder`"
    )
    s.add_argument("checkpoint", help="a checkpoint or run directory of a conv_gru model")
    s.add_argument("out", help="the .safetensors file to write")
    s.set_defaults(fn=cmd_export_encoder)

    s = sub.add_parser("corpus", help="summarise a corpus in a published layout")
    s.add_argument("root")
    # only the types that can be summarised: a manifest or synthetic corpus is read by training as it is
    s.add_argument("--type", required=True, choices=corpora.scannable())
    s.add_argument("--json", action="store_true")
    s.add_argument("--to-manifest", default=None, metavar="OUT.csv")
    s.set_defaults(fn=cmd_corpus)

    s = sub.add_parser("cache", help="size of the feature and download cache; --max-gb prunes it (LRU)")
    where = s.add_mutually_exclusive_group()
    where.add_argument("--cache-dir", default=None, help="default: $A2B_CACHE_DIR, else ~/.cache/a2b")
    where.add_argument("--config", default=None, help="use this config's data.cache_dir")
    s.add_argument(
        "--max-gb", type=float, default=None, help="delete least recently used entries down to this"
    )
    s.add_argument(
        "--keep-recent-min", type=float, default=60.0, help="never delete entries used this recently"
    )
    s.add_argument("--dry-run", action="store_true", help="report what would be deleted, delete nothing")
    s.set_defaults(fn=cmd_cache)

    s = sub.add_parser("demo", help="materialize the whole Dagster graph on configs/demo.yaml")
    s.add_argument("--dagster-home", default=".dagster_home")
    s.add_argument("--data-root", default=".", help="relative paths in configs resolve under it")
    s.add_argument("--experiment", default="demo", help="the config <configs dir>/<experiment>.yaml")
    s.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="the full Dagster logs"
    )
    s.set_defaults(fn=cmd_demo)
    return p


# HTTP and object-store clients whose DEBUG output carries credentials (botocore prints the access key ID
# and session token of signed requests): never more verbose than WARNING, whatever -v says.
WIRE_LOGGERS = (
    "botocore",
    "boto3",
    "s3transfer",
    "aiobotocore",
    "s3fs",
    "fsspec",
    "urllib3",
    "aiohttp",
    "requests",
    "httpx",
    "httpcore",
    "gcsfs",
    "adlfs",
    "azure",
)


class RedactURLs(logging.Filter):
    """Log lines show URLs without their credentials (a `user:password@` part, signature parameters)."""

    def filter(self, record: logging.LogRecord) -> bool:
        from a2b_pipeline.security import redact_text

        message = record.getMessage()
        shown = redact_text(message)
        if shown != message:
            record.msg, record.args = shown, None
        if record.exc_info and not record.exc_text:  # a library's traceback repeats the URL it failed on
            record.exc_text = redact_text(logging.Formatter().formatException(record.exc_info))
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info)
        return True


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactURLs())
    for wire in WIRE_LOGGERS:  # -v is about the pipeline: these print request headers, signatures, tokens
        logging.getLogger(wire).setLevel(logging.WARNING)
    from torch.cuda import OutOfMemoryError

    from a2b_pipeline.checkpoint.directory import CheckpointError
    from a2b_pipeline.data.recording import BadRecordingError
    from a2b_pipeline.files import FileRefusedError
    from a2b_pipeline.security import GrantError, redact_text

    try:
        return args.fn(args)
    except (ConfigError, GrantError, FileRefusedError) as e:  # bad input, named
        print(f"error: {redact_text(str(e))}", file=sys.stderr)
        return 2
    except (
        CheckpointError,
        BadRecordingError,
        OSError,  # missing, unreadable or unwritable files, unreachable storage: named by the message
        ValueError,
        OutOfMemoryError,
    ) as e:
        if args.verbose:
            raise
        print(f"error: {redact_text(str(e))}", file=sys.stderr)
        return 1
