"""Evaluating a checkpoint on a split (the model against its baselines) and predicting new audio."""

from __future__ import annotations

import io
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from a2b_pipeline.checkpoint.directory import STATE_FILE, CheckpointError, entry_inside
from a2b_pipeline.checkpoint.store import load_tensors
from a2b_pipeline.configs import RunConfig
from a2b_pipeline.data.datasets import WindowDataset
from a2b_pipeline.data.pipeline import PreparedData, make_loader, prepare_data
from a2b_pipeline.evaluation import REPORT_FILE
from a2b_pipeline.evaluation.baselines import BASELINES, Baselines, fit_baselines, normalised_target
from a2b_pipeline.evaluation.scoring import N_BOOT, RecordingEval, block
from a2b_pipeline.files import atomic_write
from a2b_pipeline.models import build_model, model_io
from a2b_pipeline.security import Grant, check_grant
from a2b_pipeline.state import TrainState
from a2b_pipeline.training.engine import autocast_context, checked_weights, evaluate_loader
from a2b_pipeline.training.metrics import MetricAccumulator, make_loss

REPORT_SCHEMA = "a2b.evaluation/1"


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory as given; for a run directory its `best`, else its newest valid checkpoint."""
    path = Path(path)
    if (path / STATE_FILE).exists():
        return path
    if (path / "best" / STATE_FILE).exists():
        return entry_inside(path, path / "best")  # a `best` leading into another run is refused
    state = TrainState.from_checkpoint(path)
    return state.last_checkpoint or path


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[TrainState, nn.Module]:
    """The checkpoint's model (its EMA weights when it has them), in eval mode."""
    ckpt = resolve_checkpoint(path)
    state = TrainState.from_checkpoint(ckpt)
    if not state.model_state.model_loaded:
        raise CheckpointError(f"{ckpt}: holds no model weights")
    model = build_model(state.config.model, model_io(state.config))
    name = (state.model_state.ema_path or state.model_state.last_model_path).name
    tensors = checked_weights(load_tensors(ckpt, name, state), model, ckpt, name)
    bad = [k for k, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:  # every prediction would be NaN
        raise CheckpointError(f"{ckpt / name}: non-finite weights (NaN/inf) in {', '.join(bad[:5])}: refused")
    model.load_state_dict(tensors)
    return state, model.to(device).eval()


def evaluate_checkpoint(
    path: str | Path, split: str = "test", data: PreparedData | None = None, device: str = "cpu"
) -> dict[str, float]:
    """Loss, MAE, MSE, Pearson r and CCC (per channel and mean) of a checkpoint on a split, pooled over the
    split's windows (the numbers validation tracks). `evaluate_report` gives the full evaluation."""
    state, model = load_model(path, device)
    cfg = state.config
    data = data or prepare_data(cfg)
    if not any(len(ds) for ds in data.splits.get(split, {}).values()):
        raise ValueError(f"split {split!r} has no windows for config {cfg.name!r}")
    loader = make_loader(data, cfg, split)
    loss_fn = make_loss(cfg.train.loss, len(cfg.data.channels))
    dev = torch.device(device)
    return evaluate_loader(model, loader, loss_fn, autocast_context(cfg, dev), dev, cfg.data.channels, split)


@dataclass
class Evaluation:
    """A checkpoint evaluated on a split: the JSON report and the recordings it scored."""

    report: dict[str, Any]
    recordings: list[RecordingEval]
    channels: list[str]
    target_rate: float

    def plot(self, n: int = 3, title: str = "") -> bytes:
        """The first `n` recordings, taking one of each dataset in turn (mixed experiments show each)."""
        by_dataset: dict[str, list[RecordingEval]] = {}
        for e in self.recordings:
            by_dataset.setdefault(e.rec.dataset, []).append(e)
        turns = itertools.zip_longest(*by_dataset.values())
        chosen = [e for turn in turns for e in turn if e is not None][:n]
        units = "z-score" if self.report.get("units") == "z" else "signal units"
        return plot_recordings(chosen, self.channels, self.target_rate, title, units)


@torch.no_grad()
def _predict_windows(
    model: nn.Module, ds: WindowDataset, cfg: RunConfig, device: torch.device, acc: MetricAccumulator
) -> np.ndarray:
    """The model's prediction of every window of `ds`, in order: [len(ds), Tw, C] (normalised units)."""
    loss_fn = make_loss(cfg.train.loss, len(cfg.data.channels))
    autocast = autocast_context(cfg, device)
    out = []
    for x, y in DataLoader(ds, batch_size=cfg.data.batch_size, shuffle=False):
        x, y = x.to(device), y.to(device)
        with autocast:
            pred = model(x)
        acc.update(pred.float(), y, loss_fn(pred, y))
        out.append(pred.float().cpu().double().numpy())
    return np.concatenate(out)


def overlap_add(windows: np.ndarray, starts: list[int], n: int) -> np.ndarray:
    """Windows [W, Tw, C] stitched into a series [n, C]: each sample the mean of the windows covering it,
    weighted by a Hann taper (a window's first and last seconds, where a model has the least context, count
    least), NaN where no window covers it."""
    tw = windows.shape[1]
    taper = (0.5 - 0.5 * np.cos(2 * np.pi * (np.arange(tw) + 0.5) / tw))[:, None] + 1e-3
    total = np.zeros((n, windows.shape[2]))
    count = np.zeros((n, 1))
    for w, s in zip(windows, starts, strict=True):
        m = min(len(w), n - s)
        total[s : s + m] += (w * taper)[:m]
        count[s : s + m] += taper[:m]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan)


