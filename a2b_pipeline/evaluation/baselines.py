"""Baselines: what a model must beat, fitted on the train split and predicting whole recordings.

Every baseline predicts a recording's normalised target [T_target, C] on the recording's target grid (NaN
where it has nothing to say); the evaluation scores it on exactly the samples and windows the model is
scored on.

- `constant`: the train-split mean of each channel (per dataset): knows nothing about the audio or the
  listener. Pearson r of a constant is undefined; its MAE/MSE are the floor any model must beat.
- `other_listeners`: for a recording of stimulus S by listener L, the mean signal of the other listeners of S
  (any split, and the recordings a subject_and_stimulus split dropped: they are listened to, never trained
  on). It measures how far the stimulus alone explains the response: the practical ceiling of an audio-only
  model. Undefined for a stimulus nobody else heard.
- `audio_linear`: ridge regression from the audio's loudness envelope and lagged copies of it (0..4 s back) to
  each channel, fitted on the train split: what a linear, causal loudness-response model explains.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from a2b_pipeline.configs import DataConfig
from a2b_pipeline.data.datasets import LoadedRecording, NormStats
from a2b_pipeline.data.splits import group_key

BASELINES = ("constant", "other_listeners", "audio_linear")
LAG_SECONDS = tuple(0.5 * i for i in range(9))  # 0, 0.5, ..., 4 s: skin conductance responds within ~1-4 s
RIDGE_ALPHA = 1.0


def normalised_target(lr: LoadedRecording, norm: NormStats) -> np.ndarray:
    """The recording's target [T_target, C] in the units the model predicts (float64, NaN kept)."""
    mean, std = norm.target_stats(lr.rec.dataset, lr.rec.subject_id)
    return ((lr.target.double() - mean.double()) / std.double()).numpy()


def loudness(lr: LoadedRecording, data: DataConfig, n_target: int) -> np.ndarray:
    """Loudness envelope on the target grid [n_target]: log of the total mel power of each frame (the
    features are log-mel), averaged over the frames of each target sample's interval."""
    feats = lr.features.double().numpy()
    frame = np.logaddexp.reduce(feats, axis=1)
    per = data.frame_rate / data.target_rate
    edges = np.clip(np.round(np.arange(n_target + 1) * per).astype(int), 0, len(frame))
    csum = np.concatenate([[0.0], np.cumsum(frame)])
    counts = np.maximum(edges[1:] - edges[:-1], 1)
    out = (csum[edges[1:]] - csum[edges[:-1]]) / counts
    empty = edges[1:] <= edges[:-1]  # past the last frame: hold the last value
    if empty.any() and len(frame):
        out[empty] = frame[-1]
    return out


def lagged(env: np.ndarray, lags: list[int]) -> np.ndarray:
    """[n, len(lags)]: env delayed by each lag (the first value repeated before the start)."""
    cols = [np.concatenate([np.full(lag, env[0]), env[: len(env) - lag]]) if lag else env for lag in lags]
    return np.stack(cols, axis=1)


@dataclass
class AudioLinear:
    """Ridge on standardised lagged loudness, one output per channel."""

    lags: list[int]
    mean: np.ndarray
    std: np.ndarray
    weights: np.ndarray  # [len(lags) + 1, C], last row: intercept

    def predict(self, env: np.ndarray) -> np.ndarray:
        x = (lagged(env, self.lags) - self.mean) / self.std
        return x @ self.weights[:-1] + self.weights[-1]


