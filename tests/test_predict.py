"""`a2b predict` on real audio files of every kind the issue names, through the real CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import _tiny
import numpy as np
import pytest
import soundfile as sf
import torch
from _util import longer_run, run_cli

from a2b_pipeline.configs import config_from_dict
from a2b_pipeline.data.features import log_mel
from a2b_pipeline.evaluation.evaluate import overlap_add
from a2b_pipeline.evaluation.predict import Predictor, audio_files, predict_files
from a2b_pipeline.state import TrainState
from a2b_pipeline.train import train


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("predict")
    raw = longer_run(tmp)
    raw["train"].update(max_steps=4, val_every_n_steps=4)
    raw["checkpoint"]["every_n_steps"] = 4
    return Path(train(TrainState.from_config(config_from_dict(raw))).run_dir)


def _tone(seconds: float, rate: int, channels: int) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    env = 0.5 + 0.5 * np.sin(2 * np.pi * t / 10.0)  # slow loudness changes
    mono = 0.3 * env * np.sin(2 * np.pi * 440 * t)
    return np.stack([mono, 0.5 * mono], axis=1)[:, :channels].astype("float32")


def _rows(path: Path) -> tuple[list[str], np.ndarray]:
    with path.open() as f:
        rows = list(csv.reader(f))
    return rows[0], np.array(rows[1:], dtype=float)


def test_predict_long_stereo_mp3_short_flac_and_a_bad_file(run: Path, tmp_path: Path) -> None:
    audio = tmp_path / "audio"
    audio.mkdir()
    sf.write(audio / "song.mp3", _tone(75.0, 44100, 2), 44100, format="MP3")
    sf.write(audio / "clip.flac", _tone(2.5, 22050, 1), 22050, format="FLAC")  # shorter than a window
    (audio / "broken.wav").write_bytes(b"RIFF not really a wav file")
    out = tmp_path / "out"
    proc = run_cli("predict", str(run), str(audio), "--out", str(out), check=False)
    assert proc.returncode == 1  # one file failed ...
    assert "broken.wav" in proc.stderr and "cannot decode" in proc.stderr
    assert "song.mp3" in proc.stdout and "clip.flac" in proc.stdout  # ... and the others still ran

    header, rows = _rows(out / "song.csv")
    # data.normalize is "subject" in the tiny config and no --subject was given: z-scores, said so
    assert header == ["time", "eda_z", "hr_z"]
    seconds = sf.info(audio / "song.mp3").duration
    assert seconds == pytest.approx(75.0, abs=0.1)
    assert len(rows) == pytest.approx(75.0 * 4, abs=1)  # 4 Hz target rate for the whole 75 s
    np.testing.assert_allclose(np.diff(rows[:, 0]), 0.25, atol=1e-6)
    assert rows[-1, 0] >= 74.5 and np.isfinite(rows[:, 1:]).all() and rows[:, 1:].std(0).min() > 0
    meta = json.loads((out / "song.json").read_text())
    assert meta["units"].startswith("z-scores") and meta["rows"] == len(rows)
    assert (out / "song.png").read_bytes()[:4] == b"\x89PNG"

    header, rows = _rows(out / "clip.csv")
    assert len(rows) == 10 and np.isfinite(rows[:, 1:]).all()  # 2.5 s at 4 Hz
    assert not (out / "broken.csv").exists()


def test_predict_in_signal_units_for_a_known_listener(run: Path, tmp_path: Path) -> None:
    wav = tmp_path / "a.wav"
    sf.write(wav, _tone(12.0, 16000, 1), 16000)
    norm = json.loads((run / "norm_stats.json").read_text())["norm"]  # written by training
    subject = sorted(norm["subjects"])[0]
    [z_out] = predict_files(run, [wav], tmp_path / "z")
    [u_out] = predict_files(run, [wav], tmp_path / "u", subject=subject)
    hz, z = _rows(z_out.csv)
    hu, u = _rows(u_out.csv)
    assert hz == ["time", "eda_z", "hr_z"] and hu == ["time", "eda", "hr"]
    mean, std = np.array(norm["subjects"][subject]["mean"]), np.array(norm["subjects"][subject]["std"])
    np.testing.assert_allclose(u[:, 1:], z[:, 1:] * std + mean, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="nobody"):
        predict_files(run, [wav], tmp_path / "x", subject="nobody")


# --- exact behaviour on a tiny run of tests/_tiny.py (25 fps, 4 Hz, 2 s windows every 2 s, 8 kHz) ---


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("predict_tiny")
    cfg = _tiny.config(tmp, ["train.max_steps=2", "data.normalize=global"])
    return Path(_tiny.run(cfg, tmp / "run").run_dir)


def _wave(path: Path, seconds: float) -> np.ndarray:
    rng = np.random.default_rng(3)
    n = int(seconds * _tiny.SAMPLE_RATE)
    wave = (0.2 * (1 + np.sin(np.arange(n) / 4000)) * rng.standard_normal(n)).astype("float32")
    sf.write(path, wave, _tiny.SAMPLE_RATE)
    return sf.read(path, dtype="float32")[0]  # as stored: 16-bit PCM


def test_window_starts_by_hand(tiny_run: Path) -> None:
    p = Predictor(tiny_run)
    # 9 s: 225 frames, 36 targets; windows of 50 frames / 8 targets every 2 s, then one ending at 9 s
    assert p._window_starts(225, 36, 50, 8) == [(0, 0), (50, 8), (100, 16), (150, 24), (175, 28)]
    assert p._window_starts(200, 32, 50, 8) == [
        (0, 0),
        (50, 8),
        (100, 16),
        (150, 24),
    ]  # the hops reach the end
    # 8.25 s: 207 frames, 33 targets: the hops cover 32, one more window ends at the last target
    assert p._window_starts(207, 33, 50, 8) == [(0, 0), (50, 8), (100, 16), (150, 24), (156, 25)]
    assert p._window_starts(50, 8, 50, 8) == [(0, 0)]
    assert p._window_starts(30, 5, 50, 8) == [(0, 0)]  # shorter than a window
    p.cfg = p.cfg.model_copy(update={"data": p.cfg.data.model_copy(update={"hop_seconds": 1.0})})
    assert p._window_starts(225, 36, 50, 8) == [
        (25 * k, 4 * k) for k in range(8)
    ]  # every 1 s, flush with the end


def test_prediction_is_the_overlap_added_windows_in_signal_units(tiny_run: Path, tmp_path: Path) -> None:
    p = Predictor(tiny_run)
    norm = json.loads((tiny_run / "norm_stats.json").read_text())["norm"]
    assert p.units == "signal" and norm["mode"] == "global"
    for seconds, n_t in ((9.0, 36), (1.3, 6)):
        wav = tmp_path / f"a{seconds}.wav"
        wave = _wave(wav, seconds)
        y, loud, got_seconds = p.predict(wav)
        feats = log_mel(torch.from_numpy(wave), _tiny.SAMPLE_RATE, 8, 25.0)
        x = p.norm.normalize_features(feats).float()
        x = torch.cat([x, torch.zeros(max(0, 50 - len(x)), 8)])  # a short file: padded with the mean frame
        starts = [(0, 0), (50, 8), (100, 16), (150, 24), (175, 28)] if n_t == 36 else [(0, 0)]
        with torch.no_grad():
            windows = p.model(torch.stack([x[f0 : f0 + 50] for f0, _ in starts])).double().numpy()
        z = overlap_add(windows, [t0 for _, t0 in starts], max(n_t, 8))[:n_t]
        want = z * np.array(norm["target_std"]) + np.array(norm["target_mean"])
        assert got_seconds == seconds and y.shape == (n_t, 1)
        np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(loud, 10 * np.log10(np.exp(feats.double().numpy()).sum(1)), rtol=1e-9)


def test_units_follow_the_normalisation(tiny_run: Path, tmp_path: Path) -> None:
    cfg = _tiny.config(tmp_path, ["train.max_steps=1"])  # data.normalize: subject
    run_dir = Path(_tiny.run(cfg, tmp_path / "run").run_dir)
    assert Predictor(run_dir).units == "z"
    subject = sorted(Predictor(run_dir).norm.subjects)[0]
    p = Predictor(run_dir, subject=subject)
    s = p.norm.subjects[subject]
    y = np.array([[1.0], [-2.0]])
    assert p.units == "signal"
    np.testing.assert_allclose(p._denormalize(y), y * np.array(s["std"]) + np.array(s["mean"]))
    with pytest.raises(ValueError, match=r"--subject 'nobody' is not one of the run's listeners \("):
        Predictor(run_dir, subject="nobody")
    glob = Predictor(tiny_run)
    np.testing.assert_allclose(
        glob._denormalize(y), y * np.array(glob.norm.target_std) + np.array(glob.norm.target_mean)
    )


def test_audio_files_found_and_named(tmp_path: Path) -> None:
    (tmp_path / "in" / "sub").mkdir(parents=True)
    for name in ("b.WAV", "a.flac", "sub/c.mp3", "notes.txt", "sub/d.csv"):
        (tmp_path / "in" / name).write_bytes(b"")
    got = audio_files([tmp_path / "in", tmp_path / "missing.ogg"])
    assert [(p.relative_to(tmp_path).as_posix(), stem) for p, stem in got] == [
        ("in/a.flac", "a"),
        ("in/b.WAV", "b"),
        ("in/sub/c.mp3", "sub/c"),
        ("missing.ogg", "missing"),  # reported by its own error, not dropped
    ]


def test_written_files_and_a_failure_naming_the_file(tiny_run: Path, tmp_path: Path) -> None:
    _wave(tmp_path / "a.wav", 3.0)
    [ok, bad] = predict_files(tiny_run, [tmp_path / "a.wav", tmp_path / "gone.wav"], tmp_path / "out")
    header, rows = _rows(ok.csv)
    assert header == ["time", "eda"] and rows.shape == (12, 2)
    np.testing.assert_allclose(rows[:, 0], np.arange(12) / 4.0)
    y, _, _ = Predictor(tiny_run).predict(tmp_path / "a.wav")
    np.testing.assert_allclose(rows[:, 1], y[:, 0], rtol=1e-5)
    meta = json.loads(ok.csv.with_suffix(".json").read_text())
    assert meta["rows"] == 12 and meta["audio_seconds"] == 3.0 and meta["units"] == "signal units"
    assert meta["normalize"] == "global" and meta["channels"] == ["eda"] and meta["target_rate"] == 4.0
    assert meta["checkpoint"] == str(Predictor(tiny_run).ckpt) and ok.error is None
    assert bad.csv is None and bad.error.startswith(f"{tmp_path / 'gone.wav'}: ")
    assert bad.error.count("gone.wav") == 1


def test_saved_statistics_are_used_and_recomputed_when_missing(tiny_run: Path) -> None:
    saved = tiny_run / "norm_stats.json"
    first = Predictor(tiny_run)
    corpus = Path(first.cfg.data.datasets[0].manifest).parent
    assert corpus.is_dir() and saved.exists()
    want = first.norm.to_dict()
    corpus.rename(corpus.with_name("corpus-away"))
    try:  # the saved statistics: the corpus is not read
        assert Predictor(tiny_run).norm.to_dict() == want
    finally:
        corpus.with_name("corpus-away").rename(corpus)
    text = saved.read_text()
    saved.unlink()
    try:  # recomputed from the run's corpus, and saved again
        assert Predictor(tiny_run).norm.to_dict() == want and json.loads(saved.read_text()) == json.loads(
            text
        )
    finally:
        saved.write_text(text)
