"""Biosignal files -> targets on a fixed time grid (seconds of the AUDIO: target sample j is the signal at
j / target_rate, shifted by the recording's offset); see features.py for the audio side."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np
import torch

from a2b_pipeline.data.audio import open_binary
from a2b_pipeline.data.recording import BadRecordingError, Recording, SignalSource
from a2b_pipeline.data.signal_csv import parse_signal_csv, pick_value_column


def read_signal_file(path: str, rec: Recording | None) -> dict[str, np.ndarray]:
    """All columns of a signal file (CSV with a header row, or .npz) as float64 arrays."""
    try:
        with open_binary(path) as f:
            raw = f.read()
    except FileNotFoundError:
        raise BadRecordingError(rec, path, "signal file not found") from None
    except OSError as e:
        raise BadRecordingError(rec, path, f"cannot read signal file ({e})") from None
    if path.lower().endswith(".npz"):
        try:
            with np.load(io.BytesIO(raw), allow_pickle=False) as z:
                return {k: np.asarray(z[k], dtype=np.float64).reshape(-1) for k in z.files}
        except (ValueError, OSError) as e:
            raise BadRecordingError(rec, path, f"not a readable .npz of numeric arrays ({e})") from None
    text = raw.decode("utf-8-sig")
    del raw  # the bytes go before parsing starts: memory holds the text and the floats, not the file twice
    return parse_signal_csv(text, path, rec)


def read_channels(
    rec: Recording, channels: Sequence[str], max_seconds: float = math.inf
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per channel: (times in seconds of the AUDIO, values), validated (finite, time strictly increasing, none
    past `max_seconds`: the recording's end, so a time of 1e13 is named, not turned into a 291 TiB grid)."""
    tables: dict[str, dict[str, np.ndarray]] = {}
    out = []
    for ch in channels:
        src: SignalSource | None = rec.signals.get(ch)
        if src is None:
            raise BadRecordingError(rec, rec.audio_path, f"no signal source for channel {ch!r}")
        if src.path not in tables:
            tables[src.path] = read_signal_file(src.path, rec)
        table = tables[src.path]
        column = src.column
        if src.time_column is None and column not in table:  # fixed-rate file: its one value column
            column = pick_value_column(table, src.column) or column
        if column not in table:
            raise BadRecordingError(
                rec, src.path, f"missing channel column {src.column!r} (has {sorted(table)})"
            )
        values = table[column]
        if src.time_column is None:
            if not src.rate:
                raise BadRecordingError(rec, src.path, f"channel {ch!r} has no time column and no rate")
            times = np.arange(len(values)) / src.rate
        elif src.time_column not in table:
            raise BadRecordingError(rec, src.path, f"missing time column {src.time_column!r}")
        else:
            times = table[src.time_column]
        # empty cells at the end of a column: that listener's recording stopped before the file's last row
        n_valid = len(values) - int(np.argmax(~np.isnan(values[::-1]))) if np.isfinite(values).any() else 0
        values, times = values[:n_valid], times[:n_valid]
        if len(values) < 2:
            raise BadRecordingError(rec, src.path, f"channel {src.column!r} has {len(values)} samples")
        for name, arr in ((src.column, values), (src.time_column or "time", times)):
            bad = np.flatnonzero(~np.isfinite(arr))
            if bad.size:
                raise BadRecordingError(
                    rec,
                    src.path,
                    f"column {name!r} has NaN/inf values ({bad.size}, first at data row {bad[0] + 1})",
                )
        steps = np.flatnonzero(np.diff(times) <= 0)
        if steps.size:
            raise BadRecordingError(
                rec, src.path, f"time is not strictly increasing (at data row {steps[0] + 2})"
            )
        times = times + rec.offset_seconds
        past = np.flatnonzero(times > max_seconds)
        if past.size:
            raise BadRecordingError(
                rec,
                src.path,
                f"time {times[past[0]] - rec.offset_seconds:.6g} s at data row {past[0] + 1} is far past the "
                f"recording's end (a signal time may reach {max_seconds:.2f} s of the audio)",
            )
        out.append((times, values))
    return out


def signal_end(series: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """Audio second where the shortest channel ends (last sample + one sampling interval)."""
    return min(float(t[-1] + np.median(np.diff(t))) for t, _ in series)


def resample_channels(
    series: list[tuple[np.ndarray, np.ndarray]], target_rate: float, n: int
) -> torch.Tensor:
    """Linear interpolation onto t = j / target_rate, j < n: [n, C] float32; NaN outside a channel's span."""
    grid = np.arange(n) / target_rate
    cols = [np.interp(grid, t, v, left=np.nan, right=np.nan) for t, v in series]
    return torch.from_numpy(np.stack(cols, axis=1)).float()


def read_signal(rec: Recording, channels: Sequence[str], target_rate: float) -> torch.Tensor:
    """Targets [T_target, C] on t = j / target_rate from the AUDIO start (the signal shifted by its offset),
    up to where the shortest channel ends; NaN where a channel has no data (e.g. before it started)."""
    series = read_channels(rec, channels)
    end = min(float(t[-1]) for t, _ in series)
    return resample_channels(series, target_rate, math.floor(end * target_rate + 1e-9) + 1)
