"""`a2b evaluate`, `predict`, `export-encoder`: what a trained checkpoint gives (evaluation/)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from a2b_pipeline.configs import ConfigError
from a2b_pipeline.data.splits import SPLITS


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


# ---- their options ----


def add_evaluate(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser(
        "evaluate",
        help="the model and its baselines on a split: a short table and a verdict (--json: the full report; "
        "always written to <run_dir>/evaluation-<split>.json)",
    )
    s.add_argument("checkpoint", help="a checkpoint directory, or a run directory (its best checkpoint)")
    s.add_argument("--split", default="test", choices=list(SPLITS))
    s.add_argument("--json", action="store_true", help="print the full report as JSON (verdict on stderr)")
    s.set_defaults(fn=cmd_evaluate)


def add_predict(sub: argparse._SubParsersAction) -> None:
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


def add_export_encoder(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser(
        "export-encoder", help="save a conv_gru checkpoint's front-end for `pretrained_encoder`"
    )
    s.add_argument("checkpoint", help="a checkpoint or run directory of a conv_gru model")
    s.add_argument("out", help="the .safetensors file to write")
    s.set_defaults(fn=cmd_export_encoder)
