"""`a2b predict` on real audio files of every kind the issue names, through the real CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from _util import longer_run, run_cli

from a2b_pipeline.configs import config_from_dict
from a2b_pipeline.predict import predict_files
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