def _recording_evals(
    ds: WindowDataset, preds: np.ndarray, baselines: Baselines, names: list[str]
) -> list[RecordingEval]:
    by_rec: dict[int, list[tuple[int, int]]] = {}
    for i, (r, _, t0, _) in enumerate(ds.index):
        by_rec.setdefault(r, []).append((i, t0))
    tw = ds.targets_per_window
    evals = []
    for r, items in by_rec.items():
        lr = ds.loaded[r]
        idx, starts = [i for i, _ in items], [t0 for _, t0 in items]
        full = normalised_target(lr, baselines.norm)
        model = overlap_add(preds[idx], starts, len(full))
        covered = np.isfinite(model).all(1)
        true = np.where(covered[:, None], full, np.nan)
        ev = RecordingEval(lr.rec, true, starts, tw)
        ev.windows["model"], ev.series["model"] = preds[idx], model
        for name in names:
            series = baselines.predict(name, lr)
            ev.windows[name] = np.stack([series[s : s + tw] for s in starts])
            ev.series[name] = np.where(covered[:, None], series, np.nan)
        evals.append(ev)
    return evals


def run_evaluation(
    path: str | Path,
    split: str = "test",
    data: PreparedData | None = None,
    device: str = "cpu",
    n_boot: int = N_BOOT,
    grant: Grant | None = None,
) -> Evaluation:
    """The model and every baseline (fitted on the train split) on exactly the split's windows and
    recordings: per channel and mean, per window and whole recording, overall and per dataset.
    The layout of `report` is in README.md ("Reading an evaluation"). Without `data`, the checkpoint's config
    may reach at most what `grant` allows (default: the environment's, security.Grant.from_env)."""
    ckpt = resolve_checkpoint(path)
    state, model = load_model(ckpt, device)
    cfg = state.config
    if data is None:  # the checkpoint's config names the data: it may reach at most what `grant` allows
        check_grant(cfg, grant or Grant.from_env(), str(ckpt))
        data = prepare_data(cfg)
    parts = {name: ds for name, ds in data.splits.get(split, {}).items() if len(ds)}
    if not parts:
        raise ValueError(f"split {split!r} has no windows for config {cfg.name!r}")
    train = [lr for ds in data.splits["train"].values() for lr in ds.loaded]
    everyone = [lr for p in data.splits.values() for ds in p.values() for lr in ds.loaded]
    baselines = fit_baselines(train, everyone + [d.loaded for d in data.dropped], data.norm, cfg.data)
    channels = list(cfg.data.channels)
    acc = MetricAccumulator(channels)
    dev = torch.device(device)
    evals: dict[str, list[RecordingEval]] = {}
    for name, ds in parts.items():
        preds = _predict_windows(model, ds, cfg, dev, acc)
        evals[name] = _recording_evals(ds, preds, baselines, list(BASELINES))
    predictors = ["model", *BASELINES]

    def block_of(recs: list[RecordingEval]) -> dict[str, Any]:
        loaded = [lr for ds in parts.values() for lr in ds.loaded if any(lr.rec is e.rec for e in recs)]
        unavailable = {b: why for b in BASELINES if (why := baselines.available(b, loaded)) is not None}
        return block(recs, channels, predictors, unavailable, n_boot)

    everything = [e for recs in evals.values() for e in recs]
    report = {
        "schema": REPORT_SCHEMA,
        "experiment": cfg.name,
        "checkpoint": str(ckpt),
        "run_dir": str(ckpt.parent),
        "config_hash": state.config_hash,
        "data_version": data.data_version,
        "global_step": state.global_step,
        "split": split,
        "channels": channels,
        "units": "z" if cfg.data.normalize != "none" else "signal",
        "normalize": cfg.data.normalize,
        "datasets": list(parts),
        "metrics": {k: float(v) for k, v in acc.compute(split).items()},
        "splits": {k: v for k, v in data.split_summary().items() if k != "dropped_recordings"},
        "summary": block_of(everything),
        "by_dataset": {name: block_of(recs) for name, recs in evals.items()},
    }
    return Evaluation(report, everything, channels, cfg.data.target_rate)


