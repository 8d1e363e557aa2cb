"""baselines.py: each baseline against a hand computation on recordings built in the test."""

from __future__ import annotations

from pathlib import Path

import _tiny
import numpy as np
import pytest
import torch

from a2b_pipeline.data.datasets import LoadedRecording, NormStats
from a2b_pipeline.data.recording import Recording
from a2b_pipeline.evaluation.baselines import LAG_SECONDS, RIDGE_ALPHA, fit_baselines, loudness

N_MELS, FRAMES_PER_TARGET = 4, 25 / 4  # frame_rate 25, target_rate 4


def _lr(dataset: str, subject: str, rid: str, seed: int, stimulus: str | None = None, offset: float = 0.0):
    rng = np.random.default_rng(seed)
    n_t = 40
    feats = torch.tensor(rng.normal(size=(round(n_t * FRAMES_PER_TARGET), N_MELS)), dtype=torch.float32)
    target = torch.tensor(offset + rng.normal(size=(n_t, 1)).cumsum(0), dtype=torch.float32)
    rec = Recording(dataset, rid, subject, "a.wav", {}, stimulus_id=stimulus)
    return LoadedRecording(feats, target, rec)


def _norm(mean: float = 1.0, std: float = 2.0) -> NormStats:
    return NormStats("global", ["eda"], [0.0] * N_MELS, [1.0] * N_MELS, [mean], [std])


def _data(tmp_path: Path):
    return _tiny.config(tmp_path, ["data.n_mels=4"], manifest=tmp_path / "unused.csv").data


def test_constant_is_the_train_mean_per_dataset(tmp_path: Path) -> None:
    train = [
        _lr("a", "p1", "r1", 1, offset=3.0),
        _lr("a", "p2", "r2", 2),
        _lr("b", "q1", "r3", 3, offset=-5.0),
    ]
    norm = _norm()
    b = fit_baselines(train, train, norm, _data(tmp_path))
    z = {lr.rec.recording_id: (lr.target.double().numpy() - 1.0) / 2.0 for lr in train}
    want_a = np.concatenate([z["r1"], z["r2"]]).mean(0)
    test_a, test_b = _lr("a", "p9", "t1", 9), _lr("b", "q9", "t2", 10)
    np.testing.assert_allclose(b.predict("constant", test_a), np.tile(want_a, (40, 1)), rtol=1e-6)
    np.testing.assert_allclose(b.predict("constant", test_b), np.tile(z["r3"].mean(0), (40, 1)), rtol=1e-6)
    pooled = np.concatenate(list(z.values())).mean(0)
    np.testing.assert_allclose(
        b.predict("constant", _lr("c", "x", "t3", 11)), np.tile(pooled, (40, 1)), rtol=1e-6
    )


def test_other_listeners_is_the_mean_of_the_others_of_the_same_stimulus(tmp_path: Path) -> None:
    song = [_lr("a", f"p{i}", f"r{i}", i, stimulus="s1") for i in range(4)]
    other_song = _lr("a", "p0", "x0", 20, stimulus="s2")
    train = song[:2]
    b = fit_baselines(train, [*song, other_song], _norm(0.0, 1.0), _data(tmp_path))
    for me in song:
        others = [lr.target.double().numpy() for lr in song if lr is not me]
        np.testing.assert_allclose(b.predict("other_listeners", me), np.mean(others, axis=0), rtol=1e-6)
    assert np.isnan(b.predict("other_listeners", other_song)).all()  # nobody else heard s2
    assert (
        b.available("other_listeners", [other_song])
        == "no recording's stimulus was heard by another listener"
    )
    assert b.available("other_listeners", song) is None
    assert "no stimulus ids" in b.available("other_listeners", [_lr("a", "p", "r", 1)])


def _hand_loudness(lr: LoadedRecording, n: int) -> np.ndarray:
    frame = np.log(np.exp(lr.features.double().numpy()).sum(1))
    edges = [round(j * FRAMES_PER_TARGET) for j in range(n + 1)]
    return np.array([frame[edges[j] : edges[j + 1]].mean() for j in range(n)])


def test_audio_linear_is_ridge_on_standardised_lagged_loudness(tmp_path: Path) -> None:
    data = _data(tmp_path)
    train = [_lr("a", f"p{i}", f"r{i}", i) for i in range(3)]
    norm = _norm(0.5, 1.5)
    b = fit_baselines(train, train, norm, data)
    for lr in train:
        np.testing.assert_allclose(loudness(lr, data, 40), _hand_loudness(lr, 40), rtol=1e-9)
    lags = sorted({round(s * 4.0) for s in LAG_SECONDS})

    def design(lr: LoadedRecording) -> np.ndarray:
        env = _hand_loudness(lr, 40)
        return np.stack([np.concatenate([np.full(k, env[0]), env[: 40 - k]]) for k in lags], axis=1)

    x = np.concatenate([design(lr) for lr in train])
    y = np.concatenate([(lr.target.double().numpy() - 0.5) / 1.5 for lr in train])
    mu, sd = x.mean(0), x.std(0)
    xz = (x - mu) / sd
    w = np.linalg.solve(xz.T @ xz + RIDGE_ALPHA * np.eye(len(lags)), xz.T @ (y - y.mean(0)))
    test = _lr("a", "p9", "t", 42)
    want = ((design(test) - mu) / sd) @ w + y.mean(0)
    np.testing.assert_allclose(b.predict("audio_linear", test), want, rtol=1e-6, atol=1e-9)
    with pytest.raises(KeyError, match="unknown baseline"):
        b.predict("nope", test)
