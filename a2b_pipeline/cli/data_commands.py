"""`a2b synth`, `corpus`, `cache`: corpora and the feature cache (`corpus` does its work in cli/corpus.py)."""

from __future__ import annotations

import argparse
import json

from a2b_pipeline.configs import load_config


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


# ---- their options ----


def add_synth(sub: argparse._SubParsersAction) -> None:
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


def add_corpus(sub: argparse._SubParsersAction) -> None:
    from a2b_pipeline.data import corpora

    s = sub.add_parser("corpus", help="summarise a corpus in a published layout")
    s.add_argument("root")
    # only the types that can be summarised: a manifest or synthetic corpus is read by training as it is
    s.add_argument("--type", required=True, choices=corpora.scannable())
    s.add_argument("--json", action="store_true")
    s.add_argument("--to-manifest", default=None, metavar="OUT.csv")
    s.set_defaults(fn=cmd_corpus)


def add_cache(sub: argparse._SubParsersAction) -> None:
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
