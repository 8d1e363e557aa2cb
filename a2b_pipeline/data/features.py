"""Audio -> log-mel frames (targets.py turns biosignal files into targets on the same time grid).

Time conventions (all in seconds of the AUDIO): frame j is centred at j / frame_rate, target sample j is the
signal at j / target_rate. A window [s, s + W) thus holds frames round(s*frame_rate) .. and target samples
round(s*target_rate) .., the same seconds on both sides.
"""

from __future__ import annotations

import functools
import math

import torch

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
