"""Asset checks that read what an asset recorded and look at the files themselves.

(The window-level checks, targets finite and split coverage, are computed inside `dataset_splits`,
where the decoded windows are in memory: see its `check_specs`.)
"""

import math
from typing import Any

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
    description="Every test metric is finite, and the gate metric (QualityGate resource, default "
    "test/pearson) is at or above its floor.",
)
def evaluation_metrics_ok(context: AssetCheckExecutionContext, quality: QualityGate) -> AssetCheckResult:
    name = context.partition_key
    record = upstream_record(context, "evaluation")
    metrics: dict[str, Any] = record["metrics"]
    problems: list[str] = []
    bad = sorted(k for k, v in metrics.items() if not (isinstance(v, int | float) and math.isfinite(v)))
    value = metrics.get(quality.metric)
    if bad:
        problems.append(f"{name}: non-finite metrics {bad}")
    if value is None:
        problems.append(f"{name}: no metric {quality.metric!r} (has {sorted(metrics)})")
    elif not math.isfinite(value) or value < quality.floor:
        problems.append(f"{name}: {quality.metric} = {value:.4f} is below the floor {quality.floor}")
    return AssetCheckResult(
        passed=not problems,
        severity=AssetCheckSeverity.ERROR,
        metadata={
            # keyed by experiment too: the check page's plot draws one series per key, so experiments'
            # values are not joined into one line that reads as a regression
            f"value/{name}": rounded(value) if isinstance(value, int | float) else MetadataValue.null(),
            "metric": quality.metric,
            "floor": MetadataValue.float(float(quality.floor)),
            "checkpoint": MetadataValue.path(record["checkpoint"]),
            **({"problems": MetadataValue.json(problems)} if problems else {}),
        },
        description="; ".join(problems) or f"{quality.metric} = {value:.3f} >= {quality.floor:g}",
    )


CHECKS = [corpus_files_readable, evaluation_metrics_ok]
