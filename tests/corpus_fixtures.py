"""Small corpora in the published PMEmo2019 and HKU956 layouts, written as real files (mp3 through
soundfile). For tests, benchmarks and trying the adapters without the real corpora.

Every clip has a loud broadband burst at a known second (``events``), and every listener's EDA has a
sharp peak at that same second, so alignment can be checked end to end: an event at second s of the
audio must be at second s of the target.
"""

from __future__ import annotations

import csv
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

__all__ = ["FixtureInfo", "write_clip", "write_hku956_fixture", "write_pmemo2019_fixture"]


@dataclass
class FixtureInfo:
    root: Path
    events: dict[str, float] = field(default_factory=dict)  # song id -> second of the burst
    recordings: int = 0  # usable (listener, song) pairs
    subjects: set[str] = field(default_factory=set)
    skipped: list[str] = field(default_factory=list)  # relative paths expected among the skipped


def write_clip(
    path: Path, seconds: float, event: float, seed: int, *, sample_rate: int = 44100, stereo: bool = True
) -> None:
    """A music-like clip (two tones) with a 50 ms broadband burst at `event` seconds."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sample_rate))
    t = np.arange(n) / sample_rate
    f0 = 220.0 * 2 ** (rng.integers(0, 12) / 12)
    # tones with a slow tremolo (no broadband background: it makes the mp3 encoder several times slower)
    x = (0.05 * np.sin(2 * np.pi * f0 * t) + 0.03 * np.sin(2 * np.pi * 1.5 * f0 * t)) * (1 + 0.3 * np.sin(t))
    i0, i1 = int(event * sample_rate), int((event + 0.05) * sample_rate)
    x[i0:i1] += 0.6 * rng.standard_normal(i1 - i0)
    data = np.stack([x, 0.9 * x], axis=1) if stereo else x
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = path.suffix.lower().lstrip(".")
    sf.write(
        str(path),
        np.clip(data, -1, 1).astype(np.float32),
        sample_rate,
        format="MP3" if fmt == "mp3" else None,
    )


def _eda_trace(times: np.ndarray, event: float, rng: np.random.Generator) -> np.ndarray:
    """Skin conductance in microsiemens: a baseline with drift and a sharp peak at `event`."""
    base = rng.uniform(1.0, 5.0)
    drift = 0.05 * times / max(times[-1], 1.0)
    return (
        base
        + drift
        + 2.0 * np.exp(-0.5 * ((times - event) / 0.2) ** 2)
        + 0.002 * rng.standard_normal(times.size)
    )


def write_pmemo2019_fixture(
    root: str | Path,
    *,
    songs: int = 3,
    subjects: int = 4,
    seconds: float = 10.0,
    seed: int = 0,
    eda_rate: float = 50.0,
    missing_clip: bool = True,
    missing_listener: bool = True,
    sample_rate: int = 44100,
    clip_template: Path | None = None,
) -> FixtureInfo:
    """PMEmo2019 layout: metadata.csv (with extra columns), chorus/<fileName>.mp3, EDA/<musicId>_EDA.csv.

    EDA files have an irregular time grid (~`eda_rate` Hz, jittered), a time column with a different header
    per file, and subject headers written as '1000NN', 'subject_1000NN' or '1000NN_EDA'. With
    `missing_listener`, the last listener's column of the first song is empty (skipped quietly); with
    `missing_clip`, one metadata row names a clip that isn't there. `clip_template` (an mp3) is copied with
    a distinct trailer per song instead of encoding each clip (fast, for large benchmark corpora; its event
    second is then `seconds / 2`). Long for its options and this note; the body writes the layout top down.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    info = FixtureInfo(root=root)
    (root / "chorus").mkdir(parents=True, exist_ok=True)
    (root / "EDA").mkdir(parents=True, exist_ok=True)
    subject_ids = [f"{100011 + 3 * k}" for k in range(subjects)]
    meta_rows = []
    time_headers = ["time(s)", "Time", "", "timestamp"]
    for s in range(songs):
        music = str(s + 1 if s < 9 else 10 * s + 1)  # ids are not contiguous in the real corpus either
        event = round(float(rng.uniform(0.3, 0.7) * seconds) * 4) / 4  # on the 4 Hz grid
        clip = root / "chorus" / f"{music}.mp3"
        if clip_template is not None:
            event = seconds / 2
            shutil.copyfile(clip_template, clip)
            with open(clip, "ab") as f:  # an ID3v1 tag: new bytes (new content hash), same audio
                f.write(b"TAG" + f"song {music}".encode().ljust(125, b"\0"))
        else:
            write_clip(clip, seconds, event, seed * 1000 + s, sample_rate=sample_rate)
        info.events[music] = event
        meta_rows.append(
            {
                "musicId": music,
                "fileName": f"{music}.mp3",
                "title": f"Song {music}",
                "artist": "Fixture Band",
                "album": "Fixtures",
                "duration": f"{seconds * 6:.1f}",
                "chorus_start_time": "01:00",
                "chorus_end_time": f"01:{int(seconds):02d}",
            }
        )
        # irregular grid from 0 to the clip's end
        dts = rng.uniform(0.6, 1.4, size=int(seconds * eda_rate * 1.5)) / eda_rate
        times = np.concatenate([[0.0], np.cumsum(dts)])
        times = times[times <= seconds - 0.5 / eda_rate]
        headers, cols = [], []
        for k, sid in enumerate(subject_ids):
            style = (k + s) % 3
            headers.append([sid, f"subject_{sid}", f"{sid}_EDA"][style])
            if missing_listener and s == 0 and k == subjects - 1:
                cols.append(None)
                info.skipped.append(f"EDA/{music}_EDA.csv")
                continue
            cols.append(_eda_trace(times, event, rng))
            info.recordings += 1
            info.subjects.add(sid)
        with open(root / "EDA" / f"{music}_EDA.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow([time_headers[s % len(time_headers)], *headers])
            for i, t in enumerate(times):
                w.writerow([f"{t:.4f}", *("" if c is None else f"{c[i]:.5f}" for c in cols)])
    if missing_clip:
        meta_rows.append({**meta_rows[0], "musicId": "999", "fileName": "999.mp3", "title": "Missing"})
        info.skipped.append("chorus/999.mp3")
    with open(root / "metadata.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(meta_rows[0]))
        w.writeheader()
        w.writerows(meta_rows)
    return info


def write_hku956_fixture(
    root: str | Path,
    *,
    participants: int = 3,
    songs_per_participant: int = 3,
    seconds: float = 10.0,
    seed: int = 1,
    with_hr: bool = True,
    missing_eda: bool = True,
    audio_dir: str | Path | None = None,
    sample_rate: int = 44100,
) -> FixtureInfo:
    """HKU956 layout: 3. AV_ratings.csv (with play_duration), 2. original_song_audio.csv (song_id, link),
    1. physiological_signals/<pid>/{EDA,HR}/<song_no>_<song_id>.csv at 4 Hz / 1 Hz.

    Songs are written to `audio_dir` (default: a sibling folder `<root>_audio`) as <song_id>.mp3 and the
    links point there (absolute paths). Signal files come in the three shapes seen in the wild: a header
    row, no header, and a raw Empatica preamble (start time, rate). With `missing_eda`, the last record of
    the first participant has no EDA file (HR only). The second record of each participant was stopped
    early: play_duration is shorter than the song and so are its signals. Long for its options and this
    note; the body writes the layout top down.
    """
    root = Path(root)
    audio_dir = Path(audio_dir) if audio_dir else root.parent / f"{root.name}_audio"
    rng = np.random.default_rng(seed)
    info = FixtureInfo(root=root)
    sig = root / "1. physiological_signals"
    n_songs = participants + songs_per_participant
    song_ids = [str(1000000 + 7919 * k) for k in range(n_songs)]
    links = []
    for k, sid in enumerate(song_ids):
        event = round(float(rng.uniform(0.3, 0.6) * seconds) * 4) / 4
        write_clip(audio_dir / f"{sid}.mp3", seconds, event, seed * 1000 + k, sample_rate=sample_rate)
        info.events[sid] = event
        links.append({"song_id": sid, "link": str(audio_dir / f"{sid}.mp3")})
    ratings = []
    for p in range(participants):
        pid = f"hku{1901 + p}"
        for n in range(songs_per_participant):
            sid = song_ids[p + n]
            played = seconds if n != 1 else round(seconds * 0.8)
            ratings.append(
                {
                    "participant_id": pid,
                    "song_no": str(n),
                    "song_id": sid,
                    "arousal_rating": str(int(rng.integers(-10, 11))),
                    "valence_rating": str(int(rng.integers(-10, 11))),
                    "play_duration": f"{played:g}",
                }
            )
            shape = p % 3  # 0: header, 1: no header, 2: E4 preamble
            drop_eda = missing_eda and p == 0 and n == songs_per_participant - 1
            for folder, rate in (("EDA", 4.0), ("HR", 1.0)):
                if folder == "HR" and not with_hr:
                    continue
                if folder == "EDA" and drop_eda:
                    info.skipped.append(f"1. physiological_signals/{pid}/EDA/{n}_{sid}.csv")
                    continue
                t = np.arange(int(round(played * rate))) / rate
                if folder == "EDA":
                    values = _eda_trace(t, info.events[sid], rng)
                else:
                    values = 70 + 5 * np.sin(t / 3) + rng.standard_normal(t.size)
                path = sig / pid / folder / f"{n}_{sid}.csv"
                path.parent.mkdir(parents=True, exist_ok=True)
                lines = [f"{v:.5f}" for v in values]
                if shape == 0:
                    lines = [folder, *lines]
                elif shape == 2:
                    lines = ["1546300800.000000", f"{rate:.6f}", *lines]
                path.write_text("\n".join(lines) + "\n")
            if not drop_eda:
                info.recordings += 1
                info.subjects.add(pid)
    with open(root / "3. AV_ratings.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(ratings[0]))
        w.writeheader()
        w.writerows(ratings)
    with open(root / "2. original_song_audio.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["song_id", "link"])
        w.writeheader()
        w.writerows(links)
    return info
