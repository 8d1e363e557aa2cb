"""Scoring predictions of whole recordings: per window and per recording, median over recordings with a
bootstrap 95% interval resampled over subjects, and the model's paired margin over each baseline.

Numbers that are undefined (Pearson r of a constant, a baseline with nothing to say) are `None` with a reason,
never 0 or NaN. The JSON layout is described in README.md ("Reading an evaluation").
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from a2b_pipeline.data.recording import Recording
from a2b_pipeline.data.splits import group_key

METRICS = ("pearson", "ccc", "mae", "mse")
LOWER_IS_BETTER = frozenset({"mae", "mse"})
LEVELS = ("recording", "window")
N_BOOT = 1000
_TINY = 1e-12  # variance below this: the series is constant


def scores(pred: np.ndarray, true: np.ndarray) -> dict[str, np.ndarray]:
    """Metrics over time (axis -2) of [..., T, C] arrays -> metric -> [..., C]; NaN where undefined
    (Pearson r needs both series to vary; CCC needs one to)."""
    pm, tm = pred.mean(-2, keepdims=True), true.mean(-2, keepdims=True)
    pc, tc = pred - pm, true - tm
    pv, tv = (pc * pc).mean(-2), (tc * tc).mean(-2)
    cov = (pc * tc).mean(-2)
    pm, tm = pm[..., 0, :], tm[..., 0, :]
    denom = pv + tv + (pm - tm) ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        pearson = np.where((pv > _TINY) & (tv > _TINY), cov / np.sqrt(pv * tv), np.nan)
        ccc = np.where(denom > _TINY, 2 * cov / denom, np.nan)
    err = pred - true
    return {"pearson": pearson, "ccc": ccc, "mae": np.abs(err).mean(-2), "mse": (err * err).mean(-2)}


@dataclass
class RecordingEval:
    """One evaluated recording: the true target and every predictor's windows and whole-recording series,
    all normalised, on the recording's target grid. NaN: no prediction (or no window covers the sample)."""

    rec: Recording
    true: np.ndarray  # [N, C], NaN outside the samples the model's windows cover
    starts: list[int]  # target index where each window starts
    window_len: int
    windows: dict[str, np.ndarray] = field(default_factory=dict)  # predictor -> [W, Tw, C]
    series: dict[str, np.ndarray] = field(default_factory=dict)  # predictor -> [N, C]

    def true_windows(self) -> np.ndarray:
        return np.stack([self.true[s : s + self.window_len] for s in self.starts])

    def values(self, name: str, like: str | None = None) -> dict[str, dict[str, np.ndarray]]:
        """level -> metric -> [C] for predictor `name`; `like`: only where predictor `like` predicts too
        (so a margin compares both on the same samples and windows)."""
        ok_s = np.isfinite(self.true).all(1) & np.isfinite(self.series[name]).all(1)
        ok_w = np.isfinite(self.windows[name]).all((1, 2))
        if like is not None:
            ok_s &= np.isfinite(self.series[like]).all(1)
            ok_w &= np.isfinite(self.windows[like]).all((1, 2))
        n_ch = self.true.shape[1]
        nan = {m: np.full(n_ch, np.nan) for m in METRICS}
        rec = scores(self.series[name][ok_s], self.true[ok_s]) if ok_s.sum() >= 2 else nan
        if ok_w.any():
            per = scores(self.windows[name][ok_w], self.true_windows()[ok_w])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN channels stay NaN
                win = {m: np.nanmean(v, axis=0) for m, v in per.items()}
        else:
            win = nan
        return {"recording": rec, "window": win}


