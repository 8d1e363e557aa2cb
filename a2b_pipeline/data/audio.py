"""Audio decoding: soundfile (wav/flac/ogg/mp3), mono mix, band-limited resampling (soxr)."""

from __future__ import annotations

import math

import numpy as np
import soundfile as sf
import soxr
import torch

from a2b_pipeline.data import remote
from a2b_pipeline.data.recording import BadRecordingError
from a2b_pipeline.files import open_regular

MAX_CORPUS_FILE_BYTES = 8 << 30  # one recording's audio or signal file (a 2-hour 192 kHz stereo WAV is ~5 GB)


def open_binary(path: str):
    """A binary file object for a local path or any fsspec URL (s3://, https://, file://, memory://)."""
    if remote.has_scheme(path):
        # through the download cache (keyed by URL + ETag + size); errors name the bucket and key
        return remote.open_binary(path)
    return open_regular(path, MAX_CORPUS_FILE_BYTES, "more than a corpus file takes", follow_symlinks=True)


def read_audio(path_or_url: str, sample_rate: int) -> torch.Tensor:
    """Decode, mix to mono and resample to `sample_rate`: a float32 tensor [n].

    Raises BadRecordingError (without the recording; load_recording adds it) for unreadable, empty or
    non-finite audio.
    """
    try:
        with open_binary(path_or_url) as f:
            data, sr = sf.read(f, dtype="float32", always_2d=True)
    except FileNotFoundError:
        raise BadRecordingError(None, path_or_url, "audio file not found") from None
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, OSError) as e:
        raise BadRecordingError(None, path_or_url, f"cannot decode audio ({e})") from None
    if data.shape[0] == 0:
        raise BadRecordingError(None, path_or_url, "audio is empty (0 samples)")
    mono = data.mean(axis=1)
    if not np.isfinite(mono).all():
        raise BadRecordingError(None, path_or_url, "audio has NaN/inf samples")
    try:
        return resample(torch.from_numpy(np.ascontiguousarray(mono)), int(sr), int(sample_rate))
    except (ValueError, RuntimeError, MemoryError) as e:  # a rate soxr can't convert: this recording only
        raise BadRecordingError(None, path_or_url, f"cannot resample {sr} Hz ({e})") from None


def resample(wave: torch.Tensor, orig: int, new: int) -> torch.Tensor:
    """Band-limited resampling of a 1-D signal with libsoxr (soxr, high quality): memory bounded for any
    rate pair (a polyphase sinc over gcd-reduced rates needed a kernel of several GB for 44,101 -> 16,000 Hz);
    output length ceil(n * new / orig)."""
    if orig == new:
        return wave
    out = soxr.resample(wave.detach().cpu().numpy().astype(np.float32, copy=False), orig, new, quality="HQ")
    n = math.ceil(new * wave.shape[-1] / orig)
    if out.shape[0] < n:  # soxr rounds the length; keep the contract (the last sample held)
        out = np.pad(out, (0, n - out.shape[0]), mode="edge")
    return torch.from_numpy(np.ascontiguousarray(out[:n], dtype=np.float32))
