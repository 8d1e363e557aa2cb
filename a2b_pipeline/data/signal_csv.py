"""Time-stamped signal files as float64 columns: the reader every corpus type shares.

A signal CSV has a header row (columns keep their stripped names) or none (the first row is all numbers:
columns '0', '1', ...; a raw Empatica E4 preamble of start time and rate is dropped). Empty cells are NaN
(a wide file's listener may stop early); other non-numbers raise BadRecordingError naming line and column.
"""

from __future__ import annotations

import csv
import hashlib
import io
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


def _bounded_lines(text: str, path: str, rec: Recording | None) -> Iterator[str]:
    """The lines of `text`, refusing one too long to be a signal row before the csv module splits it: a
    300 MB single-line file would become tens of millions of cell strings (gigabytes) first."""
    for number, line in enumerate(io.StringIO(text), 1):
        if len(line) > MAX_LINE_CHARS:
            raise BadRecordingError(
                rec, path, f"line {number} is {len(line)} characters long: not a signal table (rows > 1 MiB)"
            )
        yield line


def _parse_signal_csv(text: str, path: str, rec: Recording | None) -> dict[str, np.ndarray]:
    reader = csv.reader(_bounded_lines(text, path, rec))
    try:
        numbered = [(i + 1, r) for i, r in enumerate(reader) if any(c.strip() for c in r)]
    except csv.Error as e:  # e.g. a cell over the csv module's size limit
        raise BadRecordingError(rec, path, f"line {reader.line_num + 1}: not a readable CSV ({e})") from None
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
    grid = float_grid([r for _, r in body], len(names))
    if grid is None:  # find the first bad cell, to name it
        for line, r in body:
            for c, name in enumerate(names[: len(r)]):
                try:
                    parse_float(r[c])
                except ValueError:
                    raise BadRecordingError(
                        rec, path, f"line {line}, column {name!r}: not a number ({r[c]!r})"
                    ) from None
        grid = np.array(
            [
                [parse_float(c) for c in (list(r[: len(names)]) + [""] * (len(names) - len(r)))]
                for _, r in body
            ],
            dtype=np.float64,
        ).reshape(len(body), len(names))
    return {name: np.ascontiguousarray(grid[:, c]) for c, name in enumerate(names)}


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
