"""rundir_lock.py: one holder per run directory (another taker gets an error naming the directory and the
owner), reentrant in a process, released on exit; the debris of interrupted writes cleaned on a fresh take
(and a half-done rewrite put back); `--fresh` empties all but the lock."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

import pytest

from a2b_pipeline.checkpoint import lock as rl
from a2b_pipeline.checkpoint.lock import (
    LOCK_FILE,
    RunDirBusyError,
    clean_debris,
    empty_run_dir,
    hold_run_dir,
)


def _free(run: Path) -> bool:
    """Whether another open of the lock file could take it now."""
    fd = os.open(run / LOCK_FILE, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def test_hold_is_exclusive_reentrant_and_released(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("RANK", raising=False)
    run = tmp_path / "a" / "run"
    assert not run.exists()
    with hold_run_dir(run) as path:
        assert path == run and run.is_dir()
        info = json.loads((run / LOCK_FILE).read_text())
        assert info["pid"] == os.getpid() and info["host"] == os.uname().nodename
        with hold_run_dir(run):
            assert not _free(run)
        assert not _free(run)  # the inner exit keeps it
    assert _free(run) and os.path.realpath(run) not in rl._HELD


def test_a_second_taker_is_refused_naming_the_owner(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("RANK", raising=False)
    run = tmp_path / "run"
    run.mkdir()
    fd = os.open(run / LOCK_FILE, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, json.dumps({"pid": 4242, "host": "elsewhere", "since": 0}).encode())
        with (
            pytest.raises(
                RunDirBusyError, match=rf"run directory {run} is in use by pid 4242 on host elsewhere"
            ),
            hold_run_dir(run),
        ):
            pass
        os.ftruncate(fd, 0)
        with (
            pytest.raises(RunDirBusyError, match=r"in use by another process \(owner unknown\)"),
            hold_run_dir(run),
        ):
            pass
    finally:
        os.close(fd)
    assert os.path.realpath(run) not in rl._HELD
    with hold_run_dir(run):  # free again
        pass


def test_another_process_is_refused_and_the_owner_rewritten(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("RANK", raising=False)
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_FILE).write_text(json.dumps({"pid": 1, "host": "a-much-longer-host-name-than-this-one" * 3}))
    with hold_run_dir(run):
        assert json.loads((run / LOCK_FILE).read_text())["pid"] == os.getpid()  # replaced, not overwritten
        pid = os.fork()
        if pid == 0:  # another process (holding nothing after the fork) asks for the same directory
            code = 1
            try:
                with hold_run_dir(run):
                    pass
            except RunDirBusyError:
                code = 0
            except BaseException:  # never back into pytest from the child
                code = 2
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0


def test_other_ranks_take_nothing(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("RANK", "1")
    with hold_run_dir(tmp_path / "run") as path:
        assert not (path / LOCK_FILE).exists()
    empty_run_dir(tmp_path)  # rank 0 empties it


def test_debris_cleaned_on_a_fresh_take(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("RANK", raising=False)
    run = tmp_path / "run"
    for d in (
        ".tmp-step_000000004-x",
        ".pruned-step_000000001",
        ".old-step_000000002",
        ".old-step_000000003",
        ".old-step_000000006",  # its step is missing, but it was never committed: not restored
        "step_000000003",
        "step_000000005",
        ".keep",
    ):
        (run / d).mkdir(parents=True)
    (run / ".old-step_000000002" / "train_state.json").write_text("{}")  # a rewrite cut between its renames
    for f in (".last.tmp", ".best.tmp", "notes.tmp", "train.log"):
        (run / f).write_text("")
    os.symlink("step_000000005", run / ".x.tmp")
    with hold_run_dir(run):
        left = sorted(p.name for p in run.iterdir())
        assert left == [
            ".a2b-lock",
            ".keep",
            "notes.tmp",
            "step_000000002",
            "step_000000003",
            "step_000000005",
            "train.log",
        ]
        assert (run / "step_000000002" / "train_state.json").exists() and (run / "step_000000005").is_dir()
        (run / ".tmp-step_000000009-y").mkdir()
        with hold_run_dir(run):  # a nested take is not fresh: nothing is cleaned under a live writer
            assert (run / ".tmp-step_000000009-y").exists()
    clean_debris(run)
    assert not (run / ".tmp-step_000000009-y").exists()


def test_empty_run_dir_keeps_the_lock(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("RANK", raising=False)
    run = tmp_path / "run"
    (run / "step_000000001").mkdir(parents=True)
    (run / "f.txt").write_text("x")
    with pytest.raises(RuntimeError, match=rf"{run}: emptied without holding it"):
        empty_run_dir(run)
    with hold_run_dir(run):
        os.symlink(tmp_path, run / "link")  # a link is removed, not followed
        empty_run_dir(run)
        assert [p.name for p in run.iterdir()] == [LOCK_FILE] and tmp_path.is_dir() and not _free(run)


def test_a_forked_child_lets_go(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("RANK", raising=False)
    run = tmp_path / "run"
    with hold_run_dir(run):
        pid = os.fork()
        if pid == 0:  # the child: holds nothing, and its copy of the descriptor is closed
            os._exit(0 if not rl._HELD else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    assert _free(run)
