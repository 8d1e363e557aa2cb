"""Time-stamped signal files as float64 columns: the reader every corpus type shares.

A signal CSV has a header row (columns keep their stripped names) or none (the first row is all numbers:
columns '0', '1', ...; a raw Empatica E4 preamble of start time and rate is dropped). Empty cells are NaN
(a wide file's listener may stop early); other non-numbers raise BadRecordingError naming line and column.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import math
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence

import numpy as np

from a2b_pipeline.data.recording import BadRecordingError, Recording

__all__ = [
    "float_grid",
    "parse_float",
    "parse_signal_csv",
    "pick_value_column",
    "valid_length",
]


def parse_float(cell: str) -> float:
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


def float_grid(body: Sequence[Sequence[str]], width: int) -> np.ndarray | None:
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


MAX_LINE_CHARS = 1 << 20  # a signal row is a time and a few values (a wide file: a few hundred listeners)
BLOCK_ROWS = 1 << 12  # rows turned into floats at a time: only one block's cell strings are ever alive


def _bounded_lines(text: str, path: str, rec: Recording | None) -> Iterator[str]:
    """The lines of `text`, sliced one at a time (io.StringIO held a 4-byte-per-character copy of the whole
    file), refusing one too long to be a signal row before the csv module splits it: a 300 MB single-line
    file would become tens of millions of cell strings (gigabytes) first."""
    start, number = 0, 0
    while start < len(text):
        end = text.find("\n", start)
        end = len(text) if end < 0 else end + 1
        number += 1
        if end - start > MAX_LINE_CHARS:
            why = f"line {number} is {end - start} characters long: not a signal table (rows > 1 MiB)"
            raise BadRecordingError(rec, path, why)
        yield text[start:end]
        start = end


Row = tuple[int, list[str]]  # (line number, cells)


def _parse_signal_csv(text: str, path: str, rec: Recording | None) -> dict[str, np.ndarray]:
    reader = csv.reader(_bounded_lines(text, path, rec))
    rows: Iterator[Row] = ((reader.line_num, r) for r in reader if any(c.strip() for c in r))
    try:
        return _read_table(rows, path, rec)
    except csv.Error as e:  # e.g. a cell over the csv module's size limit
        raise BadRecordingError(rec, path, f"line {reader.line_num + 1}: not a readable CSV ({e})") from None


def _read_table(rows: Iterator[Row], path: str, rec: Recording | None) -> dict[str, np.ndarray]:
    """The non-empty rows as float64 columns, a block of rows at a time (memory: the floats, not the
    cells as strings: a 300 MB file took 3.5 GB that way)."""
    head = list(itertools.islice(rows, 3))
    if not head:
        raise BadRecordingError(rec, path, "signal file is empty")
    first = head[0][1]
    names: list[str] | None = None  # None: headerless, named '0', '1', ... by the widest row
    if all(_is_number(c) for c in first if c.strip()):
        if _e4_preamble(head):
            head = head[2:]
    else:
        names = [h.strip() for h in first]
        head = head[1:]
        seen: set[str] = set()
        for name in names:
            if name and name in seen:
                raise BadRecordingError(rec, path, f"column {name!r} appears twice in the header")
            seen.add(name)
    blocks, width = [], len(names) if names is not None else 0
    body = itertools.chain(head, rows)
    while block := list(itertools.islice(body, BLOCK_ROWS)):
        if names is None:
            width = max(width, *(len(r) for _, r in block))
        blocks.append(_block_floats(block, names or [str(i) for i in range(width)], path, rec))
    names = names if names is not None else [str(i) for i in range(width)]
    # One column per row of `grid` (each column a contiguous view, no copy), filled a block at a time while
    # the blocks are let go: memory holds the floats about once, not blocks + grid + columns.
    grid = np.empty((len(names), sum(len(b) for b in blocks)))
    at = 0
    blocks.reverse()
    while blocks:
        b = blocks.pop()
        grid[: b.shape[1], at : at + len(b)] = b.T
        grid[b.shape[1] :, at : at + len(b)] = np.nan  # a headerless block narrower than the widest row
        at += len(b)
    return {name: grid[c] for c, name in enumerate(names)}


def _e4_preamble(head: list[Row]) -> bool:
    """A raw Empatica E4 file: a one-cell row with a Unix start time, then a one-cell row with the rate."""
    return (
        len(head) > 2
        and len(head[0][1]) == 1
        and len(head[1][1]) == 1
        and float(head[0][1][0]) > 1e8
        and 0 < float(head[1][1][0]) <= 10000
    )


def _block_floats(block: list[Row], names: list[str], path: str, rec: Recording | None) -> np.ndarray:
    """Rows as float64 [rows, len(names)]; BadRecordingError naming the first cell that is not a number."""
    grid = float_grid([r for _, r in block], len(names))
    if grid is not None:
        return grid
    for line, r in block:  # find the first bad cell, to name it
        for c, name in enumerate(names[: len(r)]):
            try:
                parse_float(r[c])
            except ValueError:
                why = f"line {line}, column {name!r}: not a number ({r[c]!r})"
                raise BadRecordingError(rec, path, why) from None
    return np.array(
        [[parse_float(c) for c in (list(r[: len(names)]) + [""] * (len(names) - len(r)))] for _, r in block],
        dtype=np.float64,
    ).reshape(len(block), len(names))


def valid_length(values: np.ndarray) -> int:
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
