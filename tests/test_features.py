"""data/features.py pinned against hand computations in numpy: the HTK mel scale, the unit-area triangular
filters, the frame count, and every log-mel frame (window, padding, hop rounding, power, log) for an
integer hop, a non-integer hop, more frames than one chunk, and audio shorter than the padding."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from a2b_pipeline.data.features import LOG_EPS, _hz_to_mel, _mel_to_hz, log_mel, mel_filterbank, n_frames


def _hand_filterbank(sr: int, n_fft: int, n_mels: int, f_min: float = 20.0) -> np.ndarray:
    """HTK mel edges, triangles from lo to mid to hi, each scaled by 2 / (hi - lo) (unit area in Hz)."""
    mel = lambda f: 2595.0 * math.log10(1.0 + f / 700.0)  # noqa: E731
    mels = np.linspace(mel(f_min), mel(sr / 2), n_mels + 2)
    edges = 700.0 * (10.0 ** (mels / 2595.0) - 1.0)
    freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    fb = np.zeros((len(freqs), n_mels))
    for m in range(n_mels):
        lo, mid, hi = edges[m], edges[m + 1], edges[m + 2]
        for k, f in enumerate(freqs):
            if lo <= f <= mid:
                fb[k, m] = (f - lo) / (mid - lo)
            elif mid < f <= hi:
                fb[k, m] = (hi - f) / (hi - mid)
        fb[:, m] *= 2.0 / (hi - lo)
    return fb


def _hand_log_mel(wave: np.ndarray, sr: int, n_mels: int, frame_rate: float) -> np.ndarray:
    hop = sr / frame_rate
    n_fft = 256
    while n_fft < 2 * hop:
        n_fft *= 2
    half = n_fft // 2
    padded = np.pad(wave.astype(np.float64), half, mode="reflect" if len(wave) > half else "constant")
    t = math.ceil(len(wave) * frame_rate / sr - 1e-9)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann
    fb = _hand_filterbank(sr, n_fft, n_mels)
    out = np.empty((t, n_mels))
    for j in range(t):
        start = int(np.round(j * hop))  # half to even, as torch.round
        power = np.abs(np.fft.rfft(padded[start : start + n_fft] * window)) ** 2
        out[j] = np.log(power @ fb + LOG_EPS)
    return out


def test_mel_scale_is_htk_and_round_trips() -> None:
    f = torch.tensor([0.0, 700.0, 1000.0, 8000.0], dtype=torch.float64)
    np.testing.assert_allclose(_hz_to_mel(f), [0.0, 2595.0 * math.log10(2.0), 999.9855, 2840.0230], atol=1e-3)
    np.testing.assert_allclose(_mel_to_hz(_hz_to_mel(f)), f, atol=1e-9)


@pytest.mark.parametrize(("sr", "n_fft", "n_mels"), [(16000, 1024, 40), (8000, 256, 16)])
def test_filterbank_matches_hand_triangles_of_unit_area(sr: int, n_fft: int, n_mels: int) -> None:
    fb = mel_filterbank(sr, n_fft, n_mels)
    assert fb.shape == (n_fft // 2 + 1, n_mels) and fb.dtype == torch.float32
    np.testing.assert_allclose(fb.numpy(), _hand_filterbank(sr, n_fft, n_mels), rtol=1e-3, atol=1e-7)
    # the widest (highest) filters span many bins: their area (sum * bin width) is 1
    area = fb.double().sum(0) * (sr / n_fft)
    np.testing.assert_allclose(area[-3:], 1.0, rtol=0.02)
    assert (fb[0] == 0).all()  # nothing below f_min = 20 Hz, so DC is in no filter


def test_n_frames_counts_frame_centres_inside_the_audio() -> None:
    assert n_frames(0, 16000, 50) == 0
    assert n_frames(1, 16000, 50) == 1  # frame 0 is centred on sample 0
    assert n_frames(320, 16000, 50) == 1
    assert n_frames(321, 16000, 50) == 2
    assert n_frames(16000, 16000, 50) == 50
    assert n_frames(22050 * 3, 22050, 100) == 300


@pytest.mark.parametrize(
    ("sr", "frame_rate", "seconds"),
    [
        (1000, 10.0, 1.25),  # integer hop 100: the strided view
        (2205, 100.0, 0.5),  # hop 22.05: starts rounded to the nearest sample
        (1000, 100.0, 41.3),  # 4130 frames: more than one chunk of 4096
        (4000, 20.0, 1.0),  # hop 200: n_fft 512, two hops
    ],
)
def test_log_mel_matches_a_hand_stft(sr: int, frame_rate: float, seconds: float) -> None:
    rng = np.random.default_rng(0)
    n = int(round(sr * seconds))
    t = np.arange(n) / sr
    wave = (0.3 * np.sin(2 * np.pi * 97.0 * t) * (1 + t) + 0.05 * rng.standard_normal(n)).astype(np.float32)
    got = log_mel(torch.from_numpy(wave), sr, 8, frame_rate)
    want = _hand_log_mel(wave, sr, 8, frame_rate)
    assert got.dtype == torch.float32 and got.shape == want.shape == (n_frames(n, sr, frame_rate), 8)
    np.testing.assert_allclose(got.numpy(), want, atol=2e-3, rtol=1e-4)


def test_log_mel_of_audio_shorter_than_the_padding_uses_zeros() -> None:
    wave = np.linspace(-0.5, 0.5, 50, dtype=np.float32)  # half of n_fft=256 is 128 > 50: no reflection
    got = log_mel(torch.from_numpy(wave), 1000, 6, 100.0)
    np.testing.assert_allclose(got.numpy(), _hand_log_mel(wave, 1000, 6, 100.0), atol=2e-3, rtol=1e-4)
    assert log_mel(torch.zeros(0), 1000, 6, 100.0).shape == (0, 6)


def test_a_tone_lands_in_the_filter_around_its_frequency() -> None:
    sr, f0 = 8000, 1000.0
    wave = torch.sin(2 * np.pi * f0 * torch.arange(sr) / sr)
    mel = log_mel(wave, sr, 16, 50.0)
    peak = int(mel[10:-10].mean(0).argmax())
    fb = mel_filterbank(sr, 512, 16)
    assert peak == int(fb[round(f0 / (sr / 512))].argmax())
    assert mel[10:-10].mean(0)[peak] > mel[10:-10].mean(0).median() + 5  # far above the other bands


def test_silence_is_the_log_floor() -> None:
    mel = log_mel(torch.zeros(4000), 8000, 6, 50.0)
    assert mel.shape == (25, 6)
    torch.testing.assert_close(mel, torch.full((25, 6), math.log(1e-6)))
