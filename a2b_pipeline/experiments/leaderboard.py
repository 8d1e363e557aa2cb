"""The leaderboard: one row per experiment (and per cross-validation summary), from evaluation reports.

Rows come from what runs leave on disk: a run directory's newest TrainState (model, datasets, steps,
config hash, status) and its `evaluation-test.json` (the report of evaluation/evaluate.py, schema
`a2b.evaluation/1`, as README's "Evaluating a model" reads it: per-channel metrics with bootstrap intervals,
baselines and the model's margins over them), or a cross-validation's `cv_summary.json` (mean and std over
folds). Evaluations written before baselines existed still give a row, from their pooled per-window
`metrics`, without intervals. A run that stopped, failed or was never evaluated is a row too, with its
status: nothing is dropped silently.

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

from a2b_pipeline.checkpoint.directory import STATE_FILE, CheckpointError, list_checkpoints
from a2b_pipeline.evaluation import REPORT_FILE
from a2b_pipeline.experiments import CV_SUMMARY_FILE
from a2b_pipeline.files import MAX_STATE_BYTES, read_json

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
    margins: dict[str, Cell] = field(default_factory=dict)  # baseline -> how much better the model is (mean)
    baselines: dict[str, Cell] = field(default_factory=dict)  # baseline -> its own score (mean channel)
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


def baseline_cells(report: dict[str, Any], metric: str = DEFAULT_METRIC) -> dict[str, Cell]:
    """baseline -> its whole-recording score (mean over channels), where the report defines one."""
    out = {}
    for name, p in (_get(report, "summary", "predictors") or {}).items():
        stat = _get(p, "recording", metric, "mean")
        if name != "model" and isinstance(stat, dict) and _finite(stat.get("value")) is not None:
            out[name] = _stat_cell(stat)
    return out


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
        baselines=baseline_cells(report, metric),
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
        baselines = {b: c for b in BASELINES if (c := cell(f"{b}/recording/{metric}/mean")).value is not None}
    else:
        split = summary.get("split", "test")
        channels = {
            ch: cell(f"metrics/{split}/{metric}" + ("" if ch == "mean" else f"_{ch}")) for ch in channels_list
        }
        margins, baselines = {}, {}
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
        baselines=baselines,
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
    from a2b_pipeline.state import TrainState

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
    report_path = run_dir / REPORT_FILE.format(split=split)
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

    for ckpt in reversed(list_checkpoints(run_dir)):
        try:
            raw = read_json(ckpt / STATE_FILE, MAX_STATE_BYTES, "train state")
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
    head += [f"{metric} {c}" for c in channels] + [f"better than {b} by" for b in baselines]
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


def to_table(rows: list[Row]) -> tuple[list[str], list[dict[str, str]]]:
    """The compact table a UI shows inline: (columns, one dict per row, best first): the main metric's
    mean over channels with its interval, how much better than each baseline, and where it came from."""
    # a margin column only where some row has one (the r of a constant predictor is undefined)
    baselines = [
        b for b in _baseline_names(rows) if any(r.margins.get(b, Cell(None)).value is not None for r in rows)
    ]
    metric = rows[0].metric if rows else DEFAULT_METRIC
    columns = ["experiment", "status", "model", "datasets", f"{metric} (mean)"]
    columns += [f"better than {b} by" for b in baselines] + ["steps", "config hash", "note"]
    records = []
    for r in ordered(rows):
        mean = r.channels.get("mean")
        cells = [r.experiment if r.kind == "run" else f"{r.experiment} ({r.kind})", r.status, r.model]
        cells += [", ".join(r.datasets), mean.text() if mean else ""]
        cells += [r.margins[b].text() if b in r.margins else "" for b in baselines]
        cells += ["" if r.steps is None else str(r.steps), r.config_hash, r.note]
        records.append(dict(zip(columns, cells, strict=True)))
    return columns, records


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


_BASELINE_MARKS = {"other_listeners": ("D", "tab:green"), "audio_linear": ("s", "tab:blue")}


def plot(rows: list[Row]) -> bytes:
    """PNG: the main metric (mean over channels) per experiment, a dot with its interval, each baseline's
    score on the same recordings as a mark on the same row, the axis fitted to the values (so 0.92 and
    0.94 look different); rows without a value say their status. One row per experiment, the legend below
    the axes: no label covers another."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    rows = ordered(rows)
    metric = rows[0].metric if rows else DEFAULT_METRIC
    values = [
        v
        for r in rows
        for c in [r.channels.get("mean"), *r.baselines.values()]
        if c is not None
        for v in (c.value, c.low, c.high)
        if v is not None
    ]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    pad = max(0.05 * (hi - lo), 0.01)
    lo, hi = lo - pad, hi + pad
    fig, ax = plt.subplots(figsize=(8, 0.45 * max(len(rows), 2) + 1.6), dpi=80)
    seen: set[str] = set()
    for i, r in enumerate(rows):
        c = r.channels.get("mean")
        if c is None or c.value is None:
            ax.text(lo + pad / 4, i, r.status, va="center", color="tab:red", fontsize=8)
            continue
        for name, b in r.baselines.items():
            marker, color = _BASELINE_MARKS.get(name, ("^", "tab:gray"))
            ax.plot(
                b.value,
                i,
                marker,
                color=color,
                markersize=7,
                fillstyle="none",
                mew=1.5,
                label=None if name in seen else f"baseline: {name}",
            )
            seen.add(name)
        err = None
        if c.low is not None and c.high is not None:
            err = [[c.value - c.low], [c.high - c.value]]
        color = "tab:orange" if r.kind == "run" else "tab:purple"
        label = "model (95% interval)" if r.kind == "run" else "model, CV (mean ± std)"
        ax.errorbar(
            c.value, i, xerr=err, fmt="o", color=color, capsize=3, label=None if label in seen else label
        )
        seen.add(label)
    labels = [r.experiment if r.kind == "run" else f"{r.experiment} ({r.kind})" for r in rows]
    ax.set_yticks(range(len(rows)), labels)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_xlim(lo, hi)
    ax.grid(axis="x", alpha=0.3)
    ax.set_xlabel(f"test {metric}, whole recordings (median over recordings, mean over channels)")
    ax.tick_params(labelsize=8)
    if seen:
        ax.legend(
            loc="upper center",
            bbox_to_anchor=(0.5, -0.5 / max(len(rows), 2) - 0.12),
            ncol=4,
            fontsize=8,
            frameon=False,
        )
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()
