"""Corpus manifests: one row per recording, CSV (with a header) or JSONL (one object per line).

Columns: recording_id, subject_id, audio_path, signal_path; optional offset_seconds (the signal's t=0 is at
this second of the audio), duration_seconds (usable length), signal_rate (Hz, for signal files without a
`time` column), stimulus_id (the song or clip heard: recordings of one stimulus by different listeners
share it; used by stimulus-grouped splits and the other_listeners baseline). Relative paths are relative
to the manifest's folder (or URL), and must stay inside it (symlinks followed) unless the config allows
outside paths; an absolute URL needs a scheme the config allows (Confinement).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import posixpath
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import soundfile as sf

from a2b_pipeline.data.audio import open_binary
from a2b_pipeline.data.recording import Listing, Recording, SignalSource, Skipped
from a2b_pipeline.data.remote import has_scheme, to_local_path
from a2b_pipeline.security import redact_text

REQUIRED = ("recording_id", "subject_id", "audio_path", "signal_path")
OPTIONAL = ("offset_seconds", "duration_seconds", "signal_rate", "stimulus_id")


class ManifestError(ValueError):
    """A manifest that can't be used; the message names the file, and the row and column when it can."""

    def __init__(self, message: str):
        super().__init__(redact_text(message))  # a URL's credentials never reach a message


