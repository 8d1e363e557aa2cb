"""Asset checks that read what an asset recorded and look at the files themselves.

(The window-level checks, targets finite and split coverage, are computed inside `dataset_splits`,
where the decoded windows are in memory: see its `check_specs`.)
"""

import math

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    MetadataValue,
    asset_check,
)

from a2b_pipeline.defs.assets import corpus_manifest, evaluation
from a2b_pipeline.defs.common import rounded, upstream_record
from a2b_pipeline.defs.partitions import experiments
from a2b_pipeline.defs.resources import QualityGate


def _audio_problem(path: str) -> str | None:
    import soundfile as sf

    from a2b_pipeline.data import remote

    try:
        with remote.open_binary(path) as f:
            info = sf.info(f)
    except remote.RemoteNotFoundError:
        return "missing"
    except (OSError, RuntimeError, ValueError) as e:  # soundfile raises LibsndfileError (a RuntimeError)
        return f"does not decode as audio: {e}"
    if info.frames <= 0 or info.samplerate <= 0:
        return "decodes to no samples"
    return None


def _signal_problem(path: str, columns: set[str]) -> str | None:
    from a2b_pipeline.data import remote
    from a2b_pipeline.data.manifest import signal_columns

    try:
        have = set(signal_columns(path))
    except remote.RemoteNotFoundError:
        return "missing"
    except (OSError, ValueError, UnicodeDecodeError) as e:
        return f"unreadable signal file: {e}"
    lacking = sorted(columns - have)
    return f"lacks column(s) {lacking} (has {sorted(have)})" if lacking else None


@asset_check(
    asset=corpus_manifest,
    partitions_def=experiments,
    blocking=True,
    description="Every listed audio file exists and its header decodes (soundfile); every signal file "
    "exists and has the columns the config reads. Blocks dataset_splits when it fails, unless "
    "data.on_bad_recording is skip (then a warning).",
)
def corpus_files_readable(context: AssetCheckExecutionContext) -> AssetCheckResult:
    problems: list[str] = []
    audio = signals = 0
    record = upstream_record(context, "corpus_manifest")
    skip_mode = record.get("on_bad_recording") == "skip"
    for ds in record["datasets"]:
        for rec in ds["recordings"]:
            audio += 1
            if err := _audio_problem(rec["audio_path"]):
                problems.append(f"{ds['name']} row {rec.get('row')}: {rec['audio_path']}: {err}")
            by_file: dict[str, set[str]] = {}
            for src in rec["signals"].values():
                by_file.setdefault(src["path"], set()).add(src["column"])
            for path, cols in by_file.items():
                signals += 1
                if err := _signal_problem(path, cols):
                    problems.append(f"{ds['name']} row {rec.get('row')}: {path}: {err}")
    return AssetCheckResult(
        passed=not problems,
        # data.on_bad_recording: skip -> a warning (dataset_splits skips and counts the bad files);
        # error -> blocks dataset_splits
        severity=AssetCheckSeverity.WARN if skip_mode else AssetCheckSeverity.ERROR,
        metadata={
            "audio_files_checked": audio,
            "signal_files_checked": signals,
            "problems": MetadataValue.json(problems[:100]),
            "problem_count": len(problems),
        },
        description=None if not problems else f"{len(problems)} unreadable file(s); first: {problems[0]}",
    )


@asset_check(
    asset=evaluation,
    partitions_def=experiments,
    description="The model against its best baseline: a warning when the bootstrap interval of its "
    "whole-recording Pearson r margin over that baseline reaches 0 (margins in the metadata: positive = "
    "model better), or when the gate metric (QualityGate resource, default test/pearson) is below its "
    "floor; an error only when a test metric is missing or not finite.",
)
def evaluation_metrics_ok(context: AssetCheckExecutionContext, quality: QualityGate) -> AssetCheckResult:
    from a2b_pipeline.evaluation.gate import fmt_interval, verdict

    name = context.partition_key
    record = upstream_record(context, "evaluation")
    report = record.get("report") or {"metrics": record["metrics"]}
    v = verdict(report)
    value = record["metrics"].get(quality.metric)
    problems = [] if v.status == "ok" else [f"{name}: {v.line}"]
    if value is None:
        v.status = "error"
        problems.append(f"{name}: no metric {quality.metric!r} (has {sorted(record['metrics'])})")
    elif math.isfinite(value) and value < quality.floor:
        v.status = "error" if v.status == "error" else "warn"
        problems.append(f"{name}: {quality.metric} = {value:.4f} is below the floor {quality.floor}")
    margins = {
        f"better than {b} by": MetadataValue.text(fmt_interval(m)) for b, m in sorted(v.margins.items())
    }
    return AssetCheckResult(
        passed=v.status == "ok",
        severity=AssetCheckSeverity.ERROR if v.status == "error" else AssetCheckSeverity.WARN,
        metadata={
            # keyed by experiment too: the check page's plot draws one series per key, so experiments'
            # values are not joined into one line that reads as a regression
            f"value/{name}": rounded(value) if isinstance(value, int | float) else MetadataValue.null(),
            "verdict": v.line,
            "best_baseline": v.best_baseline or MetadataValue.null(),
            **margins,
            "margins": MetadataValue.json(v.margins),
            "metric": quality.metric,
            "floor": MetadataValue.float(float(quality.floor)),
            "checkpoint": MetadataValue.path(record["checkpoint"]),
            **({"problems": MetadataValue.json(problems)} if problems else {}),
        },
        description="; ".join(problems) or v.line,
    )


CHECKS = [corpus_files_readable, evaluation_metrics_ok]
