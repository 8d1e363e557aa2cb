"""scoring.py: per-recording metrics, the median over recordings with its subject-bootstrap 95% interval, and
the model's paired margins (positive = the model is better, for correlations and errors alike), each
computed here by hand from recordings built in the test."""

from __future__ import annotations

import numpy as np
import pytest

from a2b_pipeline.data.recording import Recording
from a2b_pipeline.evaluation.scoring import N_BOOT, RecordingEval, block, scores, stat

CHANNELS = ["eda", "hr"]


def _recordings(seed: int = 0) -> list[RecordingEval]:
    """6 recordings of 3 subjects (2 each), 2 channels, 40 samples, windows of 10 at 0, 10, 20, 30: the model
    is the truth plus small noise, baseline `b` the truth plus large noise (and an offset)."""
    rng = np.random.default_rng(seed)
    evals = []
    for i in range(6):
        rec = Recording("d", f"r{i}", f"p{i // 2}", "audio.wav", {})
        true = rng.normal(size=(40, 2)).cumsum(0)
        ev = RecordingEval(rec, true, [0, 10, 20, 30], 10)
        for name, noise, offset in (("model", 0.3, 0.0), ("b", 1.5, 0.5)):
            series = true + noise * rng.normal(size=true.shape) + offset
            ev.series[name] = series
            ev.windows[name] = np.stack([series[s : s + 10] for s in ev.starts])
        evals.append(ev)
    return evals


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


def _hand_metric(pred: np.ndarray, true: np.ndarray, metric: str) -> float:
    if metric == "pearson":
        return _pearson(pred, true)
    if metric == "ccc":
        pm, tm = pred.mean(), true.mean()
        return float(2 * ((pred - pm) * (true - tm)).mean() / (pred.var() + true.var() + (pm - tm) ** 2))
    if metric == "mae":
        return float(np.abs(pred - true).mean())
    return float(((pred - true) ** 2).mean())


def _hand_interval(values: list[float], subjects: list[str], n_boot: int) -> tuple[float, float]:
    """Percentile 95% bootstrap over subjects, seeded as the report is (seed 0): every recording of each
    drawn subject, as often as the subject is drawn."""
    order = list(dict.fromkeys(subjects))
    draws = np.random.default_rng(0).integers(0, len(order), size=(n_boot, len(order)))
    medians = [
        np.median([v for d in row for v, s in zip(values, subjects, strict=True) if s == order[d]])
        for row in draws
    ]
    low, high = np.percentile(medians, [2.5, 97.5])
    return float(low), float(high)


def test_scores_are_the_textbook_formulas() -> None:
    rng = np.random.default_rng(1)
    pred, true = rng.normal(size=(3, 50, 2)), rng.normal(size=(3, 50, 2))
    got = scores(pred, true)
    for m in ("pearson", "ccc", "mae", "mse"):
        assert got[m].shape == (3, 2)
        for b in range(3):
            for c in range(2):
                assert got[m][b, c] == pytest.approx(_hand_metric(pred[b, :, c], true[b, :, c], m)), (m, b, c)


@pytest.mark.parametrize("level", ["recording", "window"])
def test_medians_intervals_and_margins_by_hand(level: str) -> None:
    evals = _recordings()
    n_boot = 200
    out = block(evals, CHANNELS, ["model", "b"], {}, n_boot)
    subjects = [e.rec.subject_id for e in evals]
    assert out["n_recordings"] == 6 and out["n_subjects"] == 3 and out["n_windows"] == 24

    def per_recording(name: str, metric: str, c: int) -> list[float]:
        if level == "recording":
            return [_hand_metric(e.series[name][:, c], e.true[:, c], metric) for e in evals]
        return [
            float(
                np.mean(
                    [
                        _hand_metric(w[:, c], e.true[s : s + 10, c], metric)
                        for w, s in zip(e.windows[name], e.starts, strict=True)
                    ]
                )
            )
            for e in evals
        ]

    for metric in ("pearson", "mae", "mse", "ccc"):
        model = {ch: per_recording("model", metric, c) for c, ch in enumerate(CHANNELS)}
        base = {ch: per_recording("b", metric, c) for c, ch in enumerate(CHANNELS)}
        for values in (model, base):
            values["mean"] = [np.mean(pair) for pair in zip(values["eda"], values["hr"], strict=True)]
        for key in [*CHANNELS, "mean"]:
            got = out["predictors"]["model"][level][metric][key]
            assert got["value"] == pytest.approx(np.median(model[key])) and got["n"] == 6
            assert (got["ci_low"], got["ci_high"]) == pytest.approx(
                _hand_interval(model[key], subjects, n_boot)
            )
            # the margin: model - baseline for correlations, baseline - model for errors
            better = [
                (b - m) if metric in ("mae", "mse") else (m - b)
                for m, b in zip(model[key], base[key], strict=True)
            ]
            margin = out["margins"]["b"][level][metric][key]
            assert margin["value"] == pytest.approx(np.median(better)), (metric, key)
            assert (margin["ci_low"], margin["ci_high"]) == pytest.approx(
                _hand_interval(better, subjects, n_boot)
            )
            assert margin["value"] > 0, "the model is the better predictor here: a positive margin"


def test_stat_default_interval_is_95_percent_over_subjects_with_1000_resamples() -> None:
    rng = np.random.default_rng(5)
    values = rng.normal(size=9)
    subjects = ["a", "a", "b", "c", "c", "c", "d", "e", "e"]
    got = stat(values, subjects, "why")
    assert N_BOOT == 1000
    assert got["value"] == pytest.approx(float(np.median(values))) and got["n"] == 9 and got["reason"] is None
    assert (got["ci_low"], got["ci_high"]) == pytest.approx(_hand_interval(list(values), subjects, 1000))
    # NaN (undefined) recordings are left out, with their subjects
    with_nan = np.concatenate([values, [np.nan]])
    same = stat(with_nan, [*subjects, "z"], "why")
    assert same == got
    assert stat(values[:3], ["a", "a", "a"], "why")["ci_low"] is None  # one subject: no interval


def test_a_baseline_that_predicts_nothing_is_undefined_with_its_reason_not_zero() -> None:
    evals = _recordings()
    for e in evals:
        e.series["b"][:] = np.nan
        e.windows["b"][:] = np.nan
    out = block(evals, CHANNELS, ["model", "b"], {}, 50)
    for level in ("recording", "window"):
        got = out["margins"]["b"][level]["mae"]["mean"]
        assert got["value"] is None and got["n"] == 0 and "undefined" in got["reason"]
        assert out["predictors"]["b"][level]["pearson"]["eda"]["value"] is None
    assert out["predictors"]["b"]["n_recordings"] == 0
    off = block(evals, CHANNELS, ["model", "b"], {"b": "no stimulus ids"}, 50)
    assert (
        off["predictors"]["b"]["available"] is False and off["predictors"]["b"]["reason"] == "no stimulus ids"
    )
    assert off["margins"]["b"]["recording"]["pearson"]["eda"]["reason"] == "no stimulus ids"
