"""PMEmo2019 in its published layout -> the same Recordings a manifest gives.

``root`` is the folder that holds ``metadata.csv``::

    metadata.csv              musicId, fileName, ... (extra columns ignored)
    chorus/<fileName>         the chorus clip (mp3, 44.1 kHz stereo); ``Chorus/`` works too
    EDA/<musicId>_EDA.csv     first column: time in seconds (any header, grid may be irregular);
                              then one column per listener, header = subject id, possibly with a prefix
                              or suffix ("subject_100016", "100016_EDA"): the six-digit id is kept

One recording per (musicId, listener); time 0 is the start of the clip. A listener column that is
entirely empty means that listener didn't hear that song: the pair is skipped quietly (counted and listed
as skipped, never an error). Cells left empty at the END of a column (a listener whose recording stopped
early) shorten that recording.

Remote roots and bad records are handled as for every published layout (see ``_layout.py``).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from a2b_pipeline.data import remote
from a2b_pipeline.data.corpora import ChannelInfo, CorpusError, CorpusScan, CorpusType
from a2b_pipeline.data.corpora import _layout as layout
from a2b_pipeline.data.recording import Recording, SignalSource
from a2b_pipeline.data.signal_csv import float_grid, parse_float, valid_length

__all__ = ["CORPUS", "scan_pmemo2019", "subject_id_from_header"]

LISTENER_MISSING = "listener missing (empty column)"


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
    grid = float_grid(body, width)
    bad: dict[str, str] = {}
    if grid is None:  # some cell is not a number: find which, column by column
        grid = np.full((len(body), width), np.nan)
        for i, r in enumerate(body):
            for c, cell in enumerate(r[:width]):
                name = header[c] if c < len(header) else ""
                try:
                    grid[i, c] = parse_float(cell)
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
    index = layout.read_index(
        root,
        "PMEmo2019",
        "metadata.csv",
        "no metadata.csv (PMEmo2019 layout: metadata.csv, chorus/<fileName>, EDA/<musicId>_EDA.csv)",
        cache_dir,
    )
    shown, tree, meta_rel, columns, meta_rows = index.shown, index.tree, index.rel, index.columns, index.rows
    id_col = layout.find_column(columns, "musicId", "music_id", "musicid", "song_id", "id")
    file_col = layout.find_column(columns, "fileName", "file_name", "filename", "file")
    if id_col is None:
        raise CorpusError(f"{remote.join(shown, meta_rel)}: no 'musicId' column (has {columns})")
    chorus = _music_file_index(tree, "chorus")
    eda_files: dict[str, str] = {}
    for rel_lower, rel in _music_file_index(tree, "eda").items():
        m = re.fullmatch(r"(.+?)_eda\.csv", rel_lower)
        if m and "/" not in m.group(1):
            eda_files[layout.norm_id(m.group(1))] = rel
    eda_dir = next((p.split("/", 1)[0] for p in tree if p.lower().startswith("eda/")), "EDA")
    chorus_dir = next((p.split("/", 1)[0] for p in tree if p.lower().startswith("chorus/")), "chorus")

    col = layout.Collector(name, root, on_bad)
    scan = CorpusScan("pmemo2019", shown, col.listing, files=tree)
    info = ChannelInfo(rate=None, irregular=False)
    steps: list[float] = []
    songs: set[str] = set()
    seen_music: set[str] = set()
    for row_no, row in enumerate(meta_rows, 1):
        music = layout.norm_id(layout.cell_text(row, id_col))
        if not music:
            col.bad(remote.join(root, meta_rel), f"row {row_no}: empty musicId", row=row_no)
            continue
        if music in seen_music:
            col.bad(remote.join(root, meta_rel), f"row {row_no}: musicId {music} listed twice", row=row_no)
            continue
        seen_music.add(music)
        file_name = layout.cell_text(row, file_col) or f"{music}.mp3"
        base = file_name.replace("\\", "/").rsplit("/", 1)[-1]
        audio_rel = chorus.get(base.lower())
        if audio_rel is None and "." not in base:
            audio_rel = next(
                (chorus.get(base.lower() + e) for e in layout.AUDIO_EXTENSIONS if base.lower() + e in chorus),
                None,
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
            n_valid = valid_length(values)
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


CORPUS = CorpusType(name="pmemo2019", sources=("root",), scan=scan_pmemo2019)
