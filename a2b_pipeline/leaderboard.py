"""The leaderboard: one row per experiment (and per cross-validation summary), from evaluation reports.

Rows come from what runs leave on disk: a run directory's newest TrainState (model, datasets, steps,
config hash, status) and its `evaluation-test.json` (the evaluation report, /work/coord/eval_schema.md:
per-channel metrics with bootstrap intervals, baselines and the model's margins over them), or a
cross-validation's `cv_summary.json` (mean and std over folds). Evaluations written before baselines
existed still give a row, from their pooled per-window `metrics`, without intervals. A run that stopped,
failed or was never evaluated is a row too, with its status: nothing is dropped silently.

`a2b leaderboard RUNS_DIR` and the Dagster `leaderboard` asset both render rows with this module.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from a2b_pipeline.files import MAX_STATE_BYTES, read_json

EVALUATION_FILE = "evaluation-{split}.json"
CV_SUMMARY_FILE = "cv_summary.json"
BASELINES = ("constant", "other_listeners", "audio_linear")
DEFAULT_METRIC = "pearson"


@dataclass
class Cell:
    """One number with its interval: a bootstrap CI for a run, mean ± std for a cross-validation."""

    value: float | None
    low: float | None = None
    high: float | None = None
    note: str = ""  # why value is None, or what the interval is

    def text(self, digits: int = 3) -> str:
        if self.value is None:
            return "n/a"
        out = f"{self.value:.{digits}f}"
        if self.low is not None and self.high is not None:
            out += f" [{self.low:.{digits}f}, {self.high:.{digits}f}]"
        return out


@dataclass
class Row:
    experiment: str
    kind: str  # "run", "cv (K folds)", "fold k/K"
    status: str  # "evaluated", or what went wrong: "failed", "missing", "stopped", "not evaluated", ...
    model: str = ""
    datasets: list[str] = field(default_factory=list)
    steps: int | None = None
    config_hash: str = ""
    checkpoint: str = ""
    metric: str = DEFAULT_METRIC
    level: str = ""  # "recording" (whole recordings, with CIs) or "window" (old reports, pooled windows)
    channels: dict[str, Cell] = field(default_factory=dict)  # channel or "mean" -> the main metric
    margins: dict[str, Cell] = field(default_factory=dict)  # baseline -> model minus baseline (mean channel)
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "evaluated"


# ---- rows from reports ----


def _finite(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and math.isfinite(v) else None


def _stat_cell(stat: dict[str, Any] | None) -> Cell:
    if not stat:
        return Cell(None, note="not in the report")
    return Cell(
        _finite(stat.get("value")),
        _finite(stat.get("ci_low")),
        _finite(stat.get("ci_high")),
        note=stat.get("reason") or "",
    )


def _get(d: Any, *path: str) -> Any:
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    return d


def report_cells(
    report: dict[str, Any], metric: str = DEFAULT_METRIC
) -> tuple[str, dict[str, Cell], dict[str, Cell]]:
    """(level, channel -> cell, baseline -> margin cell) of an evaluation report. New reports: whole-recording
    metrics with intervals; older ones (no `summary`): the pooled per-window `<split>/<metric>[_<ch>]`."""
    model = _get(report, "summary", "predictors", "model", "recording", metric)
    if isinstance(model, dict):
        channels = {ch: _stat_cell(model.get(ch)) for ch in [*report.get("channels", []), "mean"]}
        margins = {}
        for baseline, levels in (_get(report, "summary", "margins") or {}).items():
            stat = _get(levels, "recording", metric, "mean")
            if isinstance(stat, dict):
                margins[baseline] = _stat_cell(stat)
        return "recording", channels, margins
    metrics = report.get("metrics") or {}
    split = report.get("split", "test")
    channels = {ch: Cell(_finite(metrics.get(f"{split}/{metric}_{ch}"))) for ch in report.get("channels", [])}
    if not channels:  # a report without a channel list: whatever per-channel metrics it has
        prefix = f"{split}/{metric}_"
        channels = {
            k.removeprefix(prefix): Cell(_finite(v)) for k, v in metrics.items() if k.startswith(prefix)
        }
    channels["mean"] = Cell(_finite(metrics.get(f"{split}/{metric}")))
    return "window", channels, {}


def row_from_report(
    report: dict[str, Any], experiment: str | None = None, metric: str = DEFAULT_METRIC, **extra: Any
) -> Row:
    level, channels, margins = report_cells(report, metric)
    row = Row(
        experiment=experiment or str(report.get("experiment", "")),
        kind="run",
        status="evaluated",
        datasets=list(report.get("datasets") or []),
        steps=report.get("global_step"),
        config_hash=str(report.get("config_hash") or ""),
        checkpoint=str(report.get("checkpoint") or ""),
        metric=metric,
        level=level,
        channels=channels,
        margins=margins,
        note="" if level == "recording" else "old evaluation: pooled windows, no intervals or baselines",
    )
    for k, v in extra.items():
        setattr(row, k, v)
    return row


def row_from_cv_summary(summary: dict[str, Any], metric: str = DEFAULT_METRIC) -> Row:
    """A cross-validation's row: mean over folds, the interval mean ± std (cv.summarize_folds' layout)."""
    stats = summary.get("stats", {})
    level = "recording" if any(k.startswith("model/recording/") for k in stats) else "window"

    def cell(key: str) -> Cell:
        s = stats.get(key)
        if not s or s.get("mean") is None:
            return Cell(None, note="undefined in some fold" if s else "not in the folds' reports")
        std = s.get("std") or 0.0
        return Cell(s["mean"], s["mean"] - std, s["mean"] + std, note=f"mean ± std over {s['n']} folds")

    channels_list = [*summary.get("channels", []), "mean"]
    if level == "recording":
        channels = {ch: cell(f"model/recording/{metric}/{ch}") for ch in channels_list}
        margins = {
            b: cell(f"margin/{b}/recording/{metric}/mean")
            for b in BASELINES
            if f"margin/{b}/recording/{metric}/mean" in stats
        }
    else:
        split = summary.get("split", "test")
        channels = {
            ch: cell(f"metrics/{split}/{metric}" + ("" if ch == "mean" else f"_{ch}")) for ch in channels_list
        }
        margins = {}
    folds, done = summary.get("folds", 0), summary.get("folds_evaluated", 0)
    status = "evaluated" if done == folds and folds else f"incomplete ({done}/{folds} folds evaluated)"
    return Row(
        experiment=str(summary.get("experiment", "")),
        kind=f"cv ({folds} folds)",
        status=status,
        model=str(summary.get("model", "")),
        datasets=list(summary.get("datasets", [])),
        steps=summary.get("steps"),
        config_hash=str(summary.get("config_hash", "")),
        checkpoint=str(summary.get("dir", "")),
        metric=metric,
        level=level,
        channels=channels,
        margins=margins,
        note="; ".join(summary.get("problems", [])),
    )


def missing_row(experiment: str, status: str, note: str = "", **extra: Any) -> Row:
    """A row for an experiment without an evaluation: `status` says why (failed, missing, stopped, ...)."""
    row = Row(experiment=experiment, kind=extra.pop("kind", "run"), status=status, note=note)
    for k, v in extra.items():
        setattr(row, k, v)
    return row


# ---- rows from run directories ----


def _state_facts(state: Any) -> dict[str, Any]:
    cfg = state.config
    return {
        "model": cfg.model.name,
        "datasets": [d.name for d in cfg.data.datasets],
        "steps": state.global_step,
        "config_hash": state.config_hash,
    }


def row_from_run_dir(run_dir: str | Path, split: str = "test", metric: str = DEFAULT_METRIC) -> Row:
    """The row of one run directory: its evaluation if it has one, else its training status."""
    from a2b_pipeline.state import CheckpointError, TrainState, list_checkpoints

    run_dir = Path(run_dir)
    name = run_dir.name
    try:
        state = TrainState.from_checkpoint(run_dir) if list_checkpoints(run_dir) else None
    except CheckpointError as e:
        name, facts = _unverified_facts(run_dir, name)
        return missing_row(name, "failed", f"no valid checkpoint: {e}", checkpoint=str(run_dir), **facts)
    if state is None:
        return missing_row(name, "failed", "no checkpoint was written", checkpoint=str(run_dir))
    facts = _state_facts(state)
    experiment = state.config.name
    report_path = run_dir / EVALUATION_FILE.format(split=split)
    if state.status != "complete":
        from a2b_pipeline.runs import read_stop

        stop = read_stop(run_dir)  # a non-finite loss or an error: written beside the last good checkpoint
        return missing_row(
            experiment,
            stop.status if stop else state.status,
            (stop or state).message or "training did not complete",
            checkpoint=str(run_dir),
            **facts,
        )
    if not report_path.is_file():
        best = str(state.best_checkpoint or state.last_checkpoint or run_dir)
        return missing_row(
            experiment, "not evaluated", f"run `a2b evaluate {run_dir}`", checkpoint=str(best), **facts
        )
    try:
        report = read_json(report_path, what="evaluation report")
    except OSError as e:
        return missing_row(experiment, "failed", f"{report_path}: unreadable ({e})", **facts)
    row = row_from_report(report, experiment, metric)
    row.model = facts["model"]
    row.datasets = row.datasets or facts["datasets"]
    return row


def _unverified_facts(run_dir: Path, default_name: str) -> tuple[str, dict[str, Any]]:
    """Name, model, datasets, step and hash from the newest train_state.json as written, unverified: what a
    row of a broken run can still say about it."""
    from a2b_pipeline.state import list_checkpoints

    for ckpt in reversed(list_checkpoints(run_dir)):
        try:
            raw = read_json(ckpt / "train_state.json", MAX_STATE_BYTES, "train state")
            cfg = raw["config"]
            return cfg.get("name", default_name), {
                "model": cfg["model"]["name"],
                "datasets": [d["name"] for d in cfg["data"]["datasets"]],
                "steps": raw.get("global_step"),
                "config_hash": raw.get("config_hash", ""),
            }
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return default_name, {}


def find_run_dirs(runs_dir: str | Path) -> tuple[list[Path], list[Path]]:
    """(run directories, cross-validation directories) under `runs_dir`: runs.py finds them."""
    from a2b_pipeline.runs import find_run_dirs as find

    return find(runs_dir, cv_marker=CV_SUMMARY_FILE)


def rows_from_runs_dir(runs_dir: str | Path, split: str = "test", metric: str = DEFAULT_METRIC) -> list[Row]:
    """A row per cross-validation (its folds' run directories are summarized there, not listed) and per
    other run directory under `runs_dir`."""
    runs, cvs = find_run_dirs(runs_dir)
    rows = []
    for cv in cvs:
        try:
            rows.append(row_from_cv_summary(read_json(cv / CV_SUMMARY_FILE, what="CV summary"), metric))
        except (OSError, json.JSONDecodeError) as e:
            rows.append(
                missing_row(cv.name, "failed", f"{cv / CV_SUMMARY_FILE}: unreadable ({e})", kind="cv")
            )
    rows += [row_from_run_dir(r, split, metric) for r in runs if not any(c in r.parents for c in cvs)]
    if not rows:
        raise FileNotFoundError(f"{runs_dir}: no run directories (with step_*/ checkpoints) under it")
    return rows


# ---- rendering ----


def _channel_names(rows: list[Row]) -> list[str]:
    names: list[str] = []
    for r in rows:
        names += [c for c in r.channels if c != "mean" and c not in names]
    return [*names, "mean"]


def _baseline_names(rows: list[Row]) -> list[str]:
    found = {b for r in rows for b in r.margins}
    return [b for b in BASELINES if b in found] + sorted(found - set(BASELINES))


def to_markdown(rows: list[Row]) -> str:
    """A Markdown table: the main metric per channel (with intervals), margins over baselines, and where
    each number came from. Evaluated rows first, best mean first; then the others with their status."""
    if not rows:
        return "_no experiments_"
    metric = rows[0].metric
    channels = _channel_names(rows)
    baselines = _baseline_names(rows)
    head = ["experiment", "kind", "status", "model", "datasets"]
    head += [f"{metric} {c}" for c in channels] + [f"Δ vs {b}" for b in baselines]
    head += ["steps", "config hash", "checkpoint", "note"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in ordered(rows):
        status = r.status if r.ok else f"**{r.status}**"
        cells = [r.experiment, r.kind, status, r.model, ", ".join(r.datasets)]
        cells += [r.channels[c].text() if c in r.channels else "" for c in channels]
        cells += [r.margins[b].text() if b in r.margins else "" for b in baselines]
        cells += [
            "" if r.steps is None else str(r.steps),
            r.config_hash,
            f"`{r.checkpoint}`" if r.checkpoint else "",
            r.note,
        ]
        lines.append("| " + " | ".join(_md_escape(c) for c in cells) + " |")
    return "\n".join(lines)


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


LOWER_IS_BETTER = ("mae", "mse")


def ordered(rows: list[Row]) -> list[Row]:
    """Evaluated rows first, best mean over channels first (highest r / CCC, lowest error), then the rest."""

    def key(r: Row) -> tuple:
        mean = r.channels.get("mean")
        v = mean.value if mean and mean.value is not None else None
        score = math.inf if v is None else (v if r.metric in LOWER_IS_BETTER else -v)
        return (not r.ok, score, r.experiment, r.kind)

    return sorted(rows, key=key)


def to_csv(rows: list[Row]) -> str:
    """The same table as CSV: every number in its own column (value, low, high), no formatting."""
    channels = _channel_names(rows)
    baselines = _baseline_names(rows)
    metric = rows[0].metric if rows else DEFAULT_METRIC
    head = ["experiment", "kind", "status", "model", "datasets", "level"]
    for c in channels:
        head += [f"{metric}_{c}", f"{metric}_{c}_low", f"{metric}_{c}_high"]
    for b in baselines:
        head += [f"margin_{b}", f"margin_{b}_low", f"margin_{b}_high"]
    head += ["steps", "config_hash", "checkpoint", "note"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(head)
    for r in ordered(rows):
        out: list[Any] = [r.experiment, r.kind, r.status, r.model, ";".join(r.datasets), r.level]
        for cells, names in ((r.channels, channels), (r.margins, baselines)):
            for n in names:
                c = cells.get(n, Cell(None))
                out += ["" if v is None else repr(v) for v in (c.value, c.low, c.high)]
        out += ["" if r.steps is None else r.steps, r.config_hash, r.checkpoint, r.note]
        w.writerow(out)
    return buf.getvalue()


def plot(rows: list[Row]) -> bytes:
    """PNG: the main metric (mean over channels) per experiment with its interval; rows without a value
    are listed with their status in red at zero."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    rows = ordered(rows)
    metric = rows[0].metric if rows else DEFAULT_METRIC
    fig, ax = plt.subplots(figsize=(7, 0.45 * max(len(rows), 2) + 1.2), dpi=80)
    for i, r in enumerate(rows):
        c = r.channels.get("mean")
        if c is None or c.value is None:
            ax.text(0, i, f"  {r.status}", va="center", color="tab:red", fontsize=8)
            continue
        err = None
        if c.low is not None and c.high is not None:
            err = [[c.value - c.low], [c.high - c.value]]
        ax.barh(i, c.value, xerr=err, color="tab:blue" if r.kind == "run" else "tab:green", capsize=3)
    labels = [r.experiment if r.kind == "run" else f"{r.experiment} ({r.kind})" for r in rows]
    ax.set_yticks(range(len(rows)), labels)
    ax.invert_yaxis()
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel(f"test {metric} (mean over channels; bars: interval)")
    ax.tick_params(labelsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
