"""PMEmo2019 and HKU956 in their published layouts -> the same Recordings a manifest gives.

PMEmo2019 (``root`` = the folder that holds ``metadata.csv``)::

    metadata.csv              musicId, fileName, ... (extra columns ignored)
    chorus/<fileName>         the chorus clip (mp3, 44.1 kHz stereo); ``Chorus/`` works too
    EDA/<musicId>_EDA.csv     first column: time in seconds (any header, grid may be irregular);
                              then one column per listener, header = subject id, possibly with a prefix
                              or suffix ("subject_100016", "100016_EDA"): the six-digit id is kept

One recording per (musicId, listener); time 0 is the start of the clip. A listener column that is
entirely empty means that listener didn't hear that song: the pair is skipped quietly (counted and listed
as skipped, never an error). Cells left empty at the END of a column (a listener whose recording stopped
early) shorten that recording.

HKU956 (``root`` = the folder that holds ``3. AV_ratings.csv``)::

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

Roots may be local folders or fsspec URLs (``s3://bucket/prefix``): each is listed once, files are fetched
through :mod:`a2b_pipeline.data.remote` (cached by URL + ETag + size).

Problems name the file (and the metadata row): with ``data.on_bad_recording: error`` the first one raises
``BadRecordingError``; with ``skip`` each becomes a ``Skipped`` entry. A missing root, metadata file or
required column is a ``CorpusError`` either way.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from a2b_pipeline.configs import DatasetType
from a2b_pipeline.data import remote
from a2b_pipeline.data.recording import BadRecordingError, Listing, Recording, SignalSource, Skipped

__all__ = [
    "E4_RATES",
    "CorpusError",
    "CorpusScan",
    "list_hku956",
    "list_pmemo2019",
    "parse_signal_csv",
    "register",
    "scan_corpus",
    "scan_hku956",
    "scan_pmemo2019",
    "subject_id_from_header",
]

E4_RATES: dict[str, float] = {"eda": 4.0, "temp": 4.0, "bvp": 64.0, "hr": 1.0}
AUDIO_EXTENSIONS = (".mp3", ".wav", ".flac", ".ogg")
LISTENER_MISSING = "listener missing (empty column)"


class CorpusError(ValueError):
    """A corpus that can't be read at all (missing root, metadata file or column); names the path."""


@dataclass
class ChannelInfo:
    rate: float | None  # Hz (median for an irregular grid)
    files: int = 0
    irregular: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"rate": self.rate, "files": self.files, "irregular": self.irregular}


@dataclass
class CorpusScan:
    """What a corpus holds: the listing, and what the `a2b corpus` summary reports."""

    type: str
    root: str
    listing: Listing
    songs: int = 0
    durations: dict[str, float] = field(default_factory=dict)  # recording_id -> usable seconds (if measured)
    channels: dict[str, ChannelInfo] = field(default_factory=dict)
    files: dict[str, remote.FileInfo] = field(default_factory=dict)  # relative path -> size + ETag/mtime


class _Collector:
    """Applies `on_bad_recording`: raise the first problem, or collect it as Skipped."""

    def __init__(self, dataset: str, root: str, on_bad: str):
        self.dataset, self.root, self.on_bad = dataset, root, on_bad
        self.listing = Listing()

    def bad(self, path: str, reason: str, *, row: int | None = None, rec_id: str = "") -> None:
        if self.on_bad == "error":
            stub = Recording(
                self.dataset, rec_id or "?", "", "", {}, row=row, source=remote.redact(self.root)
            )
            raise BadRecordingError(stub, remote.redact(path), reason)
        self.listing.skipped.append(Skipped(remote.redact(path), reason, row=row, dataset=self.dataset))

    def quiet_skip(self, path: str, reason: str, *, row: int | None = None) -> None:
        self.listing.skipped.append(Skipped(remote.redact(path), reason, row=row, dataset=self.dataset))


# ---- small parsers ----


def _norm_id(value: Any) -> str:
    """'7' / ' 7 ' / '7.0' -> '7' (ids that went through a spreadsheet)."""
    s = str(value).strip()
    if re.fullmatch(r"[+-]?\d+\.0*", s):
        s = s.split(".", 1)[0]
    return s


