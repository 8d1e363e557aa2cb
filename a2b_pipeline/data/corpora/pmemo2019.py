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
from dataclasses import dataclass, field

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


@dataclass
class _Files:
    """Where a PMEmo2019 tree keeps its clips and EDA files (folder names in any case)."""

    chorus: dict[str, str]  # lower-cased file name -> relative path
    eda: dict[str, str]  # musicId -> relative path of <musicId>_EDA.csv
    chorus_dir: str
    eda_dir: str

    @classmethod
    def index(cls, tree: dict[str, remote.FileInfo]) -> _Files:
        eda: dict[str, str] = {}
        for rel_lower, rel in _music_file_index(tree, "eda").items():
            m = re.fullmatch(r"(.+?)_eda\.csv", rel_lower)
            if m and "/" not in m.group(1):
                eda[layout.norm_id(m.group(1))] = rel
        return cls(
            chorus=_music_file_index(tree, "chorus"),
            eda=eda,
            chorus_dir=next((p.split("/", 1)[0] for p in tree if p.lower().startswith("chorus/")), "chorus"),
            eda_dir=next((p.split("/", 1)[0] for p in tree if p.lower().startswith("eda/")), "EDA"),
        )

    def clip(self, base: str) -> str | None:
        """The clip a metadata fileName names (an extension may be left out)."""
        rel = self.chorus.get(base.lower())
        if rel is None and "." not in base:
            rel = next(
                (
                    self.chorus[base.lower() + e]
                    for e in layout.AUDIO_EXTENSIONS
                    if base.lower() + e in self.chorus
                ),
                None,
            )
        return rel


@dataclass
class _Scan:
    """One scan of a PMEmo2019 root: a song per metadata row, a recording per listener column."""

    root: str
    name: str
    cache_dir: str | None
    measure: bool
    files: _Files
    col: layout.Collector
    scan: CorpusScan
    info: ChannelInfo = field(default_factory=lambda: ChannelInfo(rate=None, irregular=False))
    steps: list[float] = field(default_factory=list)  # median sampling interval per file
    songs: set[str] = field(default_factory=set)

    def song(self, row_no: int, music: str, file_name: str) -> None:
        """The listeners of one metadata row's song (problems go to the collector)."""
        base = file_name.replace("\\", "/").rsplit("/", 1)[-1]
        audio_rel = self.files.clip(base)
        if audio_rel is None:
            where = remote.join(self.root, self.files.chorus_dir, base)
            self.col.bad(where, "chorus clip missing", row=row_no, rec_id=music)
            return
        eda_rel = self.files.eda.get(music)
        if eda_rel is None:
            where = remote.join(self.root, self.files.eda_dir, f"{music}_EDA.csv")
            self.col.bad(where, "EDA file missing", row=row_no, rec_id=music)
            return
        eda_path = remote.join(self.root, eda_rel)
        try:
            wide = _parse_wide_eda(remote.read_text(eda_path, self.cache_dir))
        except ValueError as e:
            self.col.bad(eda_path, str(e), row=row_no, rec_id=music)
            return
        self.note_grid(wide.times)
        for header, n_valid in self.listeners(wide, eda_path, row_no, music):
            subject = subject_id_from_header(header)
            rec_id = f"{music}_{subject}"
            rec = Recording(
                dataset=self.name,
                recording_id=rec_id,
                subject_id=subject,
                audio_path=remote.join(self.root, audio_rel),
                signals={"eda": SignalSource(eda_path, column=header, time_column=wide.time_header)},
                row=row_no,
                source=self.scan.root,
                stimulus_id=music,
            )
            self.col.listing.recordings.append(rec)
            self.songs.add(music)
            if self.measure:
                t = wide.times[:n_valid]
                self.scan.durations[rec_id] = float(t[-1] + np.median(np.diff(t)))

    def note_grid(self, times: np.ndarray) -> None:
        dt = np.diff(times)
        if dt.size:
            self.steps.append(float(np.median(dt)))
            if dt.size > 1 and float(dt.max() - dt.min()) > 1e-6 * max(1.0, float(np.median(dt))):
                self.info.irregular = True
        self.info.files += 1

    def listeners(self, wide: _WideEDA, eda_path: str, row_no: int, music: str) -> list[tuple[str, int]]:
        """(header, samples) of the usable listener columns; the others are reported or skipped quietly."""
        usable: list[tuple[str, int]] = []
        taken: set[str] = set()
        headers = [h for h, _ in wide.columns]
        for header, values in wide.columns:
            subject = subject_id_from_header(header)
            rec_id = f"{music}_{subject}"
            n_valid = valid_length(values)
            gaps = np.flatnonzero(np.isnan(values[:n_valid]))
            if header in wide.bad_columns:
                problem = wide.bad_columns[header]
            elif n_valid == 0:
                self.col.quiet_skip(eda_path, f"{LISTENER_MISSING}: {header!r}", row=row_no)
                continue
            elif not subject:
                self.col.bad(
                    eda_path,
                    f"column {len(taken) + 2} has values but no subject id in the header",
                    row=row_no,
                )
                continue
            elif subject in taken or headers.count(header) > 1:
                problem = f"subject {subject} has more than one column ({header!r})"
            else:
                taken.add(subject)
                if gaps.size:
                    problem = f"column {header!r}: empty cell at line {gaps[0] + 2} inside the recording"
                elif n_valid < 2:
                    problem = f"column {header!r}: fewer than 2 samples"
                else:
                    usable.append((header, n_valid))
                    continue
            self.col.bad(eda_path, problem, row=row_no, rec_id=rec_id)
        return usable


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
    id_col = layout.find_column(index.columns, "musicId", "music_id", "musicid", "song_id", "id")
    file_col = layout.find_column(index.columns, "fileName", "file_name", "filename", "file")
    if id_col is None:
        raise CorpusError(f"{remote.join(index.shown, index.rel)}: no 'musicId' column (has {index.columns})")
    col = layout.Collector(name, root, on_bad)
    scan = CorpusScan("pmemo2019", index.shown, col.listing, files=index.tree)
    run = _Scan(root, name, cache_dir, measure, _Files.index(index.tree), col, scan)
    meta_path = remote.join(root, index.rel)
    seen_music: set[str] = set()
    for row_no, row in enumerate(index.rows, 1):
        music = layout.norm_id(layout.cell_text(row, id_col))
        if not music:
            col.bad(meta_path, f"row {row_no}: empty musicId", row=row_no)
        elif music in seen_music:
            col.bad(meta_path, f"row {row_no}: musicId {music} listed twice", row=row_no)
        else:
            seen_music.add(music)
            run.song(row_no, music, layout.cell_text(row, file_col) or f"{music}.mp3")
    for music in sorted(set(run.files.eda) - seen_music, key=lambda s: (len(s), s)):
        col.quiet_skip(remote.join(root, run.files.eda[music]), f"musicId {music} is not in {index.rel}")
    if run.steps:
        run.info.rate = round(1.0 / float(np.median(run.steps)), 6)
    scan.channels = {"eda": run.info}
    scan.songs = len(run.songs)
    return scan


CORPUS = CorpusType(name="pmemo2019", sources=("root",), scan=scan_pmemo2019)
