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
from dataclasses import dataclass

from pydantic import PositiveFloat, field_validator

from a2b_pipeline.configs import DatasetConfig, OptionalConfigPath, no_literal_secret
from a2b_pipeline.data import remote
from a2b_pipeline.data.corpora import ChannelInfo, CorpusError, CorpusScan, CorpusType
from a2b_pipeline.data.corpora import _layout as layout
from a2b_pipeline.data.recording import BadRecordingError, Recording, SignalSource
from a2b_pipeline.data.signal_csv import parse_signal_csv, pick_value_column, valid_length

__all__ = ["CORPUS", "E4_RATES", "HKU956Dataset", "scan_hku956"]

E4_RATES: dict[str, float] = {"eda": 4.0, "temp": 4.0, "bvp": 64.0, "hr": 1.0}


class HKU956Dataset(DatasetConfig):
    """An HKU956 dataset's options (beside `root`)."""

    audio_dir: OptionalConfigPath = None  # local directory of <song_id>.mp3
    signal_rates: dict[str, PositiveFloat] = {}  # override the wristband's rates (E4_RATES) per channel

    _no_literal_secret_in_audio_dir = field_validator("audio_dir")(no_literal_secret)


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


def _rates(name: str, channels: Sequence[str], signal_rates: dict[str, float] | None) -> dict[str, float]:
    """Sampling rate per channel (lower-case): the wristband's, overridden by `signal_rates`."""
    rates = {**E4_RATES, **{k.lower(): float(v) for k, v in (signal_rates or {}).items()}}
    for ch in channels:
        if ch.lower() not in rates:
            raise CorpusError(
                f"dataset {name!r} (hku956): no sampling rate known for channel {ch!r}; "
                f"set datasets.*.signal_rates.{ch} (known: {sorted(rates)})"
            )
    return rates


_ID_COLUMNS = ("participant_id", "song_no", "song_id")
Problem = tuple[str, str]  # (path, reason) of a listening record that can't be used


@dataclass
class _Audio:
    """Where songs come from: `audio_dir`, else an audio folder in the root, else the link column."""

    root: str
    audio_dir: str | None
    files: dict[str, str]  # song_id -> path relative to `audio_dir` (or the root)
    links: dict[str, str]  # song_id -> URL or path
    links_rel: str | None  # the links table, relative to the root

    @classmethod
    def find(
        cls, root: str, index: layout.Index, name: str, audio_dir: str | None, cache_dir: str | None
    ) -> _Audio:
        if audio_dir:
            try:
                files = _audio_index(remote.list_tree(audio_dir), flat=True)
            except remote.RemoteNotFoundError:
                raise CorpusError(
                    f"dataset {name!r}: audio_dir {remote.redact(audio_dir)} not found"
                ) from None
        else:
            files = _audio_index(index.tree)
        links: dict[str, str] = {}
        links_rel = layout.find_top(index.tree, "original_song_audio.csv")
        if links_rel is not None and not audio_dir:
            lcols, lrows = layout.read_table(root, links_rel, cache_dir, "HKU956")
            lid = layout.find_column(lcols, "song_id", "songid")
            llink = layout.find_column(lcols, "link", "url", "audio", "path")
            if lid is None or llink is None:
                raise CorpusError(
                    f"{remote.join(index.shown, links_rel)}: needs columns 'song_id' and 'link' (has {lcols})"
                )
            for r in lrows:
                sid, link = layout.norm_id(layout.cell_text(r, lid)), layout.cell_text(r, llink)
                if sid and link:
                    links[sid] = link if "://" in link or link.startswith("/") else remote.join(root, link)
        return cls(root, audio_dir, files, links, links_rel)

    def path(self, song_id: str) -> str | Problem:
        if song_id in self.files:
            return remote.join(self.audio_dir or self.root, self.files[song_id])
        if self.audio_dir:
            return remote.join(self.audio_dir, f"{song_id}.mp3"), "audio file missing in audio_dir"
        if song_id in self.links:
            return self.links[song_id]
        where = remote.join(self.root, self.links_rel or "2. original_song_audio.csv")
        return where, f"no audio link for song_id {song_id}"