def subject_id_from_header(header: str) -> str:
    """A listener's id from an EDA column header, as the published tooling does: the six-digit id.

    '100016' -> '100016'; 'subject_100016' / '100016_EDA' / 'S100016' -> '100016'; without a six-digit
    run, a single run of digits ('1001_EDA' -> '1001'); else the stripped header.
    """
    h = header.strip()
    six = re.findall(r"(?<!\d)\d{6}(?!\d)", h)
    if len(six) == 1:
        return six[0]
    runs = re.findall(r"\d+", h)
    if len(runs) == 1:
        return runs[0]
    return h


def _float(cell: str) -> float:
    """A number, or NaN for an empty cell (also 'nan', 'NA'); ValueError for anything else."""
    s = cell.strip()
    if s == "" or s.lower() in ("nan", "na", "n/a", "null", "none"):
        return math.nan
    return float(s)


def _is_number(cell: str) -> bool:
    try:
        return math.isfinite(float(cell.strip()))
    except ValueError:
        return False


def _float_grid(body: Sequence[Sequence[str]], width: int) -> np.ndarray | None:
    """Fast path: cells as float64 [rows, width], NaN for empty or missing cells; None if any cell is not a
    plain number (the caller then finds and names it)."""
    try:
        grid = np.array(
            [[c if c.strip() else "nan" for c in (list(r[:width]) + [""] * (width - len(r)))] for r in body],
            dtype=np.float64,
        )
    except ValueError:
        return None
    return grid.reshape(len(body), width)


_PARSED: OrderedDict[str, dict[str, np.ndarray]] = OrderedDict()
_PARSED_LOCK = threading.Lock()


def parse_signal_csv(text: str, path: str = "", rec: Recording | None = None) -> dict[str, np.ndarray]:
    """A signal CSV as float64 columns of equal length (empty cells -> NaN).

    With a header row, columns keep their (stripped) names. Without one (the first row is all numbers) they
    are named '0', '1', ...; a raw Empatica E4 preamble (a one-cell row with a Unix start time, then a
    one-cell row with the rate) is dropped. Non-numeric cells raise BadRecordingError naming line and column.
    The last few tables are remembered (read-only arrays): a PMEmo file is read once for all its listeners.
    """
    key = hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()
    with _PARSED_LOCK:
        hit = _PARSED.get(key)
        if hit is not None:
            _PARSED.move_to_end(key)
            return dict(hit)
    out = _parse_signal_csv(text, path, rec)
    for arr in out.values():
        arr.flags.writeable = False
    with _PARSED_LOCK:
        _PARSED[key] = out
        while len(_PARSED) > 32:
            _PARSED.popitem(last=False)
    return dict(out)


def _parse_signal_csv(text: str, path: str, rec: Recording | None) -> dict[str, np.ndarray]:
    numbered = [(i + 1, r) for i, r in enumerate(csv.reader(io.StringIO(text))) if any(c.strip() for c in r)]
    if not numbered:
        raise BadRecordingError(rec, path, "signal file is empty")
    first = numbered[0][1]
    if all(_is_number(c) for c in first if c.strip()):
        names = [str(i) for i in range(max(len(r) for _, r in numbered))]
        body = numbered
        if (
            len(body) > 2
            and len(body[0][1]) == 1
            and len(body[1][1]) == 1
            and float(body[0][1][0]) > 1e8
            and 0 < float(body[1][1][0]) <= 10000
        ):
            body = body[2:]
    else:
        names = [h.strip() for h in first]
        body = numbered[1:]
    seen: set[str] = set()
    for name in names:
        if name and name in seen:
            raise BadRecordingError(rec, path, f"column {name!r} appears twice in the header")
        seen.add(name)
    grid = _float_grid([r for _, r in body], len(names))
    if grid is None:  # find the first bad cell, to name it
        for line, r in body:
            for c, name in enumerate(names[: len(r)]):
                try:
                    _float(r[c])
                except ValueError:
                    raise BadRecordingError(
                        rec, path, f"line {line}, column {name!r}: not a number ({r[c]!r})"
                    ) from None
        grid = np.array(
            [[_float(c) for c in (list(r[: len(names)]) + [""] * (len(names) - len(r)))] for _, r in body],
            dtype=np.float64,
        ).reshape(len(body), len(names))
    return {name: np.ascontiguousarray(grid[:, c]) for c, name in enumerate(names)}


