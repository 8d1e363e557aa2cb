"""Helpers the published-layout corpus types share: listing a root, reading its tables, finding columns,
and applying `on_bad_recording` while scanning.

Roots may be local folders or fsspec URLs (``s3://bucket/prefix``): each is listed once, files are fetched
through :mod:`a2b_pipeline.data.remote` (cached by URL + ETag + size).

Problems name the file (and the metadata row): with ``data.on_bad_recording: error`` the first one raises
``BadRecordingError``; with ``skip`` each becomes a ``Skipped`` entry. A missing root, metadata file or
required column is a ``CorpusError`` either way.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from a2b_pipeline.data import remote
from a2b_pipeline.data.corpora import CorpusError
from a2b_pipeline.data.recording import BadRecordingError, Listing, Recording, Skipped

AUDIO_EXTENSIONS = (".mp3", ".wav", ".flac", ".ogg")


class Collector:
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


def norm_id(value: Any) -> str:
    """'7' / ' 7 ' / '7.0' -> '7' (ids that went through a spreadsheet)."""
    s = str(value).strip()
    if re.fullmatch(r"[+-]?\d+\.0*", s):
        s = s.split(".", 1)[0]
    return s


def list_root(root: str, kind: str) -> dict[str, remote.FileInfo]:
    try:
        return remote.list_tree(root)
    except remote.RemoteNotFoundError as e:
        raise CorpusError(f"{kind} corpus root not found: {e}") from None


def find_top(tree: dict[str, remote.FileInfo], suffix: str) -> str | None:
    """A top-level file whose lower-cased name ends with `suffix` (exact name preferred)."""
    tops = [p for p in tree if "/" not in p]
    for p in tops:
        if p.lower() == suffix:
            return p
    cands = sorted(p for p in tops if p.lower().endswith(suffix))
    return cands[0] if cands else None


@dataclass
class Index:
    """A listed root and its index table (PMEmo's metadata.csv, HKU956's AV ratings)."""

    shown: str  # the root for messages (credentials redacted)
    tree: dict[str, remote.FileInfo]  # relative path -> size + ETag/mtime
    rel: str  # the index table's relative path
    columns: list[str]
    rows: list[dict[str, str]]


def read_index(root: str, kind: str, suffix: str, missing: str, cache_dir: str | None) -> Index:
    """List `root` and read its top-level table whose name ends with `suffix`; CorpusError `missing` (after
    the root) when there is none."""
    shown = remote.redact(root)
    tree = list_root(root, kind)
    rel = find_top(tree, suffix)
    if rel is None:
        raise CorpusError(f"{shown}: {missing}")
    columns, rows = read_table(root, rel, cache_dir, kind)
    return Index(shown, tree, rel, columns, rows)


def read_table(
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


def find_column(columns: Sequence[str], *aliases: str) -> str | None:
    norm = {re.sub(r"[^a-z0-9]", "", c.lower()): c for c in columns}
    for a in aliases:
        hit = norm.get(re.sub(r"[^a-z0-9]", "", a.lower()))
        if hit:
            return hit
    return None


def cell_text(row: dict[str, Any], col: str | None) -> str:
    v = row.get(col) if col else None
    return v.strip() if isinstance(v, str) else ""
