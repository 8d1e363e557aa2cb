"""Grouped k-fold cross-validation: train and evaluate each fold, then mean and std over folds.

A config with `data.split.folds: K` is cross-validated by K runs, the k-th with `data.split.fold: k`
(data/splits.py `split_fold`: that fold's groups are the test set, no group is in two folds' test sets).
Everything lives in one directory per CV config:

    <checkpoint.dir>/<name>-cv-<config hash>/
      fold-0/ ... fold-<K-1>/      run directories (resumable like any run; evaluation-test.json inside)
      cv_summary.json              mean, std and per-fold values of every metric, model and baselines

The CLI (`a2b cv`) and the Dagster fold assets call the same functions; a fold's run resumes from its
checkpoints under either, and a complete one is reported without training again.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from a2b_pipeline.configs import ConfigError, RunConfig
from a2b_pipeline.data.pipeline import prepare_data
from a2b_pipeline.data.splits import group_key, group_kinds
from a2b_pipeline.evaluation.evaluate import evaluate_report, report_path, resolve_checkpoint
from a2b_pipeline.experiments import CV_SUMMARY_FILE
from a2b_pipeline.files import atomic_write, read_json
from a2b_pipeline.runs import cv_dir, fold_dir, run_training
from a2b_pipeline.security import Grant, check_grant
from a2b_pipeline.state import TrainState

log = logging.getLogger(__name__)

SCHEMA = "a2b.cv/1"


def require_folds(cfg: RunConfig) -> int:
    folds = cfg.data.split.folds
    if folds is None:
        raise ConfigError(f"config {cfg.name!r}: set data.split.folds (>= 2) to cross-validate")
    return folds


def fold_config(cfg: RunConfig, fold: int) -> RunConfig:
    """The run config of one fold: `data.split.fold` set, named `<name>.fold-<k>`."""
    folds = require_folds(cfg)
    if not 0 <= fold < folds:
        raise ConfigError(
            f"config {cfg.name!r}: fold {fold} is not in 0..{folds - 1} (data.split.folds={folds})"
        )
    split = cfg.data.split.model_copy(update={"fold": fold})
    data = cfg.data.model_copy(update={"split": split})
    return cfg.model_copy(update={"data": data, "name": f"{cfg.name}.fold-{fold}"})


@dataclass
class FoldResult:
    fold: int
    run_dir: str
    status: str  # the run's TrainState status, or "missing" / "failed"
    steps: int | None = None
    config_hash: str = ""
    checkpoint: str = ""  # the evaluated (best) checkpoint
    report: str | None = None  # path of the fold's evaluation JSON
    message: str = ""
    test_groups: dict[str, list[str]] = field(default_factory=dict)  # kind -> "dataset/id" held out


# ---- one fold ----


def train_fold(
    cfg: RunConfig, fold: int, root: Path, fresh: bool = False, launch: str | None = None
) -> TrainState:
    """Train fold `fold` in `root/fold-<k>` as runs.py's table says (a run there is continued, a complete one
    returned as it is; `fresh` trains anew in a new directory beside it)."""
    fcfg = fold_config(cfg, fold)
    say = lambda message: log.info("fold %d: %s", fold, message)  # noqa: E731
    return run_training(fcfg, fold_dir(root, fold), fresh=fresh, launch=launch, say=say).state


def test_groups(prepared: Any, group_by: str) -> dict[str, list[str]]:
    """The groups (subjects / stimuli, "dataset/id") in a prepared split's test set."""
    recs = [r for lst in prepared.recordings["test"].values() for r in lst]
    return {kind: sorted({"/".join(group_key(r, kind)) for r in recs}) for kind in group_kinds(group_by)}


def evaluate_fold(
    state: Any, device: str = "cpu", grant: Grant | None = None
) -> tuple[dict[str, Any], Path, dict[str, list[str]]]:
    """Evaluate a fold's best checkpoint on its test set (model and baselines, evaluate.evaluate_report, which
    writes `<run_dir>/evaluation-test.json`). Returns (report, its path, the test groups). The fold's config
    may reach at most what `grant` allows (default: the environment's)."""
    ckpt = resolve_checkpoint(state.run_dir)
    grant = grant or Grant.from_env()
    check_grant(state.config, grant, str(ckpt))
    data = prepare_data(state.config)
    report = evaluate_report(ckpt, "test", data=data, device=device, grant=grant)
    return report, report_path(report), test_groups(data, state.config.data.split.group_by)


def fold_result(fold: int, state: Any, report_path: Path | None, groups: dict[str, list[str]]) -> FoldResult:
    ckpt = str(resolve_checkpoint(state.run_dir)) if report_path else ""
    return FoldResult(
        fold=fold,
        run_dir=str(state.run_dir),
        status=state.status,
        steps=state.global_step,
        config_hash=state.config_hash,
        checkpoint=ckpt,
        report=str(report_path) if report_path else None,
        message=state.message or "",
        test_groups=groups,
    )