def _valid_length(values: np.ndarray) -> int:
    """Length without trailing NaNs."""
    ok = np.flatnonzero(~np.isnan(values))
    return int(ok[-1]) + 1 if ok.size else 0


def pick_value_column(table: dict[str, np.ndarray], wanted: str) -> str | None:
    """The column a fixed-rate file's `wanted` (e.g. 'EDA') names: exact, any case, or the only one."""
    if wanted in table:
        return wanted
    low = {k.lower(): k for k in table}
    if wanted.lower() in low:
        return low[wanted.lower()]
    named = [k for k in table if k]
    if len(named) == 1:
        return named[0]
    if "0" in table and all(k.isdigit() for k in table):  # headerless: the first column
        return "0"
    return None


# ---- listing helpers ----


def _list_root(root: str, kind: str) -> dict[str, remote.FileInfo]:
    try:
        return remote.list_tree(root)
    except remote.RemoteNotFoundError as e:
        raise CorpusError(f"{kind} corpus root not found: {e}") from None


def _find_top(tree: dict[str, remote.FileInfo], suffix: str) -> str | None:
    """A top-level file whose lower-cased name ends with `suffix` (exact name preferred)."""
    tops = [p for p in tree if "/" not in p]
    for p in tops:
        if p.lower() == suffix:
            return p
    cands = sorted(p for p in tops if p.lower().endswith(suffix))
    return cands[0] if cands else None


def _read_table(
    root: str, rel: str, cache_dir: str | None, kind: str
) -> tuple[list[str], list[dict[str, str]]]:
    path = remote.join(root, rel)
    try:
        text = remote.read_text(path, cache_dir)
    except remote.RemoteNotFoundError:
        raise CorpusError(f"{kind}: {remote.redact(path)} not found") from None
    reader = csv.DictReader(io.StringIO(text))
    columns = [(c or "").strip() for c in reader.fieldnames or []]
    reader.fieldnames = columns
    rows = [r for r in reader if any((v or "").strip() for v in r.values() if isinstance(v, str))]
    return columns, rows


def _column(columns: Sequence[str], *aliases: str) -> str | None:
    norm = {re.sub(r"[^a-z0-9]", "", c.lower()): c for c in columns}
    for a in aliases:
        hit = norm.get(re.sub(r"[^a-z0-9]", "", a.lower()))
        if hit:
            return hit
    return None


def _cell(row: dict[str, Any], col: str | None) -> str:
    v = row.get(col) if col else None
    return v.strip() if isinstance(v, str) else ""


# ---- PMEmo2019 ----


@dataclass
class _WideEDA:
    time_header: str
    times: np.ndarray
    columns: list[tuple[str, np.ndarray]]  # (header as written, stripped; values, NaN for empty cells)
    bad_columns: dict[str, str]  # header -> reason (non-numeric cell)


