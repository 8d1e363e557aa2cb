"""One owner per run directory: an OS-level lock (flock) that a crash releases.

Two trainers in one run directory prune each other's checkpoints, so whoever opens a run directory to
write it (`a2b train`, `a2b resume`, the Dagster `training_run`, `train()` itself) holds
`<run_dir>/.a2b-lock` for as long as it works there. The kernel drops the lock when the holder exits, however
it exits, so a crashed run never blocks the next one. The file itself stays (deleting a lock file races with
the next taker); it says who holds it, for the error the second taker gets.

On taking the lock the debris of writes that a crash interrupted is cleaned: temporary checkpoint
directories (`.tmp-step_*`), checkpoints half-deleted by a prune (`.pruned-step_*`), pointer temporaries
(`.last.tmp`) and the old copy of a step being rewritten (`.old-step_*`, put back in place if the crash came
between the two renames).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from a2b_pipeline.checkpoint.directory import STATE_FILE
from a2b_pipeline.configs import ConfigError
from a2b_pipeline.files import remove_inside

LOCK_FILE = ".a2b-lock"
log = logging.getLogger(__name__)


class RunDirBusyError(ConfigError):
    """Another process holds the run directory (a usage error: `a2b` exits 2); names it and the owner."""


# Run directories this process holds: realpath -> (open lock file, depth). flock conflicts between two
# opens of the same file even in one process, so a nested take (the CLI, then train()) reuses the first.
_HELD: dict[str, tuple[int, int]] = {}
_GUARD = threading.Lock()


def _close_held_in_child() -> None:
    """A forked child (a DataLoader worker) inherits the lock's file descriptor, and a flock lasts until
    every descriptor of it is closed: without this, workers that outlive a SIGKILLed trainer by a few
    seconds would keep its run directory busy. The child never writes the run directory: close its copies
    (the parent's lock is unaffected)."""
    for fd, _ in _HELD.values():
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


os.register_at_fork(after_in_child=_close_held_in_child)


def _is_rank_zero() -> bool:
    # Under torchrun every rank opens the run directory; rank 0 alone writes it, so it alone holds it.
    return int(os.environ.get("RANK", "0")) == 0


@contextlib.contextmanager
def hold_run_dir(run_dir: str | os.PathLike[str]) -> Iterator[Path]:
    """Create `run_dir` if needed and hold it for the duration; raise RunDirBusyError if another process
    does. Reentrant within a process."""
    path = Path(run_dir)
    if not _is_rank_zero():
        yield path
        return
    path.mkdir(parents=True, exist_ok=True)
    key = os.path.realpath(path)
    with _GUARD:
        if key in _HELD:
            fd, depth = _HELD[key]
            _HELD[key] = (fd, depth + 1)
            fresh = False
        else:
            fd = _take(path)
            _HELD[key] = (fd, 1)
            fresh = True
    try:
        if fresh:
            clean_debris(path)
        yield path
    finally:
        with _GUARD:
            fd, depth = _HELD[key]
            if depth > 1:
                _HELD[key] = (fd, depth - 1)
            else:
                del _HELD[key]
                os.close(fd)  # releases the flock


def _take(path: Path) -> int:
    import fcntl

    lock = path / LOCK_FILE
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = _read_owner(fd)
        os.close(fd)
        raise RunDirBusyError(
            f"run directory {path} is in use by {owner}; wait for it to finish or stop it "
            "(one trainer per run directory)"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode(), 0)
    return fd


def _read_owner(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(info["since"])))
        return f"pid {int(info['pid'])} on host {info['host']} (since {since})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process (owner unknown)"


def clean_debris(run_dir: Path) -> None:
    """Remove what interrupted writes left; an `.old-step_*` whose step is missing is put back first."""
    for entry in sorted(run_dir.iterdir()):
        name = entry.name
        if name.startswith(".old-step_"):
            target = run_dir / name.removeprefix(".old-")
            if not target.exists() and (entry / STATE_FILE).exists():
                os.replace(entry, target)  # the crash came between the two renames of a rewrite
                log.warning("restored %s from an interrupted rewrite", target)
                continue
        elif not name.startswith((".tmp-step_", ".pruned-step_")) and not (
            name.startswith(".") and name.endswith(".tmp")
        ):
            continue
        log.info("removing %s, left by an interrupted write", entry)
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def empty_run_dir(run_dir: Path) -> None:
    """Delete everything in a run directory this process holds (`--fresh`), but the lock file itself."""
    if not _is_rank_zero():
        return  # rank 0 empties it, as it alone writes it
    if os.path.realpath(run_dir) not in _HELD:
        raise RuntimeError(f"{run_dir}: emptied without holding it")
    for entry in run_dir.iterdir():
        if entry.name != LOCK_FILE:
            remove_inside(entry, run_dir)