# ---- mean and std over folds ----


def flatten_report(report: dict[str, Any]) -> dict[str, float | None]:
    """Every number of a report under a path-like key: `model/recording/pearson/eda`,
    `constant/window/mae/mean`, `margin/audio_linear/recording/ccc/mean`, and the pooled
    `metrics/test/pearson`. Undefined values are None (never 0)."""
    out: dict[str, float | None] = {}
    for k, v in (report.get("metrics") or {}).items():
        out[f"metrics/{k}"] = _num(v)
    summary = report.get("summary") or {}
    for predictor, p in (summary.get("predictors") or {}).items():
        for level in ("recording", "window"):
            for metric, by_channel in (p.get(level) or {}).items():
                for ch, stat in by_channel.items():
                    out[f"{predictor}/{level}/{metric}/{ch}"] = _num(stat.get("value"))
    for baseline, levels in (summary.get("margins") or {}).items():
        for level, metrics in levels.items():
            for metric, by_channel in metrics.items():
                for ch, stat in by_channel.items():
                    out[f"margin/{baseline}/{level}/{metric}/{ch}"] = _num(stat.get("value"))
    return out


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and math.isfinite(v) else None


def fold_stats(reports: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """key -> {mean, std (sample, n-1; 0 for one fold), n, values (per fold, None where undefined)}.
    The mean and std are over the folds where the value is defined; `n` says how many."""
    flat = [flatten_report(r) for r in reports]
    keys = sorted({k for f in flat for k in f})
    out = {}
    for k in keys:
        values = [f.get(k) for f in flat]
        defined = [v for v in values if v is not None]
        out[k] = {
            "mean": statistics.fmean(defined) if defined else None,
            "std": statistics.stdev(defined) if len(defined) > 1 else (0.0 if defined else None),
            "n": len(defined),
            "values": values,
        }
    return out


def summarize(cfg: RunConfig, root: Path, results: list[FoldResult]) -> dict[str, Any]:
    """Write `root/cv_summary.json` from the folds' results and reports; returns it."""
    folds = require_folds(cfg)
    evaluated = [r for r in results if r.report]
    reports = [read_json(r.report, what="evaluation report") for r in evaluated]  # type: ignore[arg-type]
    problems = [
        f"fold {r.fold}: {r.status}" + (f" ({r.message})" if r.message else "")
        for r in results
        if not r.report
    ]
    missing = sorted(set(range(folds)) - {r.fold for r in results})
    problems += [f"fold {k}: not run" for k in missing]
    summary = {
        "schema": SCHEMA,
        "experiment": cfg.name,
        "config_hash": cfg.config_hash(),
        "dir": str(root),
        "model": cfg.model.name,
        "datasets": [d.name for d in cfg.data.datasets],
        "channels": list(cfg.data.channels),
        "split": "test",
        "group_by": cfg.data.split.group_by,
        "folds": folds,
        "folds_evaluated": len(evaluated),
        "steps": max((r.steps or 0 for r in results), default=None),
        "fold_results": [asdict(r) for r in sorted(results, key=lambda r: r.fold)],
        "stats": fold_stats(reports),
        "problems": problems,
    }
    _atomic_json(root / CV_SUMMARY_FILE, summary)
    return summary


def _atomic_json(path: Path, obj: Any) -> None:
    atomic_write(path, json.dumps(obj, indent=1, sort_keys=True).encode())


# ---- all folds ----


def run_cv(
    cfg: RunConfig,
    parent: str | Path | None = None,
    *,
    fresh: bool = False,
    device: str = "cpu",
    only: list[int] | None = None,
) -> dict[str, Any]:
    """Train (or resume) and evaluate every fold (or those in `only`), then write and return the summary.
    A fold that stops (signal, non-finite loss) is reported in the summary's `problems`; running again
    resumes it."""
    folds = require_folds(cfg)
    root = cv_dir(cfg, parent)
    results = []
    for k in range(folds):
        if only is not None and k not in only:
            results += [r for r in _existing(cfg, root, k)]
            continue
        state = train_fold(cfg, k, root, fresh=fresh)
        if state.status != "complete":
            results.append(fold_result(k, state, None, {}))
            continue
        _, path, groups = evaluate_fold(state, device, Grant.from_config(cfg, cfg.name))
        results.append(fold_result(k, state, path, groups))
    return summarize(cfg, root, results)


def _existing(cfg: RunConfig, root: Path, fold: int) -> list[FoldResult]:
    """A fold not run now: its result from an earlier run's summary, if there is one."""
    path = root / CV_SUMMARY_FILE
    if not path.is_file():
        return []
    for r in read_json(path, what="CV summary").get("fold_results", []):
        if r["fold"] == fold:
            return [FoldResult(**r)]
    return []
