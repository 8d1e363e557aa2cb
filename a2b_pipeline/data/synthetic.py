"""A deterministic synthetic corpus of real files: listeners who respond to sound as the literature describes.

Audio (`_clip`): a quiet bed (-40..-22 dB, swelling slowly) with sound events of 1-5 s (-20..0 dB), each
one of a few "sounds" of the clip (a pitch and a tone/noise mix), so sounds repeat; some events change
pitch midway. The generator knows the acoustic events it made (`_Trigger`): an *onset* (a sudden rise in
loudness, intensity = the rise over 40 dB) or a *novelty* (a pitch jump of the sustained sound, intensity =
the jump in octaves). A slow swell of the bed is loud but not sudden, and triggers nothing.

Each listener (`_listener`, drawn once per subject) responds to those triggers with their own gain,
latency, shape and feature sensitivity. Skin conductance (eda, microsiemens):

- A phasic response (SCR) per trigger, onset 1-3 s after the event (latency per listener; Dawson, Schell &
  Filion, "The electrodermal system", and Boucsein et al. 2012, the publication recommendations for
  electrodermal measurements, place elicited SCRs 1-3 s after the stimulus), shaped as the Bateman
  function of Benedek & Kaernbach 2010 (continuous decomposition analysis): a rise time of 0.5-5 s
  (onset time constant 0.3-0.8 s per listener, plus the overlap of responses) and a recovery over several
  seconds (decay time constant 2-3.5 s; Boucsein et al.'s rise and half-recovery times).
- The amplitude grows with the event's intensity but saturates (Dawson et al.: SCR amplitude is a
  saturating function of stimulus intensity), and the summed phasic level saturates too. Responses
  habituate across repeated, similar events (the same sound: 0.8x per repeat, recovering over ~30 s)
  and recover to a novel one (Dawson et al. on habituation and dishabituation of the orienting SCR).
- Non-specific SCRs (NS-SCRs) unrelated to the audio, 2-5 a minute per listener (Dawson et al. give 1-3
  at rest, more when aroused; Boucsein et al.), and a tonic level (SCL, 2-15 uS) that drifts slowly and
  declines over the session.
- How much a listener weighs onsets against novelty differs per listener, and about one listener in ten
  barely responds (gain x0.05: the electrodermal non-responders of Dawson et al.).

Heart rate (hr, bpm; Bradley & Lang on the orienting response, e.g. Bradley 2009, "Natural selective
attention: orienting and emotion", and Bradley & Lang 2000 on affective reactions to sounds): a
deceleration of 2-6 bpm peaking 2-4 s after an event (the orienting response, habituating like the SCR),
plus a slower arousal component that follows the loudness (time constant ~8 s), respiratory sinus
arrhythmia (0.2-0.3 Hz) and noise. Any other channel name: the slow arousal component alone, on a 0..1 scale.

Signals start up to 2 s before the audio (negative offset_seconds), as a wristband switched on before the
music: a loader that ignores the offset misaligns them by up to 2 s and learns visibly worse.

Deterministic: every draw comes from generators seeded by (seed, subject[, recording]) or (seed, stream,
stimulus). What a listener's response depends on (the audio's events) is in the audio; what it does not
(NS-SCRs, drift, breathing, noise) differs between listeners: so an audio model can beat both the average
of the other listeners of a clip and a linear regression on loudness, but only by learning the events.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from a2b_pipeline.data.manifest import summarize_manifest
from a2b_pipeline.files import atomic_path, atomic_write

__all__ = ["summarize_manifest", "write_synthetic_corpus"]  # summarize_manifest: for `a2b synth`

# Bump when the files written for the same settings change: a corpus on disk from another version is then
# refused (naming both), never silently read as if it were this generator's.
GENERATOR_VERSION = 2
CONTROL_RATE = 100  # Hz: envelope and responses are computed on this grid
SIGNAL_RATE = 32  # Hz of the written signal files
FLOOR_DB, EVENT_DB = -40.0, (-20.0, 0.0)
BED_DB = (-40.0, -22.0)  # the quiet bed between events swells slowly within this range
SOUNDS_PER_CLIP = (3, 5)  # distinct sounds a clip's events draw from: repeats habituate
HABITUATION, HABITUATION_TAU = 0.8, 30.0  # amplitude factor per recent repeat of a sound; its recovery (s)


@dataclass(frozen=True)
class _Trigger:
    """An acoustic event that can elicit a response: when (s), what kind, how strong (0..1), which sound."""

    time: float
    kind: str  # "onset" (sudden rise in loudness) or "novelty" (pitch jump of a sustained sound)
    intensity: float
    sound: int


@dataclass(frozen=True)
class _Clip:
    db: np.ndarray  # loudness on the control grid (dB)
    pitch: np.ndarray  # tone pitch on the control grid (Hz)
    tone: np.ndarray  # tone share of the tone/noise mix on the control grid
    triggers: tuple[_Trigger, ...]


@dataclass(frozen=True)
class _Listener:
    """How one subject responds (drawn once per subject): see the module docstring for the sources."""

    scl: float  # tonic skin conductance level (uS)
    scr_gain: float  # SCR amplitude to a saturated event (uS); x0.05 for a non-responder
    latency: float  # s from event to SCR onset
    rise_tau: float  # Bateman onset time constant (s): rise time 0.5-5 s
    decay_tau: float  # Bateman recovery time constant (s)
    onset_weight: float  # sensitivity to loudness onsets vs pitch novelty (1 - onset_weight)
    ns_rate: float  # non-specific SCRs per minute
    hr_base: float  # bpm
    hr_orienting: float  # bpm of deceleration to a saturated event
    hr_arousal: float  # bpm from silence to full loudness, sustained
    rsa_hz: float  # breathing rate behind the respiratory sinus arrhythmia
    responder: bool


def _listener(rng: np.random.Generator) -> _Listener:
    responder = rng.uniform() >= 0.1  # about one listener in ten barely responds
    return _Listener(
        scl=rng.uniform(2.0, 15.0),
        scr_gain=rng.lognormal(np.log(0.6), 0.4) * (1.0 if responder else 0.05),
        latency=rng.uniform(1.3, 2.7),
        rise_tau=rng.uniform(0.3, 0.8),
        decay_tau=rng.uniform(2.0, 3.5),
        onset_weight=rng.uniform(0.5, 0.9),
        ns_rate=rng.uniform(2.0, 5.0),
        hr_base=rng.uniform(60.0, 85.0),
        hr_orienting=rng.uniform(3.0, 7.0) * (1.0 if responder else 0.2),
        hr_arousal=rng.uniform(2.0, 5.0),
        rsa_hz=rng.uniform(0.2, 0.3),
        responder=responder,
    )


def _clip(rng: np.random.Generator, seconds: float) -> _Clip:
    """A clip's loudness, pitch and tone mix on the control grid, and the triggers it contains."""
    n = round(seconds * CONTROL_RATE)
    t = np.arange(n) / CONTROL_RATE
    # the bed: a slow swell (period 15-40 s), loud but never sudden
    bed = BED_DB[0] + (BED_DB[1] - BED_DB[0]) * 0.5 * (
        1 - np.cos(2 * np.pi * t / rng.uniform(10.0, 30.0) + rng.uniform(0, 2 * np.pi))
    )
    db, pitch, tone = bed.copy(), np.full(n, 220.0), np.full(n, 0.2)
    sounds = [
        (rng.uniform(150.0, 1500.0), rng.uniform(0.3, 0.9), rng.uniform(*EVENT_DB))
        for _ in range(int(rng.integers(SOUNDS_PER_CLIP[0], SOUNDS_PER_CLIP[1] + 1)))
    ]
    triggers: list[_Trigger] = []
    start = rng.uniform(0.5, 3.0)
    while start < seconds - 0.5:
        length = rng.uniform(1.0, 5.0)
        k = int(rng.integers(len(sounds)))
        hz, mix, level = sounds[k]
        level = float(np.clip(level + rng.normal(0.0, 2.0), *EVENT_DB))
        i0 = round(start * CONTROL_RATE)
        before = float(db[max(i0 - 1, 0)])
        attack = np.clip((t - start) / 0.03, 0, 1)
        release = np.clip(1 - (t - start - length) / 0.3, 0, 1)
        shape = np.minimum(attack, release)
        inside = shape > 0
        db = np.where(inside, np.maximum(db, bed + shape * (level - bed)), db)
        pitch = np.where(inside, hz, pitch)
        tone = np.where(inside, mix, tone)
        triggers.append(_Trigger(start, "onset", float(np.clip((level - before) / 40.0, 0.0, 1.0)), k))
        if length > 2.5 and rng.uniform() < 0.7:  # the sound jumps in pitch midway, at the same loudness
            at = start + rng.uniform(1.0, length - 1.0)
            jump = rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 1.5)  # octaves
            later = (t >= at) & inside
            pitch = np.where(later, hz * 2.0**jump, pitch)
            triggers.append(_Trigger(at, "novelty", float(min(abs(jump), 1.0)), len(sounds) + k))
        start += length + rng.uniform(1.5, 6.0)
    return _Clip(db, pitch, tone, tuple(triggers))


