"""Size and pruning of the local cache: decoded features (`<cache dir>/features`) and downloads of remote
corpus files (`<cache dir>/remote`).

Every entry is a whole file written atomically, so deleting any of them only costs a later decode or
download. Pruning removes the least recently used entries first (a cache hit touches its entry's mtime)
and never those used in the last `keep_recent_s` seconds: a run reading the cache right now must not lose
a file between finding it and opening it.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from a2b_pipeline.data.remote import default_cache_dir
from a2b_pipeline.files import inside, remove_inside

# section -> glob of its entry files, relative to the section's folder (see feature_cache.entry_path and
# remote._cache_path); temporary files and locks start with "." and are never entries
SECTIONS = {"features": "*/*/*.a2bc", "remote": "*/*/*/*"}


@dataclass(frozen=True)
class Entry:
    section: str
    path: Path
    size: int
    used: float  # mtime: written or last hit


def entries(cache_dir: str | os.PathLike[str] | None = None) -> list[Entry]:
    root = default_cache_dir(cache_dir)
    found = []
    for section, pattern in SECTIONS.items():
        for path in (root / section).glob(pattern):
            # a symlink in the cache (the entry, or a folder on the way) leads elsewhere: never an entry
            if path.name.startswith(".") or path.is_symlink() or not inside(path.parent, root / section):
                continue
            with contextlib.suppress(FileNotFoundError):  # removed meanwhile by a run or another prune
                st = path.stat()
                found.append(Entry(section, path, st.st_size, st.st_mtime))
    return found


def usage(cache_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Entries and bytes per section, and in all."""
    out: dict[str, Any] = {"cache_dir": str(default_cache_dir(cache_dir))}
    found = entries(cache_dir)
    for section in SECTIONS:
        mine = [e for e in found if e.section == section]
        out[section] = {"entries": len(mine), "bytes": sum(e.size for e in mine)}
    out["bytes"] = sum(e.size for e in found)
    return out


def prune(
    cache_dir: str | os.PathLike[str] | None,
    max_bytes: int,
    *,
    keep_recent_s: float = 3600.0,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Delete least recently used entries until the cache holds at most `max_bytes`."""
    found = sorted(entries(cache_dir), key=lambda e: e.used)
    total = sum(e.size for e in found)
    recent = time.time() - keep_recent_s
    removed, freed = [], 0
    for e in found:
        if total - freed <= max_bytes:
            break
        if e.used >= recent:
            continue  # in use: stays even if the cache stays over the limit
        if not dry_run:
            with contextlib.suppress(FileNotFoundError):
                remove_inside(e.path, default_cache_dir(cache_dir) / e.section)
                _remove_empty_parents(e.path.parent, default_cache_dir(cache_dir) / e.section)
        removed.append(str(e.path))
        freed += e.size
    return {
        "dry_run": dry_run,
        "max_bytes": max_bytes,
        "bytes_before": total,
        "bytes_after": total - freed,
        "removed": len(removed),
        "freed_bytes": freed,
        "over_limit_in_use": total - freed > max_bytes,
        "removed_paths": removed,
    }


def _remove_empty_parents(folder: Path, stop: Path) -> None:
    """Remove `folder` and its parents up to `stop` while they are empty (a download lock keeps its own)."""
    while folder != stop and stop in folder.parents:
        try:
            folder.rmdir()
        except OSError:  # not empty
            return
        folder = folder.parent