def evaluate_report(
    path: str | Path,
    split: str = "test",
    data: PreparedData | None = None,
    device: str = "cpu",
    grant: Grant | None = None,
) -> dict[str, Any]:
    """`run_evaluation(...).report`, also written to `<run_dir>/evaluation-<split>.json`."""
    ev = run_evaluation(path, split, data, device, grant=grant)
    write_report(ev.report)
    return ev.report


def _fmt(s: dict[str, Any]) -> str:
    if s["value"] is None:
        return "undefined"
    ci = f" [{s['ci_low']:.3f}, {s['ci_high']:.3f}]" if s["ci_low"] is not None else ""
    return f"{s['value']:.3f}{ci}"


def summary_rows(
    report: dict[str, Any], metrics: tuple[str, ...] = ("pearson", "mae")
) -> tuple[list[str], list[dict[str, str]]]:
    """(columns, rows) of the report's summary: whole-recording medians [95% interval] per channel and mean,
    for the model and each baseline, then how much better the model is than each (positive = better)."""
    summary = report["summary"]
    keys = [*report["channels"], "mean"]
    columns = ["predictor", *(f"{m} {k}" for m in metrics for k in keys)]
    rows = []
    for name, p in sorted(summary["predictors"].items(), key=lambda item: item[0] != "model"):
        cells = [_fmt(p["recording"][m][k]) for m in metrics for k in keys] if p["available"] else []
        cells = cells or [f"n/a: {p['reason']}"] + [""] * (len(metrics) * len(keys) - 1)
        rows.append(dict(zip(columns, [name, *cells], strict=True)))
    for name, levels in summary["margins"].items():
        cells = [_fmt(levels["recording"][m][k]) for m in metrics for k in keys]
        rows.append(dict(zip(columns, [f"better than {name} by", *cells], strict=True)))
    return columns, rows


def summary_caption(report: dict[str, Any]) -> str:
    summary = report["summary"]
    n = f"{summary['n_recordings']} recordings of {summary['n_subjects']} subjects"
    return f"Whole recordings, {report['split']} split ({n}); median [bootstrap 95% over subjects]"


def report_markdown(report: dict[str, Any], metrics: tuple[str, ...] = ("pearson", "mae")) -> str:
    """The report's summary (`summary_rows`) as a Markdown table under its caption."""
    columns, rows = summary_rows(report, metrics)
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(r[c] for c in columns) + " |" for r in rows]
    return summary_caption(report) + "\n\n" + "\n".join(lines)