def _audio(rng: np.random.Generator, clip: _Clip, seconds: float, sample_rate: int) -> np.ndarray:
    n = round(seconds * sample_rate)
    t = np.arange(n) / sample_rate
    grid = np.arange(len(clip.db)) / CONTROL_RATE
    amp = np.interp(t, grid, 10 ** (clip.db / 20))
    pitch = clip.pitch[np.minimum((t * CONTROL_RATE).astype(int), len(clip.pitch) - 1)]
    mix = np.interp(t, grid, clip.tone)
    tone = np.sin(2 * np.pi * np.cumsum(pitch) / sample_rate)  # phase-continuous through pitch jumps
    carrier = mix * tone + (1 - mix) * 0.7 * rng.standard_normal(n)
    return np.clip(0.5 * amp * carrier, -1.0, 1.0).astype(np.float32)


def _bateman(t: np.ndarray, rise_tau: float, decay_tau: float) -> np.ndarray:
    """The SCR impulse response of Benedek & Kaernbach 2010 (0 before 0), scaled to a peak of 1."""
    peak_t = np.log(decay_tau / rise_tau) * rise_tau * decay_tau / (decay_tau - rise_tau)
    peak = np.exp(-peak_t / decay_tau) - np.exp(-peak_t / rise_tau)
    u = np.maximum(t, 0.0)
    return (np.exp(-u / decay_tau) - np.exp(-u / rise_tau)) / peak


