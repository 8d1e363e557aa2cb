"""HKU956 in its published layout -> the same Recordings a manifest gives.

``root`` is the folder that holds ``3. AV_ratings.csv``::

    3. AV_ratings.csv         participant_id, song_no, song_id, ratings..., play_duration (optional)
    2. original_song_audio.csv  song_id, link (URL of the song's mp3)
    1. physiological_signals/<participant_id>/<SIGNAL>/<song_no>_<song_id>.csv
                              SIGNAL in EDA, HR, BVP, TEMP (IBI is irregular and not a channel):
                              one value column at the wristband's fixed rate (Empatica E4: EDA 4 Hz,
                              TEMP 4 Hz, BVP 64 Hz, HR 1 Hz; ``signal_rates`` in the config overrides),
                              with or without a header row; a raw E4 preamble (start time, rate) is dropped

Audio comes from ``audio_dir/<song_id>.mp3`` when the dataset sets ``audio_dir``, else from an audio folder
inside the root holding ``<song_id>.mp3`` (wav/flac), else from ``link`` (downloaded once into the cache).
A config channel ``eda`` reads the ``EDA`` folder (``hr`` -> ``HR``...). ``play_duration`` limits the usable
length of a recording.

Remote roots and bad records are handled as for every published layout (see ``_layout.py``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from a2b_pipeline.data import remote
from a2b_pipeline.data.corpora import ChannelInfo, CorpusError, CorpusScan, CorpusType
from a2b_pipeline.data.corpora import _layout as layout
from a2b_pipeline.data.recording import BadRecordingError, Recording, SignalSource
from a2b_pipeline.data.signal_csv import parse_signal_csv, pick_value_column, valid_length

__all__ = ["CORPUS", "E4_RATES", "scan_hku956"]

E4_RATES: dict[str, float] = {"eda": 4.0, "temp": 4.0, "bvp": 64.0, "hr": 1.0}


def _seconds(text: str) -> float | None:
    """'183.4' or '3:03' (m:ss) -> seconds; None when empty or unreadable."""
    s = text.strip()
    if not s:
        return None
    try:
        if ":" in s:
            parts = [float(p) for p in s.split(":")]
            total = 0.0
            for p in parts:
                total = total * 60 + p
            return total if math.isfinite(total) and total > 0 else None
        v = float(s)
    except ValueError:
        return None
    return v if math.isfinite(v) and v > 0 else None


def _audio_index(tree: dict[str, remote.FileInfo], flat: bool = False) -> dict[str, str]:
    """stem -> relative path of audio files: at the top of `tree` (flat), or in its folders named *audio*."""
    out: dict[str, str] = {}
    for rel in sorted(tree):
        low = rel.lower()
        if not low.endswith(layout.AUDIO_EXTENSIONS):
            continue
        parts = rel.split("/")
        if flat:
            if len(parts) != 1:
                continue
        elif len(parts) < 2 or "audio" not in parts[0].lower():
            continue
        stem = parts[-1].rsplit(".", 1)[0]
        out.setdefault(layout.norm_id(stem), rel)
    return out


def scan_hku956(
    root: str,
    *,
    name: str = "hku956",
    channels: Sequence[str] = ("eda",),
    on_bad: str = "error",
    cache_dir: str | None = None,
    audio_dir: str | None = None,
    signal_rates: dict[str, float] | None = None,
    measure: bool = False,
) -> CorpusScan:
    """List HKU956 under `root` (see the module docstring); `measure` reads each signal file (summary)."""
    rates = {**E4_RATES, **{k.lower(): float(v) for k, v in (signal_rates or {}).items()}}
    for ch in channels:
        if ch.lower() not in rates:
            raise CorpusError(
                f"dataset {name!r} (hku956): no sampling rate known for channel {ch!r}; "
                f"set datasets.*.signal_rates.{ch} (known: {sorted(rates)})"
            )
    index = layout.read_index(
        root,
        "HKU956",
        "av_ratings.csv",
        "no '3. AV_ratings.csv' (HKU956 layout: 3. AV_ratings.csv, 2. original_song_audio.csv, "
        "1. physiological_signals/<participant>/<SIGNAL>/<song_no>_<song_id>.csv)",
        cache_dir,
    )
    shown, tree, ratings_rel, columns, rating_rows = (
        index.shown,
        index.tree,
        index.rel,
        index.columns,
        index.rows,
    )
    pid_col = layout.find_column(columns, "participant_id", "participant", "subject_id", "subject")
    no_col = layout.find_column(columns, "song_no", "songno")
    sid_col = layout.find_column(columns, "song_id", "songid")
    dur_col = layout.find_column(columns, "play_duration", "playduration")
    missing = [
        n for n, c in (("participant_id", pid_col), ("song_no", no_col), ("song_id", sid_col)) if c is None
    ]
    if missing:
        raise CorpusError(f"{remote.join(shown, ratings_rel)}: missing column(s) {missing} (has {columns})")

    # audio: audio_dir, else an audio folder in the root, else the link column
    audio_files: dict[str, str] = {}
    audio_base = root
    if audio_dir:
        audio_base = audio_dir
        try:
            audio_files = _audio_index(remote.list_tree(audio_dir), flat=True)
        except remote.RemoteNotFoundError:
            raise CorpusError(f"dataset {name!r}: audio_dir {remote.redact(audio_dir)} not found") from None
    else:
        audio_files = _audio_index(tree)
    links: dict[str, str] = {}
    links_rel = layout.find_top(tree, "original_song_audio.csv")
    if links_rel is not None and not audio_dir:
        lcols, lrows = layout.read_table(root, links_rel, cache_dir, "HKU956")
        lid, llink = (
            layout.find_column(lcols, "song_id", "songid"),
            layout.find_column(lcols, "link", "url", "audio", "path"),
        )
        if lid is None or llink is None:
            raise CorpusError(
                f"{remote.join(shown, links_rel)}: needs columns 'song_id' and 'link' (has {lcols})"
            )
        for r in lrows:
            sid, link = layout.norm_id(layout.cell_text(r, lid)), layout.cell_text(r, llink)
            if sid and link:
                links[sid] = link if "://" in link or link.startswith("/") else remote.join(root, link)

    sig_root = next(
        (p.split("/", 1)[0] for p in tree if p.split("/", 1)[0].lower().endswith("physiological_signals")),
        "1. physiological_signals",
    )
    signal_files: dict[tuple[str, str, str], str] = {}  # (participant, SIGNAL upper, file lower) -> rel
    folder_counts: dict[str, int] = {}
    for rel in tree:
        parts = rel.split("/")
        if len(parts) == 4 and parts[0] == sig_root:
            signal_files[(parts[1], parts[2].upper(), parts[3].lower())] = rel
            folder_counts[parts[2].upper()] = folder_counts.get(parts[2].upper(), 0) + 1

    col = layout.Collector(name, root, on_bad)
    scan = CorpusScan("hku956", shown, col.listing, files=tree)
    scan.channels = {
        folder.lower(): ChannelInfo(rate=rates.get(folder.lower()), files=n)
        for folder, n in sorted(folder_counts.items())
    }
    seen: set[tuple[str, str, str]] = set()
    songs: set[str] = set()
    ratings_path = remote.join(root, ratings_rel)
    for row_no, row in enumerate(rating_rows, 1):
        pid, song_no, song_id = (
            layout.norm_id(layout.cell_text(row, pid_col)),
            layout.norm_id(layout.cell_text(row, no_col)),
            layout.norm_id(layout.cell_text(row, sid_col)),
        )
        if not (pid and song_no and song_id):
            col.bad(ratings_path, f"row {row_no}: empty participant_id, song_no or song_id", row=row_no)
            continue
        rec_id = f"{pid}_{song_no}_{song_id}"
        if (pid, song_no, song_id) in seen:
            col.bad(ratings_path, f"row {row_no}: listed twice", row=row_no, rec_id=rec_id)
            continue
        seen.add((pid, song_no, song_id))
        file_name = f"{song_no}_{song_id}.csv"
        signals: dict[str, SignalSource] = {}
        problem = None
        for ch in channels:
            folder = ch.upper()
            rel = signal_files.get((pid, folder, file_name.lower()))
            if rel is None:
                problem = (
                    remote.join(root, sig_root, pid, folder, file_name),
                    f"no {folder} file for this listening record",
                )
                break
            signals[ch] = SignalSource(
                remote.join(root, rel), column=folder, time_column=None, rate=rates[ch.lower()]
            )
        if problem:
            col.bad(*problem, row=row_no, rec_id=rec_id)
            continue
        if song_id in audio_files:
            audio_path = remote.join(audio_base, audio_files[song_id])
        elif audio_dir:
            col.bad(
                remote.join(audio_dir, f"{song_id}.mp3"),
                "audio file missing in audio_dir",
                row=row_no,
                rec_id=rec_id,
            )
            continue
        elif song_id in links:
            audio_path = links[song_id]
        else:
            where = (
                remote.join(root, links_rel) if links_rel else remote.join(root, "2. original_song_audio.csv")
            )
            col.bad(where, f"no audio link for song_id {song_id}", row=row_no, rec_id=rec_id)
            continue
        duration = _seconds(layout.cell_text(row, dur_col)) if dur_col else None
        rec = Recording(
            dataset=name,
            recording_id=rec_id,
            subject_id=pid,
            audio_path=audio_path,
            signals=signals,
            duration_seconds=duration,
            row=row_no,
            source=shown,
            stimulus_id=song_id,
        )
        if measure:
            try:
                secs = _measure_fixed_rate(rec, cache_dir)
            except BadRecordingError as e:
                col.bad(e.path, e.reason, row=row_no, rec_id=rec_id)
                continue
            scan.durations[rec_id] = min(secs, duration) if duration else secs
        col.listing.recordings.append(rec)
        songs.add(song_id)
    scan.songs = len(songs)
    return scan


def _measure_fixed_rate(rec: Recording, cache_dir: str | None) -> float:
    """Seconds covered by the shortest channel of a fixed-rate recording."""
    secs = math.inf
    for src in rec.signals.values():
        table = parse_signal_csv(remote.read_text(src.path, cache_dir), src.path, rec)
        key = pick_value_column(table, src.column)
        if key is None:
            raise BadRecordingError(rec, src.path, f"no column {src.column!r} (has {sorted(table)})")
        secs = min(secs, valid_length(table[key]) / float(src.rate or 1.0))
    return secs


CORPUS = CorpusType(
    name="hku956",
    sources=("root",),
    scan=scan_hku956,
    options=("audio_dir", "signal_rates"),
    path_fields=("root", "audio_dir"),
)