def _read_rows(path: str) -> list[dict[str, Any]]:
    try:
        with open_binary(path) as f:
            text = f.read().decode("utf-8-sig")
    except FileNotFoundError:
        raise ManifestError(f"manifest not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ManifestError(f"{path}: cannot read manifest ({e})") from None
    if path.lower().endswith((".jsonl", ".ndjson")):
        rows = []
        for line_no, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ManifestError(f"{path}, line {line_no}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ManifestError(
                    f"{path}, line {line_no}: expected a JSON object, got {type(row).__name__}"
                )
            rows.append(row)
        columns = sorted({k for r in rows for k in r})
        missing = [c for c in REQUIRED if not any(c in r for r in rows)]
    else:
        reader = csv.DictReader(io.StringIO(text))
        try:
            columns = [c.strip() for c in reader.fieldnames or []]
        except csv.Error as e:  # the header itself: nothing can be read
            raise ManifestError(f"{path}, line 1: not a readable CSV manifest ({e})") from None
        reader.fieldnames = columns
        rows = _csv_rows(reader)
        missing = [c for c in REQUIRED if c not in columns]
    if missing:
        raise ManifestError(f"{path}: missing column(s) {missing} (has {columns})")
    if not rows:
        raise ManifestError(f"{path}: manifest has no rows")
    return rows


ROW_ERROR = "\0row_error"  # a row the csv module could not split: its error, reported as that row's


def _csv_rows(reader: csv.DictReader) -> list[dict[str, Any]]:
    """The non-empty rows; one the csv module refuses (a cell over its size limit) becomes a row holding
    the error, so skip mode skips that row alone and error mode names it (the reader goes on after it)."""
    rows: list[dict[str, Any]] = []
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return rows
        except csv.Error as e:
            rows.append({ROW_ERROR: f"line {reader.line_num + 1}: not a readable CSV row ({e})"})
            continue
        if any((v or "").strip() for v in row.values() if isinstance(v, str)):
            rows.append(row)


class Confinement:
    """Where a manifest's rows may point. A manifest is data from elsewhere: its paths stay under its own
    folder (`base`), following symlinks, unless the config allows outside paths; an absolute URL only with
    a scheme the config lists (`data.url_schemes`)."""

    def __init__(self, base: str, allow_outside: bool = False, url_schemes: Sequence[str] = ()):
        self.base = base
        self.allow_outside = allow_outside
        self.url_schemes = {s.lower() for s in url_schemes}
        self._real_base = None if has_scheme(base) else os.path.realpath(base)

    def resolve(self, col: str, p: str) -> str:
        """The path or URL a row's `col` value names; ValueError (naming the column) when it may not."""
        p = to_local_path(p)
        if has_scheme(p):
            scheme = p.split("://", 1)[0].lower()
            if scheme not in self.url_schemes:
                allowed = sorted(self.url_schemes) or "none"
                raise ValueError(
                    f"column {col!r}: URL scheme {scheme!r} is not allowed ({redact_text(p)}; "
                    f"data.url_schemes: {allowed})"
                )
            return p
        if has_scheme(self.base):  # a relative path under a remote manifest: no way out of its folder
            rel = posixpath.normpath(p)
            if not self.allow_outside and (os.path.isabs(p) or rel == ".." or rel.startswith("../")):
                raise ValueError(self._outside(col, p))
            return p if os.path.isabs(p) else posixpath.join(self.base, rel)
        path = os.path.normpath(os.path.join(self.base, p))  # an absolute p stays as it is
        if not self.allow_outside:
            real = os.path.realpath(path)  # symlinks followed: a link out of the folder is outside
            if os.path.commonpath([real, self._real_base]) != self._real_base:
                raise ValueError(self._outside(col, p))
        return path

    def _outside(self, col: str, p: str) -> str:
        return (
            f"column {col!r}: {p} is outside the manifest's folder {redact_text(self.base)} "
            "(set data.allow_outside_paths: true to read it)"
        )


def _text(row: dict[str, Any], col: str) -> str:
    v = row.get(col)
    if v is None or (isinstance(v, str) and not v.strip()):
        raise ValueError(f"column {col!r}: missing or empty")
    return str(v).strip()


def _optional_text(row: dict[str, Any], col: str) -> str | None:
    v = row.get(col)
    return None if v is None or not str(v).strip() else str(v).strip()


def _number(row: dict[str, Any], col: str, *, positive: bool = False) -> float | None:
    v = row.get(col)
    if v is None or (isinstance(v, str) and not v.strip()):
        return None
    try:
        x = float(v)
    except (TypeError, ValueError):
        x = math.nan
    if not math.isfinite(x) or (positive and x <= 0):
        kind = "a positive number" if positive else "a finite number"
        raise ValueError(f"column {col!r}: not {kind} ({v!r})")
    return x


def signal_columns(path: str) -> list[str]:
    """Column names of a signal file (CSV header, or .npz keys)."""
    with open_binary(path) as f:
        if path.lower().endswith(".npz"):
            with np.load(io.BytesIO(f.read()), allow_pickle=False) as z:
                return list(z.files)
        return [c.strip() for c in f.readline().decode("utf-8-sig").strip().split(",")]


def read_manifest_listing(
    path_or_url: str,
    dataset_name: str,
    *,
    channels: Sequence[str] | None = None,
    on_bad: Literal["error", "skip"] = "error",
    allow_outside: bool = False,
    url_schemes: Sequence[str] = (),
) -> Listing:
    """Recordings of a manifest. File-level problems (not found, missing columns, no rows) always raise
    ManifestError; row-level ones (empty or bad values, duplicate ids, missing local files) raise in
    "error" mode and become Skipped entries in "skip" mode.

    `allow_outside`, `url_schemes`: data.allow_outside_paths and data.url_schemes (see Confinement).
    `channels`: config channel names, each read from the signal file's column of that name; None reads the
    channels from the signal files' headers (every column but `time`).
    """
    path = str(path_or_url)
    rows = _read_rows(path)
    base = posixpath.dirname(path) if has_scheme(path) else os.path.dirname(os.path.abspath(path))
    confine = Confinement(base, allow_outside, url_schemes)
    listing = Listing()
    seen: set[str] = set()
    for i, row in enumerate(rows, 1):
        try:
            if ROW_ERROR in row:
                raise ValueError(row[ROW_ERROR])
            rid = _text(row, "recording_id")
            if rid in seen:
                raise ValueError(f"column 'recording_id': duplicate id {rid!r}")
            audio = confine.resolve("audio_path", _text(row, "audio_path"))
            signal = confine.resolve("signal_path", _text(row, "signal_path"))
            for col, p in (("audio_path", audio), ("signal_path", signal)):
                if not has_scheme(p) and not os.path.isfile(p):
                    raise ValueError(f"column {col!r}: file not found: {p}")
            rate = _number(row, "signal_rate", positive=True)
            time_col = None if rate else "time"
            names = (
                list(channels) if channels is not None else [c for c in signal_columns(signal) if c != "time"]
            )
            rec = Recording(
                dataset=dataset_name,
                recording_id=rid,
                subject_id=_text(row, "subject_id"),
                audio_path=audio,
                signals={c: SignalSource(signal, c, time_col, rate) for c in names},
                offset_seconds=_number(row, "offset_seconds") or 0.0,
                duration_seconds=_number(row, "duration_seconds", positive=True),
                row=i,
                source=path,
                stimulus_id=_optional_text(row, "stimulus_id"),
            )
        except (ValueError, OSError) as e:  # OSError: a remote signal file's header couldn't be read
            msg = f"{path}, row {i}: {e}"
            if on_bad == "error":
                raise ManifestError(msg) from None
            listing.skipped.append(Skipped(path=path, reason=msg, row=i, dataset=dataset_name))
            continue
        seen.add(rid)
        listing.recordings.append(rec)
    return listing


def read_manifest(
    path_or_url: str, dataset_name: str, *, channels: Sequence[str] | None = None
) -> list[Recording]:
    """All recordings of a manifest; any problem raises ManifestError naming file, row and column."""
    return read_manifest_listing(path_or_url, dataset_name, channels=channels).recordings


def summarize_manifest(path: str) -> dict[str, Any]:
    """Counts for a human: recordings, subjects, hours of audio, channels (from the signal files)."""
    recs = read_manifest(path, "summary")
    seconds = 0.0
    for r in recs:
        with open_binary(r.audio_path) as f:
            seconds += sf.info(f).duration
    channels = sorted({c for r in recs for c in r.signals})
    return {
        "manifest": str(path),
        "recordings": len(recs),
        "subjects": len({r.subject_id for r in recs}),
        "hours": seconds / 3600.0,
        "channels": channels,
    }