def fit_audio_linear(
    train: list[LoadedRecording], norm: NormStats, data: DataConfig, alpha: float = RIDGE_ALPHA
) -> AudioLinear:
    lags = sorted({round(s * data.target_rate) for s in LAG_SECONDS})
    xs, ys = [], []
    for lr in train:
        y = normalised_target(lr, norm)
        x = lagged(loudness(lr, data, len(y)), lags)
        ok = np.isfinite(y).all(axis=1)
        xs.append(x[ok])
        ys.append(y[ok])
    x, y = np.concatenate(xs), np.concatenate(ys)
    mean, std = x.mean(0), x.std(0)
    std[std < 1e-12] = 1.0
    xz = (x - mean) / std
    y_mean = y.mean(0)
    # centred ridge: the intercept is not penalised
    w = np.linalg.solve(xz.T @ xz + alpha * np.eye(xz.shape[1]), xz.T @ (y - y_mean))
    return AudioLinear(lags, mean, std, np.vstack([w, y_mean[None]]))  # xz has mean 0: intercept = y mean


@dataclass
class Baselines:
    """The fitted baselines of one evaluation; `predict(name, lr)` -> [T_target, C] (NaN: no prediction)."""

    norm: NormStats
    data: DataConfig
    constant: dict[str, np.ndarray]  # dataset -> [C]
    pooled_constant: np.ndarray
    audio: AudioLinear
    # (dataset, stimulus) -> [(subject key, normalised target)] of everyone who heard it
    listeners: dict[tuple[str, str], list[tuple[tuple[str, str], np.ndarray]]] = field(default_factory=dict)

    def predict(self, name: str, lr: LoadedRecording) -> np.ndarray:
        n = lr.target.shape[0]
        if name == "constant":
            value = self.constant.get(lr.rec.dataset, self.pooled_constant)
            return np.tile(value, (n, 1))
        if name == "audio_linear":
            return self.audio.predict(loudness(lr, self.data, n))
        if name == "other_listeners":
            return self._other_listeners(lr, n)
        raise KeyError(f"unknown baseline {name!r}; have {BASELINES}")

    def _other_listeners(self, lr: LoadedRecording, n: int) -> np.ndarray:
        out = np.full((n, len(self.norm.channels)), np.nan)
        if lr.rec.stimulus_id is None:
            return out
        me = group_key(lr.rec, "subject")
        others = [y for who, y in self.listeners.get(group_key(lr.rec, "stimulus"), []) if who != me]
        if not others:
            return out
        stack = np.full((len(others), n, out.shape[1]), np.nan)
        for i, y in enumerate(others):
            m = min(n, len(y))
            stack[i, :m] = y[:m]
        counts = np.isfinite(stack).sum(0)
        sums = np.nansum(stack, axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)

    def available(self, name: str, recordings: list[LoadedRecording]) -> str | None:
        """None when the baseline can predict some of `recordings`, else the reason it can't."""
        if name != "other_listeners":
            return None
        if not any(lr.rec.stimulus_id for lr in recordings):
            return "the corpus gives no stimulus ids, so no recording has other listeners of its stimulus"
        me = [(group_key(lr.rec, "stimulus"), group_key(lr.rec, "subject")) for lr in recordings]
        if not any(any(w != s for w, _ in self.listeners.get(k, [])) for k, s in me):
            return "no recording's stimulus was heard by another listener"
        return None


def fit_baselines(
    train: list[LoadedRecording], everyone: list[LoadedRecording], norm: NormStats, data: DataConfig
) -> Baselines:
    """Fit on `train`; `everyone` (every loaded recording, any split or dropped) are the listeners of
    other_listeners."""
    sums: dict[str, list[np.ndarray]] = defaultdict(list)
    for lr in train:
        sums[lr.rec.dataset].append(normalised_target(lr, norm))
    constant = {name: np.nanmean(np.concatenate(ys), axis=0) for name, ys in sums.items()}
    pooled = np.nanmean(np.concatenate([y for ys in sums.values() for y in ys]), axis=0)
    listeners: dict[tuple[str, str], list] = defaultdict(list)
    for lr in everyone:
        if lr.rec.stimulus_id is not None:
            listeners[group_key(lr.rec, "stimulus")].append(
                (group_key(lr.rec, "subject"), normalised_target(lr, norm))
            )
    return Baselines(norm, data, constant, pooled, fit_audio_linear(train, norm, data), dict(listeners))