@dataclass
class _Signals:
    """The signal files under `1. physiological_signals/<participant>/<SIGNAL>/`."""

    root: str
    folder: str  # the physiological_signals folder as named in the tree
    files: dict[tuple[str, str, str], str]  # (participant, SIGNAL upper, file lower) -> relative path
    counts: dict[str, int]  # SIGNAL upper -> files

    @classmethod
    def index(cls, root: str, tree: dict[str, remote.FileInfo]) -> _Signals:
        folder = next(
            (
                p.split("/", 1)[0]
                for p in tree
                if p.split("/", 1)[0].lower().endswith("physiological_signals")
            ),
            "1. physiological_signals",
        )
        files: dict[tuple[str, str, str], str] = {}
        counts: dict[str, int] = {}
        for rel in tree:
            parts = rel.split("/")
            if len(parts) == 4 and parts[0] == folder:
                files[(parts[1], parts[2].upper(), parts[3].lower())] = rel
                counts[parts[2].upper()] = counts.get(parts[2].upper(), 0) + 1
        return cls(root, folder, files, counts)

    def sources(
        self, pid: str, file_name: str, channels: Sequence[str], rates: dict[str, float]
    ) -> dict[str, SignalSource] | Problem:
        signals: dict[str, SignalSource] = {}
        for ch in channels:
            sig = ch.upper()
            rel = self.files.get((pid, sig, file_name.lower()))
            if rel is None:
                where = remote.join(self.root, self.folder, pid, sig, file_name)
                return where, f"no {sig} file for this listening record"
            signals[ch] = SignalSource(
                remote.join(self.root, rel), column=sig, time_column=None, rate=rates[ch.lower()]
            )
        return signals


def _rating_columns(index: layout.Index) -> dict[str, str | None]:
    """The ratings table's columns by role; CorpusError when an id column is missing."""
    cols = {
        key: layout.find_column(index.columns, *aliases)
        for key, aliases in (
            ("participant_id", ("participant_id", "participant", "subject_id", "subject")),
            ("song_no", ("song_no", "songno")),
            ("song_id", ("song_id", "songid")),
            ("play_duration", ("play_duration", "playduration")),
        )
    }
    missing = [k for k in _ID_COLUMNS if cols[k] is None]
    if missing:
        raise CorpusError(
            f"{remote.join(index.shown, index.rel)}: missing column(s) {missing} (has {index.columns})"
        )
    return cols


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
    rates = _rates(name, channels, signal_rates)
    index = layout.read_index(
        root,
        "HKU956",
        "av_ratings.csv",
        "no '3. AV_ratings.csv' (HKU956 layout: 3. AV_ratings.csv, 2. original_song_audio.csv, "
        "1. physiological_signals/<participant>/<SIGNAL>/<song_no>_<song_id>.csv)",
        cache_dir,
    )
    cols = _rating_columns(index)
    audio = _Audio.find(root, index, name, audio_dir, cache_dir)
    signal_files = _Signals.index(root, index.tree)
    col = layout.Collector(name, root, on_bad)
    scan = CorpusScan("hku956", index.shown, col.listing, files=index.tree)
    scan.channels = {
        folder.lower(): ChannelInfo(rate=rates.get(folder.lower()), files=n)
        for folder, n in sorted(signal_files.counts.items())
    }
    seen: set[tuple[str, str, str]] = set()
    songs: set[str] = set()
    ratings_path = remote.join(root, index.rel)
    for row_no, row in enumerate(index.rows, 1):
        pid, song_no, song_id = (layout.norm_id(layout.cell_text(row, cols[k])) for k in _ID_COLUMNS)
        rec_id = f"{pid}_{song_no}_{song_id}"
        if not (pid and song_no and song_id):
            col.bad(ratings_path, f"row {row_no}: empty participant_id, song_no or song_id", row=row_no)
            continue
        if (pid, song_no, song_id) in seen:
            col.bad(ratings_path, f"row {row_no}: listed twice", row=row_no, rec_id=rec_id)
            continue
        seen.add((pid, song_no, song_id))
        signals = signal_files.sources(pid, f"{song_no}_{song_id}.csv", channels, rates)
        audio_path = audio.path(song_id)
        problem = (
            signals if isinstance(signals, tuple) else audio_path if isinstance(audio_path, tuple) else None
        )
        if problem:
            col.bad(*problem, row=row_no, rec_id=rec_id)
            continue
        assert isinstance(signals, dict) and isinstance(audio_path, str)
        duration = _seconds(layout.cell_text(row, cols["play_duration"])) if cols["play_duration"] else None
        rec = Recording(
            dataset=name,
            recording_id=rec_id,
            subject_id=pid,
            audio_path=audio_path,
            signals=signals,
            duration_seconds=duration,
            row=row_no,
            source=index.shown,
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
    config=HKU956Dataset,
)
