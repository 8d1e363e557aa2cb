"""A deterministic synthetic corpus of real files whose biosignals are a known causal function of the audio.

Audio: noise plus a tone, shaped by a loudness envelope made of events of a few seconds (quiet floor at
-40 dB, events at -20..0 dB). The "drive" is that loudness on a 0..1 scale (linear in dB, so linear in
log-mel energy). Per channel, with per-subject baseline and gain:

    eda = baseline + gain * (drive * SCR kernel: peak at ~0.9 s, decay tau 2 s) + slow drift + noise
    hr  = baseline + gain * (drive * exponential kernel, 1 s) + noise
    any other channel name: like hr with a 2 s kernel

The signals start up to 2 s before the audio (negative offset_seconds), as a wristband switched on before
the music: a loader that ignores the offset misaligns them by up to 2 s and learns visibly worse.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf

from a2b_pipeline.data.manifest import summarize_manifest

__all__ = ["summarize_manifest", "write_synthetic_corpus"]  # summarize_manifest: for `a2b synth`

CONTROL_RATE = 100  # Hz: envelope and responses are computed on this grid
SIGNAL_RATE = 32  # Hz of the written signal files
FLOOR_DB, EVENT_DB = -40.0, (-20.0, 0.0)

# per channel: (baseline range, gain range, noise as a fraction of gain, drift as a fraction of gain)
_CHANNELS = {
    "eda": ((2.0, 10.0), (1.0, 3.0), 0.02, 0.05),
    "hr": ((60.0, 85.0), (10.0, 25.0), 0.03, 0.0),
}
_OTHER = ((0.0, 1.0), (0.5, 2.0), 0.03, 0.0)


def _kernel(channel: str) -> np.ndarray:
    """Causal response kernel on the control grid, unit area."""
    t = np.arange(0, 15.0, 1.0 / CONTROL_RATE)
    if channel == "eda":
        # skin conductance response: peaks ~0.9 s after the sound, mostly gone ~3-4 s later. A slower decay
        # (tau 3 s) leaves too much of the response driven by audio before an 8 s window to learn well.
        k = np.exp(-t / 2.0) - np.exp(-t / 0.5)
    else:
        k = np.exp(-t / (1.0 if channel == "hr" else 2.0))
    return k / k.sum()


def _drive(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """Loudness on the control grid, in dB (floor -40, events -20..0 with 50 ms attack, 300 ms release)."""
    n = round(seconds * CONTROL_RATE)
    t = np.arange(n) / CONTROL_RATE
    db = np.full(n, FLOOR_DB)
    start = rng.uniform(0.0, 2.0)
    while start < seconds:
        length = rng.uniform(1.0, 4.0)
        level = rng.uniform(*EVENT_DB)
        attack = np.clip((t - start) / 0.05, 0, 1)
        release = np.clip(1 - (t - start - length) / 0.3, 0, 1)
        shape = np.minimum(attack, release)
        db = np.maximum(db, FLOOR_DB + shape * (level - FLOOR_DB))
        start += length + rng.uniform(1.5, 5.0)  # gaps let responses settle
    return db


def _audio(rng: np.random.Generator, db: np.ndarray, seconds: float, sample_rate: int) -> np.ndarray:
    n = round(seconds * sample_rate)
    t = np.arange(n) / sample_rate
    amp = np.interp(t, np.arange(len(db)) / CONTROL_RATE, 10 ** (db / 20))
    # a tone whose pitch changes every 1-3 s, phase-continuous, plus broadband noise
    changes = np.cumsum(rng.uniform(1.0, 3.0, size=int(seconds) + 2))
    pitch = rng.uniform(150.0, 1500.0, size=len(changes) + 1)[np.searchsorted(changes, t)]
    tone = np.sin(2 * np.pi * np.cumsum(pitch) / sample_rate)
    carrier = 0.6 * tone + 0.4 * rng.standard_normal(n)
    return np.clip(0.5 * amp * carrier, -1.0, 1.0).astype(np.float32)


def _signal(
    rng: np.random.Generator, drive: np.ndarray, channel: str, subject: tuple[float, float], pre: float
) -> np.ndarray:
    """Channel values on the control grid starting `pre` seconds before the audio (silent, drive 0)."""
    baseline, gain = subject
    _, _, noise, drift = _CHANNELS.get(channel, _OTHER)
    d = np.concatenate([np.zeros(round(pre * CONTROL_RATE)), drive])
    response = np.convolve(d, _kernel(channel))[: len(d)]
    t = np.arange(len(d)) / CONTROL_RATE
    slow = drift * np.sin(2 * np.pi * t / rng.uniform(60, 120) + rng.uniform(0, 2 * np.pi))
    return baseline + gain * (response + slow + noise * rng.standard_normal(len(d)))


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _write_wav(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    sf.write(tmp, audio, sample_rate, subtype="PCM_16", format="WAV")
    os.replace(tmp, path)


_STIMULUS_STREAM = 0x5717  # a generator stream of its own per stimulus: [seed, this, stimulus]


def write_synthetic_corpus(
    out_dir: str | Path,
    *,
    subjects: int,
    recordings_per_subject: int,
    seconds: float,
    seed: int,
    sample_rate: int = 16000,
    channels: Sequence[str] = ("eda", "hr"),
    stimuli: int | None = None,
) -> Path:
    """Write audio/*.wav, signals/*.csv and manifest.csv under out_dir; return the manifest path.

    Deterministic: the same arguments give the same bytes. Each recording draws from its own
    generator (seed, subject, recording), so a larger corpus extends a smaller one. Files are written to
    temporary names and renamed, and the manifest last, so concurrent writers (DDP ranks) are safe.

    `stimuli`: that many distinct clips (audio/stim_KK.wav, generator (seed, stream, clip)) shared by the
    subjects: recording r of subject s plays clip (s + r) mod stimuli, and the manifest gets a
    `stimulus_id` column. Each listener responds with their own baseline, gain, drift and noise.
    None: every recording plays a clip of its own, as before.
    """
    out = Path(out_dir)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    (out / "signals").mkdir(parents=True, exist_ok=True)
    clips: dict[int, np.ndarray] = {}  # stimulus -> loudness (dB) on the control grid
    rows = []
    for s in range(subjects):
        srng = np.random.default_rng([seed, s])
        params = {}
        for ch in channels:
            (b0, b1), (g0, g1), _, _ = _CHANNELS.get(ch, _OTHER)
            params[ch] = (srng.uniform(b0, b1), srng.uniform(g0, g1))
        sid = f"s{s + 1:02d}"
        for r in range(recordings_per_subject):
            rng = np.random.default_rng([seed, s, r])
            rid = f"{sid}_r{r + 1:02d}"
            if stimuli is None:
                stim = None
                db = _drive(rng, seconds)
                wav = out / "audio" / f"{rid}.wav"
                _write_wav(wav, _audio(rng, db, seconds, sample_rate), sample_rate)
            else:
                k = (s + r) % stimuli
                stim = f"stim_{k + 1:02d}"
                wav = out / "audio" / f"{stim}.wav"
                if k not in clips:
                    crng = np.random.default_rng([seed, _STIMULUS_STREAM, k])
                    clips[k] = _drive(crng, seconds)
                    _write_wav(wav, _audio(crng, clips[k], seconds, sample_rate), sample_rate)
                db = clips[k]
            drive = np.clip((db - FLOOR_DB) / -FLOOR_DB, 0.0, 1.0)
            pre = round(float(rng.uniform(0.0, 2.0)), 3)
            t_sig = (
                np.arange(int(np.floor((seconds + pre) * SIGNAL_RATE)) + 1) / SIGNAL_RATE
            )  # to the audio's end
            grid = np.arange(len(drive) + round(pre * CONTROL_RATE)) / CONTROL_RATE
            cols = [t_sig] + [
                np.interp(t_sig, grid, _signal(rng, drive, ch, params[ch], pre)) for ch in channels
            ]
            lines = [",".join(["time", *channels])]
            lines += [",".join(f"{v:.5f}" for v in row) for row in zip(*cols, strict=True)]
            _atomic_write_text(out / "signals" / f"{rid}.csv", "\n".join(lines) + "\n")
            row = [rid, sid, f"audio/{wav.name}", f"signals/{rid}.csv", f"{-pre:g}"]
            rows.append(row if stim is None else [*row, stim])
    header = ["recording_id", "subject_id", "audio_path", "signal_path", "offset_seconds"]
    buf = [",".join(header if stimuli is None else [*header, "stimulus_id"])]
    buf += [",".join(r) for r in rows]
    manifest = out / "manifest.csv"
    _atomic_write_text(manifest, "\n".join(buf) + "\n")
    return manifest