def _parse_wide_eda(text: str) -> _WideEDA:
    """Parse a PMEmo EDA file; ValueError(reason) for problems of the whole file."""
    rows = list(csv.reader(io.StringIO(text)))
    while rows and not any(c.strip() for c in rows[-1]):
        rows.pop()
    if not rows:
        raise ValueError("file is empty")
    header = [h.strip() for h in rows[0]]
    if max(len(r) for r in rows) < 2:
        raise ValueError("no subject columns (only a time column)")
    body = rows[1:]
    if not body:
        raise ValueError("no data rows")
    width = max(len(header), max(len(r) for r in body))
    grid = _float_grid(body, width)
    bad: dict[str, str] = {}
    if grid is None:  # some cell is not a number: find which, column by column
        grid = np.full((len(body), width), np.nan)
        for i, r in enumerate(body):
            for c, cell in enumerate(r[:width]):
                name = header[c] if c < len(header) else ""
                try:
                    grid[i, c] = _float(cell)
                except ValueError:
                    if c == 0:
                        raise ValueError(f"line {i + 2}: time {cell.strip()!r} is not a number") from None
                    bad.setdefault(name, f"line {i + 2}, column {name!r}: not a number ({cell!r})")
    times = grid[:, 0]
    nonfinite = np.flatnonzero(~np.isfinite(times))
    if nonfinite.size:
        i = int(nonfinite[0])
        cell = body[i][0].strip() if body[i] else ""
        raise ValueError(f"line {i + 2}: time {cell!r} is not a number")
    steps = np.diff(times)
    back = np.flatnonzero(steps < 0)
    if back.size:
        i = int(back[0]) + 1
        raise ValueError(f"time goes backwards at line {i + 2} ({times[i - 1]:g} -> {times[i]:g})")
    same = np.flatnonzero(steps == 0)
    if same.size:
        i = int(same[0]) + 1
        raise ValueError(f"time repeats at line {i + 2} ({times[i]:g})")
    columns = []
    for c in range(1, width):
        name = header[c] if c < len(header) else ""
        col = grid[:, c]
        if not name and np.isnan(col).all() and name not in bad:
            continue  # a trailing comma, not a listener
        columns.append((name, col))
    if not columns:
        raise ValueError("no subject columns (only a time column)")
    return _WideEDA(header[0], np.ascontiguousarray(times), columns, bad)


def _music_file_index(tree: dict[str, remote.FileInfo], folder: str) -> dict[str, str]:
    """lower-cased path inside `folder` (any case) -> relative path."""
    out = {}
    for rel in tree:
        head, _, rest = rel.partition("/")
        if head.lower() == folder and rest:
            out[rest.lower()] = rel
    return out