def report_table(report: dict[str, Any], path: str | Path | None = None, metric: str = "pearson") -> str:
    """The terminal summary of a report: per channel (and the mean), the model's whole-recording median with
    its interval, each baseline's, and how much better the model is than each (positive = better), then
    the recordings and subjects it rests on and where the full report is."""
    from a2b_pipeline.evaluation.gate import METRIC_LABEL, fmt_interval

    summary = report["summary"]
    baselines = [b for b in summary["predictors"] if b != "model"]
    # a margin column only where the baseline scores somewhere (a constant's r is undefined everywhere)
    scored = [
        b for b in baselines if summary["predictors"][b]["recording"][metric]["mean"]["value"] is not None
    ]
    head = ["channel", "model", *baselines, *(f"better than {b} by" for b in scored)]
    rows = []
    for ch in [*report["channels"], "mean"]:
        cells = [ch, fmt_interval(summary["predictors"]["model"]["recording"][metric][ch])]
        for b in baselines:
            p = summary["predictors"][b]
            value = p["recording"][metric][ch]["value"]
            cells.append("n/a" if not p["available"] else "undefined" if value is None else f"{value:.3f}")
        cells += [fmt_interval(summary["margins"][b]["recording"][metric][ch]) for b in scored]
        rows.append(cells)
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()  # noqa: E731
    n = f"{summary['n_recordings']} recordings of {summary['n_subjects']} subjects"
    out = [
        f"{report['experiment']} step {report['global_step']}, {report['split']} split ({n}): "
        f"whole-recording {METRIC_LABEL.get(metric, metric)}, median [bootstrap 95% over subjects]",
        "",
        line(head),
        *(line(r) for r in rows),
        "",
    ]
    if path is not None:
        out.append(f"full report: {path}")
    return "\n".join(out)


def write_report(report: dict[str, Any]) -> Path:
    """`<run_dir>/evaluation-<split>.json` (atomically): the run's latest evaluation of that split."""
    out = report_path(report)
    atomic_write(out, (json.dumps(report, indent=1, sort_keys=True) + "\n").encode())
    return out


def report_path(report: dict[str, Any]) -> Path:
    return Path(report["run_dir"]) / REPORT_FILE.format(split=report["split"])


_COLORS = {
    "model": "tab:orange",
    "constant": "tab:gray",
    "other_listeners": "tab:green",
    "audio_linear": "tab:blue",
}


def plot_recordings(
    evals: list[RecordingEval], channels: list[str], target_rate: float, title: str, units: str = "z-score"
) -> bytes:
    """PNG: whole recordings (a row each, a column per channel), the true signal with the model's and every
    baseline's prediction on the same samples; one legend below the panels; both axis labels on each."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    rows, cols = max(1, len(evals)), max(1, len(channels))
    fig, axes = plt.subplots(rows, cols, figsize=(5.0 * cols, 2.3 * rows), squeeze=False, dpi=80)
    for r, ev in enumerate(evals):
        t = np.arange(ev.true.shape[0]) / target_rate
        for c, ch in enumerate(channels):
            ax = axes[r][c]
            ax.plot(t, ev.true[:, c], label="true", color="black", linewidth=1.3)
            for name, series in ev.series.items():
                if np.isfinite(series[:, c]).any():
                    width = 1.3 if name == "model" else 0.9
                    ax.plot(t, series[:, c], label=name, color=_COLORS.get(name), linewidth=width)
            ax.set_title(f"{ev.rec.dataset}/{ev.rec.recording_id} · {ch}", fontsize=9)
            ax.tick_params(labelsize=7)
            ax.set_xlabel("time (s)", fontsize=8)
            ax.set_ylabel(f"{ch} ({units})", fontsize=8)
    # one legend for every panel, below them (inside a panel it covers the curves)
    handles: dict[str, Any] = {}
    for ax in axes.flat:
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, h)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.legend(
        list(handles.values()),
        list(handles.keys()),
        loc="upper center",
        bbox_to_anchor=(0.5, 0.0),
        ncol=len(handles),
        fontsize=8,
        frameon=False,
    )
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def export_encoder(path: str | Path, out: str | Path) -> Path:
    """Write a trained conv_gru front-end as the weights of a `pretrained_encoder` model.

    The encoder then needs `encoder_channels` = the run's `conv_channels` and `encoder_layers: 2`.
    """
    from safetensors.torch import save_file

    state, model = load_model(path)
    if state.config.model.name != "conv_gru":
        raise ValueError(
            f"{path}: export-encoder needs a conv_gru checkpoint, got {state.config.model.name!r}"
        )
    weights = {
        f"net.{k.removeprefix('frontend.')}": v.contiguous()
        for k, v in model.state_dict().items()
        if k.startswith("frontend.")
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(out))
    return out
