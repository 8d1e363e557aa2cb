"""Writing a file so that readers see the old one or the new one, never half of one (no torch here: the
Dagster definitions import it while loading)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write(path: Path, blob: bytes) -> None:
    """Write `path` via a synced temporary sibling and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