def scan_pmemo2019(
    root: str,
    *,
    name: str = "pmemo2019",
    channels: Sequence[str] = ("eda",),
    on_bad: str = "error",
    cache_dir: str | None = None,
    measure: bool = True,
) -> CorpusScan:
    """List PMEmo2019 under `root` (see the module docstring)."""
    extra = [c for c in channels if c != "eda"]
    if extra:
        raise CorpusError(
            f"dataset {name!r} (pmemo2019) has only the 'eda' channel; config channels {list(channels)}"
        )
    shown = remote.redact(root)
    tree = _list_root(root, "PMEmo2019")
    meta_rel = _find_top(tree, "metadata.csv")
    if meta_rel is None:
        raise CorpusError(
            f"{shown}: no metadata.csv "
            "(PMEmo2019 layout: metadata.csv, chorus/<fileName>, EDA/<musicId>_EDA.csv)"
        )
    columns, meta_rows = _read_table(root, meta_rel, cache_dir, "PMEmo2019")
    id_col = _column(columns, "musicId", "music_id", "musicid", "song_id", "id")
    file_col = _column(columns, "fileName", "file_name", "filename", "file")
    if id_col is None:
        raise CorpusError(f"{remote.join(shown, meta_rel)}: no 'musicId' column (has {columns})")
    chorus = _music_file_index(tree, "chorus")
    eda_files: dict[str, str] = {}
    for rel_lower, rel in _music_file_index(tree, "eda").items():
        m = re.fullmatch(r"(.+?)_eda\.csv", rel_lower)
        if m and "/" not in m.group(1):
            eda_files[_norm_id(m.group(1))] = rel
    eda_dir = next((p.split("/", 1)[0] for p in tree if p.lower().startswith("eda/")), "EDA")
    chorus_dir = next((p.split("/", 1)[0] for p in tree if p.lower().startswith("chorus/")), "chorus")

    col = _Collector(name, root, on_bad)
    scan = CorpusScan("pmemo2019", shown, col.listing, files=tree)
    info = ChannelInfo(rate=None, irregular=False)
    steps: list[float] = []
    songs: set[str] = set()
    seen_music: set[str] = set()
    for row_no, row in enumerate(meta_rows, 1):
        music = _norm_id(_cell(row, id_col))
        if not music:
            col.bad(remote.join(root, meta_rel), f"row {row_no}: empty musicId", row=row_no)
            continue
        if music in seen_music:
            col.bad(remote.join(root, meta_rel), f"row {row_no}: musicId {music} listed twice", row=row_no)
            continue
        seen_music.add(music)
        file_name = _cell(row, file_col) or f"{music}.mp3"
        base = file_name.replace("\\", "/").rsplit("/", 1)[-1]
        audio_rel = chorus.get(base.lower())
        if audio_rel is None and "." not in base:
            audio_rel = next(
                (chorus.get(base.lower() + e) for e in AUDIO_EXTENSIONS if base.lower() + e in chorus), None
            )
        if audio_rel is None:
            col.bad(remote.join(root, chorus_dir, base), "chorus clip missing", row=row_no, rec_id=music)
            continue
        eda_rel = eda_files.get(music)
        if eda_rel is None:
            col.bad(
                remote.join(root, eda_dir, f"{music}_EDA.csv"), "EDA file missing", row=row_no, rec_id=music
            )
            continue
        eda_path = remote.join(root, eda_rel)
        try:
            wide = _parse_wide_eda(remote.read_text(eda_path, cache_dir))
        except ValueError as e:
            col.bad(eda_path, str(e), row=row_no, rec_id=music)
            continue
        dt = np.diff(wide.times)
        if dt.size:
            steps.append(float(np.median(dt)))
            if dt.size > 1 and float(dt.max() - dt.min()) > 1e-6 * max(1.0, float(np.median(dt))):
                info.irregular = True
        info.files += 1
        taken: set[str] = set()
        headers = [h for h, _ in wide.columns]
        for header, values in wide.columns:
            subject = subject_id_from_header(header)
            rec_id = f"{music}_{subject}"
            if header in wide.bad_columns:
                col.bad(eda_path, wide.bad_columns[header], row=row_no, rec_id=rec_id)
                continue
            n_valid = _valid_length(values)
            if n_valid == 0:
                col.quiet_skip(eda_path, f"{LISTENER_MISSING}: {header!r}", row=row_no)
                continue
            if not subject:
                col.bad(
                    eda_path,
                    f"column {len(taken) + 2} has values but no subject id in the header",
                    row=row_no,
                )
                continue
            if subject in taken or headers.count(header) > 1:
                col.bad(
                    eda_path,
                    f"subject {subject} has more than one column ({header!r})",
                    row=row_no,
                    rec_id=rec_id,
                )
                continue
            taken.add(subject)
            gaps = np.flatnonzero(np.isnan(values[:n_valid]))
            if gaps.size:
                col.bad(
                    eda_path,
                    f"column {header!r}: empty cell at line {gaps[0] + 2} inside the recording",
                    row=row_no,
                    rec_id=rec_id,
                )
                continue
            if n_valid < 2:
                col.bad(eda_path, f"column {header!r}: fewer than 2 samples", row=row_no, rec_id=rec_id)
                continue
            rec = Recording(
                dataset=name,
                recording_id=rec_id,
                subject_id=subject,
                audio_path=remote.join(root, audio_rel),
                signals={"eda": SignalSource(eda_path, column=header, time_column=wide.time_header)},
                row=row_no,
                source=shown,
                stimulus_id=music,
            )
            col.listing.recordings.append(rec)
            songs.add(music)
            if measure:
                t = wide.times[:n_valid]
                scan.durations[rec_id] = float(t[-1] + np.median(np.diff(t)))
    unlisted = sorted(set(eda_files) - seen_music, key=lambda s: (len(s), s))
    for music in unlisted:
        col.quiet_skip(remote.join(root, eda_files[music]), f"musicId {music} is not in {meta_rel}")
    if steps:
        info.rate = round(1.0 / float(np.median(steps)), 6)
    scan.channels = {"eda": info}
    scan.songs = len(songs)
    return scan


