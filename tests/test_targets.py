"""data/targets.py: signal files onto the target grid, by hand: linear interpolation at j / rate of the
audio's seconds, the recording's offset, NaN where a channel has no data, and refusals that name the row."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from a2b_pipeline.data.recording import BadRecordingError, Recording, SignalSource
from a2b_pipeline.data.targets import read_channels, read_signal


def _rec(path: Path, offset: float = 0.0, **source: object) -> Recording:
    signals = {ch: SignalSource(str(path), ch, **source) for ch in ("eda", "hr")}
    return Recording("d", "r1", "p1", "a.wav", signals, offset_seconds=offset)


def _write(path: Path, rows: list[str]) -> Path:
    path.write_text("\n".join(["time,eda,hr", *rows]) + "\n")
    return path


def test_signal_is_interpolated_onto_the_grid_and_shifted_by_the_offset(tmp_path: Path) -> None:
    t = np.array([0.0, 0.3, 0.9, 1.6, 2.2, 3.05])
    eda, hr = np.sin(t) + 2, 60 + 3 * t
    path = _write(tmp_path / "s.csv", [f"{a},{b},{c}" for a, b, c in zip(t, eda, hr, strict=True)])
    got = read_signal(_rec(path), ["eda", "hr"], 4.0)
    grid = np.arange(13) / 4.0  # up to the last sample, 3.05 s
    assert got.shape == (13, 2)
    np.testing.assert_allclose(got[:, 0], np.interp(grid, t, eda), rtol=1e-6)
    np.testing.assert_allclose(got[:, 1], np.interp(grid, t, hr), rtol=1e-6)
    # offset 0.5: the signal's t=0 is the audio's 0.5 s; before it there is no data
    shifted = read_signal(_rec(path, offset=0.5), ["eda", "hr"], 4.0).numpy()
    grid = np.arange(15) / 4.0
    assert np.isnan(shifted[:2]).all()
    np.testing.assert_allclose(shifted[2:, 0], np.interp(grid[2:], t + 0.5, eda), rtol=1e-6)


def test_fixed_rate_files_and_trailing_empty_cells(tmp_path: Path) -> None:
    path = tmp_path / "rate.csv"
    path.write_text("eda\n1\n2\n3\n4\n")
    rec = Recording(
        "d", "r", "p", "a.wav", {"eda": SignalSource(str(path), "eda", time_column=None, rate=2.0)}
    )
    ((times, values),) = read_channels(rec, ["eda"])
    np.testing.assert_allclose(times, [0.0, 0.5, 1.0, 1.5])
    np.testing.assert_allclose(values, [1, 2, 3, 4])
    short = _write(tmp_path / "short.csv", ["0,1,60", "1,2,61", "2,3,", "3,4,"])
    (eda, hr) = read_channels(_rec(short), ["eda", "hr"])
    assert len(eda[0]) == 4 and list(hr[0]) == [0.0, 1.0]  # hr stopped after its second row


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (["0,1,60", "1,2,61", "1,3,62"], "time is not strictly increasing \\(at data row 3\\)"),
        (["0,1,60", "1,nan,61", "2,3,62"], "NaN/inf values \\(1, first at data row 2\\)"),
        (["0,1,60"], "has 1 samples"),
    ],
)
def test_bad_signals_are_refused_naming_the_row(tmp_path: Path, rows: list[str], message: str) -> None:
    path = _write(tmp_path / "bad.csv", rows)
    with pytest.raises(BadRecordingError, match=message):
        read_channels(_rec(path), ["eda", "hr"])


def test_signal_end_is_the_last_sample_plus_one_interval() -> None:
    from a2b_pipeline.data.targets import signal_end

    a = (np.array([0.0, 0.5, 1.0, 1.5]), np.zeros(4))
    b = (np.array([0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.5]), np.zeros(9))
    assert signal_end([a]) == 2.0 and signal_end([b]) == 2.75 and signal_end([a, b]) == 2.0
