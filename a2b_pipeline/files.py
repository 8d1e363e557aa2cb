"""Files, written whole and read bounded (no torch here: the Dagster definitions import it while loading).

atomic_write / atomic_path: readers see the old file or the new one, never half of one. open_regular /
read_bounded / read_json: the one way files from run directories, caches and corpora are read (regular files
only, size capped, JSON nesting limited), so a FIFO, a link to /dev/zero or a gigabyte report never hangs or
floods a command."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import stat
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary sibling of `path` for the block to write (by name: a CSV writer, soundfile, a download);
    when the block ends without error it is synced and renamed onto `path`, else deleted. Readers see the
    old file or the new one, never half of one. The temporary name starts with a dot and ends in `.tmp`
    (listings and caches skip such names; a run directory's lock clears them as crash debris), and the file
    gets the permissions open() gives (the umask's): a corpus or a report is read by others too."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: Path, blob: bytes) -> None:
    """Write `path` whole (atomic_path): the one way the pipeline writes a file others may be reading."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(blob)


class FileRefusedError(OSError, ValueError):
    """A file that is not read: not a regular file (a FIFO, a device, a directory, a symlink), too big for
    what it should hold, nested too deeply, or unreadable. The message names the file."""


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n} bytes"


def open_regular(
    path: str | os.PathLike[str],
    limit: int | None = None,
    why: str = "too big for its kind",
    *,
    follow_symlinks: bool = False,
):
    """A binary file object for `path`, which must be a regular file (no FIFO, device or directory; a
    symlink as the last component is refused unless `follow_symlinks`: a corpus may link its files, whose
    containment its reader checks) of at most `limit` bytes. Opened without blocking (a FIFO
    would block in open()) and checked on the open descriptor, so nothing swapped in between is read. An
    OSError (like io.UnsupportedOperation) so that readers' handling of unreadable files covers it."""
    try:
        nofollow = 0 if follow_symlinks else os.O_NOFOLLOW
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | nofollow | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as e:
        if e.errno == errno.ELOOP:  # the last component is a symlink
            raise FileRefusedError(f"{path}: a symlink, not a regular file: refused") from None
        raise
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, "is a directory", str(path))
        if not stat.S_ISREG(st.st_mode):
            raise FileRefusedError(f"{path}: not a regular file (a FIFO, device or directory): refused")
        if limit is not None and st.st_size > limit:
            raise FileRefusedError(f"{path}: larger than {_size(limit)}, {why}: refused")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bounded(path: str | os.PathLike[str], limit: int, why: str = "too big for its kind") -> bytes:
    """The bytes of a regular file of at most `limit` bytes (see open_regular); a file that grows while
    being read is refused too. The one reader of files from run directories, caches and corpora."""
    with open_regular(path, limit, why) as f:
        blob = f.read(limit + 1)
    if len(blob) > limit:
        raise FileRefusedError(f"{path}: larger than {_size(limit)}, {why}: refused")
    return blob


# A checkpoint's train_state.json (parsing JSON takes ~20x its size in memory).
MAX_STATE_BYTES = 64 << 20
# An evaluation report, a Dagster record, a CV summary, saved statistics: a few MB at most in practice.
MAX_RECORD_BYTES = 256 << 20
MAX_DEPTH = 64  # of the JSON files the pipeline reads (reports, records, statistics): a few levels


def read_json(
    path: str | os.PathLike[str],
    limit: int = MAX_RECORD_BYTES,
    what: str = "JSON record",
    max_depth: int = MAX_DEPTH,
) -> Any:
    """A bounded JSON file (read_bounded), nested at most `max_depth` deep, parsed."""
    return parse_json(read_bounded(path, limit, f"more than a {what} takes"), path, what, max_depth)


def parse_json(blob: bytes, source: Any, what: str = "JSON record", max_depth: int = MAX_DEPTH) -> Any:
    """JSON bytes (already read bounded) nested at most `max_depth` deep, parsed; `source` names them."""
    if _depth(blob) > max_depth:
        raise FileRefusedError(f"{source}: nested more than {max_depth} deep, not a {what}: refused")
    try:
        return json.loads(blob)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FileRefusedError(f"{source}: not a valid {what} ({e})") from None


_BRACKETS = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def _depth(blob: bytes) -> int:
    """The deepest nesting of brackets outside strings, without building anything (json.loads of a
    100,000-deep document recurses before it can refuse it)."""
    depth = deepest = 0
    for m in _BRACKETS.finditer(blob):
        c = m.group()
        if c in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        elif c in (b"]", b"}"):
            depth -= 1
    return deepest


# ---- deleting ----


def inside(path: str | os.PathLike[str], root: str | os.PathLike[str]) -> bool:
    """True when `path`'s real location (symlinks resolved) is `root`'s or under it."""
    real, top = os.path.realpath(path), os.path.realpath(root)
    return real == top or real.startswith(top.rstrip(os.sep) + os.sep)


def remove_inside(path: str | os.PathLike[str], root: str | os.PathLike[str]) -> None:
    """Delete `path` (a file, a symlink, or a directory tree) from `root`, never following a symlink: a link
    is removed itself, not what it points at, and nothing whose folder really lies outside `root` (a symlinked
    folder on the way) is touched (FileRefusedError). The one way the pipeline deletes: cache pruning,
    fresh runs, retention."""
    path = Path(path)
    if not inside(path.parent, root):
        raise FileRefusedError(f"{path}: lies outside {root} (through a symlink): not deleted")
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)  # unlinks symlinks inside the tree, never descends into them
    else:
        path.unlink(missing_ok=True)