# ---- HKU956 ----


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
        if not low.endswith(AUDIO_EXTENSIONS):
            continue
        parts = rel.split("/")
        if flat:
            if len(parts) != 1:
                continue
        elif len(parts) < 2 or "audio" not in parts[0].lower():
            continue
        stem = parts[-1].rsplit(".", 1)[0]
        out.setdefault(_norm_id(stem), rel)
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
    shown = remote.redact(root)
    tree = _list_root(root, "HKU956")
    ratings_rel = _find_top(tree, "av_ratings.csv")
    if ratings_rel is None:
        raise CorpusError(
            f"{shown}: no '3. AV_ratings.csv' (HKU956 layout: 3. AV_ratings.csv, 2. original_song_audio.csv, "
            "1. physiological_signals/<participant>/<SIGNAL>/<song_no>_<song_id>.csv)"
        )
    columns, rating_rows = _read_table(root, ratings_rel, cache_dir, "HKU956")
    pid_col = _column(columns, "participant_id", "participant", "subject_id", "subject")
    no_col = _column(columns, "song_no", "songno")
    sid_col = _column(columns, "song_id", "songid")
    dur_col = _column(columns, "play_duration", "playduration")
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
    links_rel = _find_top(tree, "original_song_audio.csv")
    if links_rel is not None and not audio_dir:
        lcols, lrows = _read_table(root, links_rel, cache_dir, "HKU956")
        lid, llink = _column(lcols, "song_id", "songid"), _column(lcols, "link", "url", "audio", "path")
        if lid is None or llink is None:
            raise CorpusError(
                f"{remote.join(shown, links_rel)}: needs columns 'song_id' and 'link' (has {lcols})"
            )
        for r in lrows:
            sid, link = _norm_id(_cell(r, lid)), _cell(r, llink)
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

    col = _Collector(name, root, on_bad)
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
            _norm_id(_cell(row, pid_col)),
            _norm_id(_cell(row, no_col)),
            _norm_id(_cell(row, sid_col)),
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
        duration = _seconds(_cell(row, dur_col)) if dur_col else None
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
        secs = min(secs, _valid_length(table[key]) / float(src.rate or 1.0))
    return secs


# ---- adapters for the data layer ----


def _scan_for(ds: Any, data: Any, measure: bool = False) -> CorpusScan:
    kwargs = dict(
        name=ds.name, channels=list(data.channels), on_bad=data.on_bad_recording, cache_dir=data.cache_dir
    )
    if ds.type == DatasetType.pmemo2019:
        return scan_pmemo2019(ds.root, measure=measure, **kwargs)
    if ds.type == DatasetType.hku956:
        return scan_hku956(
            ds.root, audio_dir=ds.audio_dir, signal_rates=dict(ds.signal_rates), measure=measure, **kwargs
        )
    raise CorpusError(f"dataset {ds.name!r}: type {ds.type!r} is not a published-layout corpus")


def list_pmemo2019(ds: Any, data: Any) -> Listing:
    """Adapter for DatasetType.pmemo2019: `list_recordings(ds, data) -> Listing`."""
    return _scan_for(ds, data).listing


def list_hku956(ds: Any, data: Any) -> Listing:
    """Adapter for DatasetType.hku956: `list_recordings(ds, data) -> Listing`."""
    return _scan_for(ds, data).listing


SCANNERS: dict[str, Callable[..., CorpusScan]] = {"pmemo2019": scan_pmemo2019, "hku956": scan_hku956}


def scan_corpus(
    root: str,
    type: str,
    *,
    channels: Iterable[str] | None = None,
    on_bad: str = "skip",
    cache_dir: str | None = None,
    measure: bool = True,
    **kwargs: Any,
) -> CorpusScan:
    """Scan a corpus for the `a2b corpus` summary (bad records are listed, not raised, by default)."""
    t = str(getattr(type, "value", type)).lower()
    if t not in SCANNERS:
        raise CorpusError(f"unknown corpus type {type!r}; expected one of {sorted(SCANNERS)}")
    ch = list(channels) if channels else ["eda"]
    return SCANNERS[t](root, channels=ch, on_bad=on_bad, cache_dir=cache_dir, measure=measure, **kwargs)


def register() -> None:
    """Register both adapters with the data layer's `list_recordings` dispatch."""
    from a2b_pipeline.data.adapters import register_adapter

    register_adapter(DatasetType.pmemo2019, list_pmemo2019)
    register_adapter(DatasetType.hku956, list_hku956)