def _orienting(t: np.ndarray) -> np.ndarray:
    """The heart's orienting deceleration: starts 0.5 s after the event, deepest at 2.5 s, gone by ~8 s."""
    u = np.maximum(t - 0.5, 0.0) / 2.0
    return u**2 * np.exp(2.0 - 2.0 * u)  # peak 1 at u = 1


def _amplitudes(triggers: Sequence[_Trigger], who: _Listener) -> list[float]:
    """Each trigger's response size (0..1) for this listener: weighted by what they attend to, saturating
    in intensity, habituating across recent repeats of the same sound."""
    out, seen = [], {}  # sound -> times it was heard
    for tr in triggers:
        weight = who.onset_weight if tr.kind == "onset" else 1.0 - who.onset_weight
        drive = 1.0 - np.exp(-3.0 * weight * tr.intensity)  # saturating in intensity
        recent = sum(np.exp(-(tr.time - s) / HABITUATION_TAU) for s in seen.get(tr.sound, []))
        out.append(float(drive * HABITUATION**recent))
        seen.setdefault(tr.sound, []).append(tr.time)
    return out


def _pulses(
    t: np.ndarray, times: Sequence[float], sizes: Sequence[float], kernel: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    """The sum of `kernel` responses of the given sizes to events at the given times."""
    out = np.zeros_like(t)
    for at, size in zip(times, sizes, strict=True):
        out += size * kernel(t - at)
    return out


def _slow_noise(rng: np.random.Generator, n: int) -> np.ndarray:
    """Low-pass noise with unit standard deviation, wandering over tens of seconds."""
    walk = np.cumsum(rng.standard_normal(n))
    walk -= np.linspace(walk[0], walk[-1], n) * rng.uniform(0.0, 1.0)  # not always a plain trend
    return (walk - walk.mean()) / (walk.std() + 1e-9)


def _signal(
    rng: np.random.Generator, clip: _Clip, channel: str, who: _Listener, pre: float, seconds: float
) -> np.ndarray:
    """Channel values on the control grid starting `pre` seconds before the audio (silent before)."""
    n = round((seconds + pre) * CONTROL_RATE)
    t = np.arange(n) / CONTROL_RATE
    times = [tr.time + pre for tr in clip.triggers]
    sizes = _amplitudes(clip.triggers, who)
    if channel == "eda":
        scr = lambda u: _bateman(u - who.latency, who.rise_tau, who.decay_tau)  # noqa: E731
        phasic = _pulses(t, times, sizes, scr)
        n_ns = rng.poisson(who.ns_rate * (seconds + pre) / 60.0)
        ns_times = np.sort(rng.uniform(0.0, seconds + pre, size=n_ns))
        phasic += _pulses(t, ns_times, rng.uniform(0.3, 0.8, size=len(ns_times)), scr)
        phasic = 2.0 * (1.0 - np.exp(-phasic / 2.0))  # overlapping responses saturate
        gain = who.scr_gain
        tonic = who.scl - 0.1 * gain * t / 60.0 + 0.3 * max(gain, 0.1) * _slow_noise(rng, n)
        return tonic + gain * phasic + 0.01 * max(gain, 0.1) * rng.standard_normal(n)
    db = np.concatenate([np.full(round(pre * CONTROL_RATE), FLOOR_DB), clip.db])[:n]
    loud = np.clip((db - FLOOR_DB) / -FLOOR_DB, 0.0, 1.0)
    lowpass = np.exp(-np.arange(0, 40.0, 1.0 / CONTROL_RATE) / 8.0)  # arousal: loudness over the last ~8 s
    arousal = np.convolve(loud, lowpass / lowpass.sum())[:n]
    if channel != "hr":
        return arousal + 0.05 * rng.standard_normal(n)
    orienting = _pulses(t, times, sizes, _orienting)
    rsa = rng.uniform(1.0, 2.5) * np.sin(2 * np.pi * who.rsa_hz * t + rng.uniform(0, 2 * np.pi))
    return (
        who.hr_base
        - who.hr_orienting * orienting
        + who.hr_arousal * arousal
        + rsa
        + 1.0 * _slow_noise(rng, n)
        + 0.3 * rng.standard_normal(n)
    )


def _write_wav(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    with atomic_path(path) as tmp:
        sf.write(tmp, audio, sample_rate, subtype="PCM_16", format="WAV")


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
    `stimulus_id` column. Each listener responds in their own way (`_Listener`).
    None: every recording plays a clip of its own, as before.
    """
    out = Path(out_dir)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    (out / "signals").mkdir(parents=True, exist_ok=True)
    clips: dict[int, _Clip] = {}  # stimulus -> its clip
    rows = []
    for s in range(subjects):
        srng = np.random.default_rng([seed, s])
        who = _listener(srng)
        sid = f"s{s + 1:02d}"
        for r in range(recordings_per_subject):
            rng = np.random.default_rng([seed, s, r])
            rid = f"{sid}_r{r + 1:02d}"
            if stimuli is None:
                stim = None
                clip = _clip(rng, seconds)
                wav = out / "audio" / f"{rid}.wav"
                _write_wav(wav, _audio(rng, clip, seconds, sample_rate), sample_rate)
            else:
                k = (s + r) % stimuli
                stim = f"stim_{k + 1:02d}"
                wav = out / "audio" / f"{stim}.wav"
                if k not in clips:
                    crng = np.random.default_rng([seed, _STIMULUS_STREAM, k])
                    clips[k] = _clip(crng, seconds)
                    _write_wav(wav, _audio(crng, clips[k], seconds, sample_rate), sample_rate)
                clip = clips[k]
            pre = round(float(rng.uniform(0.0, 2.0)), 3)
            t_sig = (
                np.arange(int(np.floor((seconds + pre) * SIGNAL_RATE)) + 1) / SIGNAL_RATE
            )  # to the audio's end
            grid = np.arange(round((seconds + pre) * CONTROL_RATE)) / CONTROL_RATE
            cols = [t_sig] + [
                np.interp(t_sig, grid, _signal(rng, clip, ch, who, pre, seconds)) for ch in channels
            ]
            lines = [",".join(["time", *channels])]
            lines += [",".join(f"{v:.5f}" for v in row) for row in zip(*cols, strict=True)]
            atomic_write(out / "signals" / f"{rid}.csv", ("\n".join(lines) + "\n").encode())
            row = [rid, sid, f"audio/{wav.name}", f"signals/{rid}.csv", f"{-pre:g}"]
            rows.append(row if stim is None else [*row, stim])
    header = ["recording_id", "subject_id", "audio_path", "signal_path", "offset_seconds"]
    buf = [",".join(header if stimuli is None else [*header, "stimulus_id"])]
    buf += [",".join(r) for r in rows]
    manifest = out / "manifest.csv"
    atomic_write(manifest, ("\n".join(buf) + "\n").encode())
    return manifest
