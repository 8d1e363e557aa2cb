"""Audio -> log-mel frames; biosignal files -> targets on a fixed time grid.

Time conventions (all in seconds of the AUDIO): frame j is centred at j / frame_rate, target sample j is the
signal at j / target_rate. A window [s, s + W) thus holds frames round(s*frame_rate) .. and target samples
round(s*target_rate) .., the same seconds on both sides.
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Sequence

import numpy as np
import torch

from a2b_pipeline.data.audio import open_binary
from a2b_pipeline.data.recording import BadRecordingError, Recording, SignalSource

LOG_EPS = 1e-6


def _hz_to_mel(f: torch.Tensor) -> torch.Tensor:
    return 2595.0 * torch.log10(1.0 + f / 700.0)


def _mel_to_hz(m: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


@functools.lru_cache(maxsize=16)
def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float = 20.0) -> torch.Tensor:
    """Triangular HTK-mel filters [n_fft//2 + 1, n_mels], each normalised to unit area (Slaney-style)."""
    f_max = sample_rate / 2
    freqs = torch.linspace(0, f_max, n_fft // 2 + 1, dtype=torch.float64)
    edges = _mel_to_hz(
        torch.linspace(_hz_to_mel(torch.tensor(f_min)), _hz_to_mel(torch.tensor(f_max)), n_mels + 2)
    ).double()
    lo, mid, hi = edges[:-2], edges[1:-1], edges[2:]
    up = (freqs[:, None] - lo) / (mid - lo)
    down = (hi - freqs[:, None]) / (hi - mid)
    fb = torch.clamp(torch.minimum(up, down), min=0.0)
    fb = fb * (2.0 / (hi - lo))  # equal area: a loud narrow band and a loud wide band weigh alike
    return fb.float()


def n_frames(n_samples: int, sample_rate: int, frame_rate: float) -> int:
    """Frames whose centre j / frame_rate lies inside the audio."""
    return max(0, math.ceil(n_samples * frame_rate / sample_rate - 1e-9))


def log_mel(wave: torch.Tensor, sample_rate: int, n_mels: int, frame_rate: float) -> torch.Tensor:
    """Log-mel power frames [T_frames, n_mels] float32; frame j is centred on sample j*sample_rate/frame_rate.

    Frames start at the rounded exact sample positions, so a non-integer hop (e.g. 22050 Hz at 100 fps)
    doesn't drift out of alignment with the target grid.
    """
    hop = sample_rate / frame_rate
    n_fft = 1 << max(8, math.ceil(math.log2(2 * hop)))  # >= two hops: frames overlap by half or more
    t = n_frames(wave.shape[-1], sample_rate, frame_rate)
    half = n_fft // 2
    mode = "reflect" if wave.shape[-1] > half else "constant"  # reflect needs more samples than the pad
    padded = torch.nn.functional.pad(wave.float()[None, None], (half, half), mode=mode)[0, 0]
    starts = torch.round(torch.arange(t, dtype=torch.float64) * hop).long()
    window = torch.hann_window(n_fft, periodic=True)
    fb = mel_filterbank(sample_rate, n_fft, n_mels)
    offsets = torch.arange(n_fft)
    # An integer hop (16 kHz at 50 fps) frames by a strided view instead of a gather: the same frames and
    # bits without the [frames, n_fft] int64 index (16 MB for 40 s of audio); as fast on a quiet machine,
    # up to 2x faster when memory bandwidth is contended (bench/RESULTS.md).
    framed = padded.unfold(0, n_fft, int(hop)) if hop == int(hop) else None
    chunks = []
    for i in range(0, t, 4096):  # chunks bound the memory of the framed copy for long songs
        if framed is not None:
            frames = framed[i : min(i + 4096, t)]
        else:
            frames = padded[starts[i : i + 4096, None] + offsets]  # [t, n_fft], centred on the start samples
        spec = torch.fft.rfft(frames * window, dim=-1)
        chunks.append((spec.real.square() + spec.imag.square()) @ fb)
    mel = torch.cat(chunks) if chunks else torch.zeros(0, n_mels)
    return torch.log(mel + LOG_EPS)


# ---- biosignals ----


def _read_table(path: str, rec: Recording | None) -> dict[str, np.ndarray]:
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
    # corpora.parse_signal_csv: a header row or none (columns '0', '1', ...; a raw Empatica preamble is
    # dropped), empty cells -> NaN (a wide file's listener may stop early), non-numbers -> BadRecordingError
    from a2b_pipeline.data.corpora import parse_signal_csv

    return parse_signal_csv(raw.decode("utf-8-sig"), path, rec)


def read_channels(rec: Recording, channels: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per channel: (times in seconds of the AUDIO, values), validated (finite, time strictly increasing)."""
    tables: dict[str, dict[str, np.ndarray]] = {}
    out = []
    for ch in channels:
        src: SignalSource | None = rec.signals.get(ch)
        if src is None:
            raise BadRecordingError(rec, rec.audio_path, f"no signal source for channel {ch!r}")
        if src.path not in tables:
            tables[src.path] = _read_table(src.path, rec)
        table = tables[src.path]
        column = src.column
        if src.time_column is None and column not in table:  # fixed-rate file: its one value column
            from a2b_pipeline.data.corpora import pick_value_column

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
        out.append((times + rec.offset_seconds, values))
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
