"""Audio decoding: soundfile (wav/flac/ogg/mp3), mono mix, band-limited resampling in torch."""

from __future__ import annotations

import functools
import math

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F

from a2b_pipeline.data import remote
from a2b_pipeline.data.recording import BadRecordingError


def is_url(path: str) -> bool:
    return "://" in path


def open_binary(path: str):
    """A binary file object for a local path or any fsspec URL (s3://, https://, file://, memory://)."""
    if is_url(path):
        # through the download cache (keyed by URL + ETag + size); errors name the bucket and key
        return remote.open_binary(path)
    return open(path, "rb")


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
    return resample(torch.from_numpy(np.ascontiguousarray(mono)), int(sr), int(sample_rate))


@functools.lru_cache(maxsize=16)
def _sinc_kernel(orig: int, new: int, zeros: int = 6, rolloff: float = 0.99) -> tuple[torch.Tensor, int]:
    """Polyphase windowed-sinc filters [new, 1, K]: output phase p of each block of `new` outputs.

    Same construction as torchaudio's sinc_interp_hann (Hann-windowed sinc, cutoff at rolloff * the lower
    Nyquist), so downsampling doesn't alias and upsampling doesn't image.
    """
    base = min(orig, new) * rolloff
    width = math.ceil(zeros * orig / base)
    idx = torch.arange(-width, width + orig, dtype=torch.float64)[None, None] / orig
    t = (torch.arange(0, -new, -1, dtype=torch.float64)[:, None, None] / new + idx) * base
    t = t.clamp(-zeros, zeros)
    window = torch.cos(t * math.pi / zeros / 2) ** 2
    t = t * math.pi
    sinc = torch.where(t == 0, torch.ones_like(t), torch.sin(t) / t)
    return (sinc * window * (base / orig)).float(), width


def resample(wave: torch.Tensor, orig: int, new: int) -> torch.Tensor:
    """Band-limited resampling of a 1-D signal; output length ceil(n * new / orig)."""
    if orig == new:
        return wave
    g = math.gcd(orig, new)
    orig, new = orig // g, new // g
    kernel, width = _sinc_kernel(orig, new)
    n = wave.shape[-1]
    x = F.pad(wave.float()[None, None], (width, width + orig))
    y = F.conv1d(x, kernel, stride=orig)  # [1, new, blocks]: one row per output phase
    y = y.transpose(1, 2).reshape(-1)
    return y[: math.ceil(new * n / orig)].contiguous()
