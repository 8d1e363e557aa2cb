"""data/datasets.py: normalisation statistics and windows, by hand on recordings built in the test."""

from __future__ import annotations

from pathlib import Path

import _tiny
import numpy as np
import pytest
import torch

from a2b_pipeline.data.datasets import LoadedRecording, WindowDataset, compute_norm_stats
from a2b_pipeline.data.recording import Recording


def _lr(subject: str, seed: int, seconds: int = 8, nan_at: slice | None = None) -> LoadedRecording:
    g = torch.Generator().manual_seed(seed)
    feats = 3.0 + torch.randn(seconds * 25, 8, generator=g)  # frame_rate 25, n_mels 8
    target = 5.0 + seed + torch.randn(seconds * 4, 1, generator=g)  # target_rate 4
    if nan_at is not None:
        target[nan_at] = float("nan")
    return LoadedRecording(feats, target, Recording("tiny", f"{subject}-{seed}", subject, "a.wav", {}))


def _data(tmp_path: Path, *overrides: str):
    return _tiny.config(tmp_path, overrides, manifest=tmp_path / "unused.csv").data


def test_statistics_by_hand_from_train_and_per_subject(tmp_path: Path) -> None:
    train = [_lr("p1", 1), _lr("p2", 2, nan_at=slice(0, 5))]
    other = [_lr("p3", 3), _lr("p1", 4)]
    norm = compute_norm_stats(train, train + other, _data(tmp_path, "data.normalize=subject"))
    feats = torch.cat([r.features for r in train]).double()
    np.testing.assert_allclose(norm.feature_mean, feats.mean(0), rtol=1e-9)
    np.testing.assert_allclose(norm.feature_std, feats.std(0, unbiased=False), rtol=1e-9)
    t = torch.cat([r.target for r in train]).double()
    t = t[torch.isfinite(t)]  # NaN (no data) is left out, not counted as 0
    assert norm.target_mean == pytest.approx([float(t.mean())]) and norm.target_std == pytest.approx(
        [float(t.std(unbiased=False))]
    )
    # per subject: that listener's own recordings, in any split
    p1 = torch.cat([train[0].target, other[1].target]).double()
    assert norm.subjects["tiny/p1"]["mean"] == pytest.approx([float(p1.mean())])
    assert norm.subjects["tiny/p1"]["std"] == pytest.approx([float(p1.std(unbiased=False))])
    assert set(norm.subjects) == {"tiny/p1", "tiny/p2", "tiny/p3"}
    # a constant column keeps its scale (std 1) instead of dividing by zero
    flat = _lr("p1", 1)
    flat.target[:] = 2.0
    const = compute_norm_stats([flat], [flat], _data(tmp_path, "data.normalize=global"))
    assert const.target_mean == [2.0] and const.target_std == [1.0]
    assert compute_norm_stats(train, train, _data(tmp_path, "data.normalize=global")).subjects == {}


def test_windows_by_hand_skip_gaps_and_stop_at_the_end(tmp_path: Path) -> None:
    data = _data(tmp_path, "data.normalize=global", "data.window_seconds=2", "data.hop_seconds=1")
    recs = [_lr("p1", 1, seconds=8), _lr("p2", 2, seconds=5, nan_at=slice(9, 10))]
    norm = compute_norm_stats(recs, recs, data)
    ds = WindowDataset(recs, data, norm)
    # 8 s: windows start at 0..6 s (the last ends at 8 s exactly); 5 s with a gap at target 9 (2.25 s):
    # starts 0 and 3 s only (1 s and 2 s cover the gap, 4 s runs past the end)
    assert [(r, s) for r, _, _, s in ds.index] == [(0, float(k)) for k in range(7)] + [(1, 0.0), (1, 3.0)]
    assert ds.index[-1][1:3] == (75, 12) and len(ds) == 9
    x, y = ds[8]
    fm, fs = torch.tensor(norm.feature_mean), torch.tensor(norm.feature_std)
    tm, ts = torch.tensor(norm.target_mean), torch.tensor(norm.target_std)
    torch.testing.assert_close(x, ((recs[1].features[75:125] - fm) / fs).float())
    torch.testing.assert_close(y, ((recs[1].target[12:20] - tm) / ts).float())
    assert ds.window_info(8) == (recs[1].rec, 3.0)


def test_load_recording_grids_run_to_the_audio_end_and_mismatches_are_refused(tmp_path: Path) -> None:
    from a2b_pipeline.data.corpora import list_recordings
    from a2b_pipeline.data.datasets import load_recording
    from a2b_pipeline.data.recording import BadRecordingError

    manifest = _tiny.write_corpus(tmp_path / "corpus", subjects=1, seconds=8.0)
    cfg = _tiny.config(tmp_path, [], manifest)
    (rec,) = list_recordings(cfg.data.datasets[0], cfg.data).recordings
    lr = load_recording(rec, cfg.data)
    assert lr.features.shape == (8 * 25, 8) and lr.target.shape == (8 * 4, 1)
    csv_values = np.loadtxt(manifest.parent / "s0_r0.csv", delimiter=",", skiprows=1)[:, 1]
    np.testing.assert_allclose(lr.target[:, 0].numpy(), csv_values, rtol=1e-6)
    # a signal 2 s shorter than the audio: beyond duration_tolerance_seconds (1 s), named
    (manifest.parent / "s0_r0.csv").write_text(
        "time,eda\n" + "".join(f"{j / 4},{v}\n" for j, v in enumerate(csv_values[:24]))
    )
    with pytest.raises(
        BadRecordingError, match="signal ends at 6.00 s of the audio but the audio lasts 8.00 s"
    ):
        load_recording(rec, cfg.data)
    cfg3 = _tiny.config(tmp_path, ["data.duration_tolerance_seconds=3", "data.window_seconds=7"], manifest)
    with pytest.raises(BadRecordingError, match="too short: 6.00 s usable, a window is 7.0 s"):
        load_recording(rec, cfg3.data)
    short = load_recording(rec, _tiny.config(tmp_path, ["data.duration_tolerance_seconds=3"], manifest).data)
    assert short.target.shape == (32, 1) and torch.isnan(short.target[24:]).all()
