"""`a2b`: the command line. Works the same under `torchrun ... -m a2b_pipeline.cli train CONFIG`.

One module per command group adds its subcommands, each with its handler: train_commands.py (`validate`,
`train`, `resume`, `remove-runs`), experiment_commands.py (`sweep`, `cv`, `leaderboard`),
evaluate_commands.py (`evaluate`, `predict`, `export-encoder`), data_commands.py (`synth`, `corpus`,
`cache`), demo.py (`demo`). Here: the parser, the logging and
the exit status (0 done, 2 bad input, 1 failed, 3 a run stopped and resumable).

Each handler imports what it needs when it runs, so the light commands (`corpus`, `cache`, and `sweep`
listing a sweep) run without torch (tests/test_terminal.py checks), and none imports Dagster but `demo`.
"""

from __future__ import annotations

import argparse
import logging
import sys

from a2b_pipeline.cli import data_commands as data
from a2b_pipeline.cli import demo
from a2b_pipeline.cli import evaluate_commands as evaluate
from a2b_pipeline.cli import experiment_commands as experiments
from a2b_pipeline.cli import train_commands as train
from a2b_pipeline.configs import ConfigError

# `a2b --help` lists them in this order
COMMANDS = (
    data.add_synth,
    train.add_validate,
    train.add_train,
    experiments.add_sweep,
    experiments.add_cv,
    experiments.add_leaderboard,
    train.add_remove_runs,
    train.add_resume,
    evaluate.add_evaluate,
    evaluate.add_predict,
    evaluate.add_export_encoder,
    data.add_corpus,
    data.add_cache,
    demo.add_demo,
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="a2b", description="audio -> biosignal training pipeline")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
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
    from a2b_pipeline.files import FileRefusedError
    from a2b_pipeline.security import GrantError, redact_text

    try:
        return args.fn(args)
    except (ConfigError, GrantError, FileRefusedError) as e:  # bad input, named
        print(f"error: {redact_text(str(e))}", file=sys.stderr)
        return 2
    except Exception as e:
        if args.verbose or not _reported(e):
            raise
        print(f"error: {redact_text(str(e))}", file=sys.stderr)
        return 1


def _reported(e: Exception) -> bool:
    """Whether a command's error is reported in one line, named by its message (exit 1; a traceback with
    -v): missing, unreadable or unwritable files, unreachable storage, bad values, a checkpoint that does not
    load, no GPU memory left. torch and the checkpoint code are imported only to classify an error that is
    none of the first kinds, so a light command starts, and fails, without them."""
    from a2b_pipeline.data.recording import BadRecordingError

    if isinstance(e, (BadRecordingError, OSError, ValueError)):
        return True
    from torch.cuda import OutOfMemoryError

    from a2b_pipeline.checkpoint.directory import CheckpointError

    return isinstance(e, (CheckpointError, OutOfMemoryError))
