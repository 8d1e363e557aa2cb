"""The verdict on an evaluation report: is the model reliably better than its best baseline?

One function for the Dagster check (`evaluation_metrics_ok`) and the last line of `a2b evaluate`, so both
say the same thing. Margins follow the report's one sign convention (scoring.py): positive means the model
is better, for every metric (model - baseline for r and CCC, baseline - model for MAE and MSE); a margin's
interval is the bootstrap 95% interval over subjects. The best baseline is the one the model leads by the
least (the median margin of whole recordings, mean over channels).

- `error`: a metric the gate needs is missing or not finite (pooled test metrics, or the model's own score).
- `warn`: the interval of the margin over the best baseline reaches 0 or below (or is undefined: one
  subject gives no interval), so the model is not reliably better than it.
- `ok`: the model is better than every available baseline, each interval above 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

GATE_METRIC = "pearson"
GATE_LEVEL = "recording"
METRIC_LABEL = {"pearson": "Pearson r", "ccc": "CCC", "mae": "MAE", "mse": "MSE"}


@dataclass
class Verdict:
    status: str  # "ok", "warn" or "error"
    line: str  # one line a person reads
    best_baseline: str | None = None
    margins: dict[str, dict[str, Any]] = field(default_factory=dict)  # baseline -> {value, ci_low, ci_high}


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def fmt_interval(stat: dict[str, Any]) -> str:
    """`0.123 [0.045, 0.201]`, `0.123 [no interval]` or `undefined`."""
    if stat.get("value") is None:
        return "undefined"
    if stat.get("ci_low") is None:
        return f"{stat['value']:.3f} [no interval]"
    return f"{stat['value']:.3f} [{stat['ci_low']:.3f}, {stat['ci_high']:.3f}]"


def margins_of(report: dict[str, Any], metric: str = GATE_METRIC) -> dict[str, dict[str, Any]]:
    """baseline -> the model's whole-recording margin over it (mean over channels), where defined."""
    out = {}
    for name, levels in report.get("summary", {}).get("margins", {}).items():
        stat = levels.get(GATE_LEVEL, {}).get(metric, {}).get("mean", {})
        if stat.get("value") is not None:
            out[name] = {k: stat.get(k) for k in ("value", "ci_low", "ci_high", "n")}
    return out


def verdict(report: dict[str, Any], metric: str = GATE_METRIC) -> Verdict:
    label = f"whole-recording {METRIC_LABEL.get(metric, metric)}"
    metrics = report.get("metrics") or {}
    bad = sorted(k for k, v in metrics.items() if not _finite(v))
    if not metrics or bad:
        return Verdict("error", f"ERROR: non-finite metrics {bad}" if bad else "ERROR: no test metrics")
    if "summary" not in report:  # an evaluation from before baselines existed: nothing to compare with
        return Verdict("warn", "WARN: this evaluation has no baselines; evaluate the checkpoint again")
    model = report["summary"]["predictors"].get("model", {})
    own = model.get(GATE_LEVEL, {}).get(metric, {}).get("mean", {}).get("value")
    if not _finite(own):
        return Verdict("error", f"ERROR: the model's {label} is undefined or not finite")
    margins = margins_of(report, metric)
    if not margins:
        return Verdict("warn", f"WARN: no baseline to compare with on {label} (model {own:.3f})")
    best = min(margins, key=lambda name: margins[name]["value"])
    m = margins[best]
    by = f"by {fmt_interval(m)} on {label}"
    if m["ci_low"] is not None and m["ci_low"] > 0:
        return Verdict("ok", f"ok: model better than {best}, the best baseline, {by}", best, margins)
    why = "its interval is not above 0" if m["ci_low"] is not None else "no interval: one subject"
    line = f"WARN: model not reliably better than {best}, the best baseline: better than it {by} ({why})"
    return Verdict("warn", line, best, margins)