def _with_mean(values: np.ndarray) -> np.ndarray:
    """[R, C] -> [R, C + 1]: the last column is the mean over each recording's defined channels."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.concatenate([values, np.nanmean(values, axis=1, keepdims=True)], axis=1)


def stat(values: np.ndarray, subjects: list[Any], reason: str, n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """Median over recordings of `values` [R] (NaN: undefined there) with a percentile bootstrap 95%
    interval that resamples subjects (all recordings of a drawn subject go in together)."""
    ok = np.isfinite(values)
    if not ok.any():
        return {"value": None, "ci_low": None, "ci_high": None, "n": 0, "reason": reason}
    vals = values[ok]
    who = [s for s, k in zip(subjects, ok, strict=True) if k]
    out: dict[str, Any] = {"value": float(np.median(vals)), "ci_low": None, "ci_high": None}
    out.update(n=int(ok.sum()), reason=None)
    ids = {s: i for i, s in enumerate(dict.fromkeys(who))}
    if len(ids) >= 2:
        draws = np.random.default_rng(seed).integers(0, len(ids), size=(n_boot, len(ids)))
        meds = _resampled_medians(vals, np.array([ids[s] for s in who]), draws)
        out["ci_low"], out["ci_high"] = (float(x) for x in np.percentile(meds, [2.5, 97.5]))
    return out


def _resampled_medians(vals: np.ndarray, subject: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """np.median of each resample (every recording of each drawn subject, repeats included), vectorised:
    a recording counts as often as its subject was drawn."""
    order = np.argsort(vals, kind="stable")
    v = vals[order]
    counts = np.zeros((draws.shape[0], subject.max() + 1), dtype=np.int64)  # [B, S]: times each was drawn
    np.add.at(counts, (np.arange(draws.shape[0])[:, None], draws), 1)
    cw = np.cumsum(counts[:, subject[order]], axis=1)  # [B, n]: multiset size up to each sorted value
    total = cw[:, -1]

    def at(rank: np.ndarray) -> np.ndarray:  # the value of the given 0-based rank in each resample
        return v[np.minimum((cw <= rank[:, None]).sum(1), len(v) - 1)]

    return (at((total - 1) // 2) + at(total // 2)) / 2


def _undefined_reason(name: str, metric: str) -> str:
    if name == "constant" and metric in ("pearson",):
        return "the prediction is constant: Pearson r is undefined"
    return f"{metric} is undefined on every recording (a constant signal or prediction, or no data)"


def block(
    evals: list[RecordingEval],
    channels: list[str],
    predictors: list[str],
    unavailable: dict[str, str],
    n_boot: int = N_BOOT,
) -> dict[str, Any]:
    """The Block of the evaluation JSON for these recordings: every predictor, and the model's margins."""
    subjects = [group_key(e.rec, "subject") for e in evals]
    keys = [*channels, "mean"]
    out: dict[str, Any] = {
        "n_recordings": len(evals),
        "n_subjects": len(set(subjects)),
        "n_windows": sum(len(e.starts) for e in evals),
        "predictors": {},
        "margins": {},
    }

    def table(per_rec: list[dict[str, dict[str, np.ndarray]]], reason_for) -> dict[str, Any]:
        levels: dict[str, Any] = {}
        for level in LEVELS:
            levels[level] = {}
            for m in METRICS:
                vals = _with_mean(np.stack([v[level][m] for v in per_rec]))
                levels[level][m] = {
                    k: stat(vals[:, j], subjects, reason_for(m), n_boot) for j, k in enumerate(keys)
                }
        return levels

    for name in predictors:
        if name in unavailable:
            per = [_nan_values(len(channels)) for _ in evals]
            body = table(per, lambda m, r=unavailable[name]: r)
            n = 0
        else:
            per = [e.values(name) for e in evals]
            body = table(per, lambda m, n=name: _undefined_reason(n, m))
            n = sum(bool(np.isfinite(e.series[name]).any()) for e in evals)
        out["predictors"][name] = {
            "available": name not in unavailable,
            "reason": unavailable.get(name),
            "n_recordings": n,
            **body,
        }
    for name in predictors:
        if name == "model":
            continue
        if name in unavailable:
            why = unavailable[name]
            out["margins"][name] = table([_nan_values(len(channels)) for _ in evals], lambda m, w=why: w)
            continue
        per = []
        for e in evals:
            model, base = e.values("model", like=name), e.values(name)
            per.append(
                {
                    level: {
                        m: (base[level][m] - model[level][m])
                        if m in LOWER_IS_BETTER
                        else (model[level][m] - base[level][m])
                        for m in METRICS
                    }
                    for level in LEVELS
                }
            )
        out["margins"][name] = table(
            per, lambda m, n=name: f"the {n} baseline's {m} (or the model's) is undefined on every recording"
        )
    return out


def _nan_values(n_ch: int) -> dict[str, dict[str, np.ndarray]]:
    return {level: {m: np.full(n_ch, np.nan) for m in METRICS} for level in LEVELS}
