"""files.py's writers: atomic_path / atomic_write, the one way the pipeline writes a file whole (reports,
corpus files, cache entries, downloads, manifests): readers see the old file or the new one, never half."""

from __future__ import annotations

import csv
import os
import stat
from pathlib import Path

import pytest

from a2b_pipeline.files import atomic_path, atomic_write


def test_atomic_write_creates_folders_replaces_whole_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "report.json"
    atomic_write(path, b"old")
    atomic_write(path, b"new content")
    assert path.read_bytes() == b"new content"
    assert sorted(p.name for p in path.parent.iterdir()) == ["report.json"]


def test_the_file_gets_the_umask_permissions_like_open(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "corpus.csv", b"x")  # a corpus or a report is read by others too
        with open(tmp_path / "plain.csv", "wb") as f:
            f.write(b"x")
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "corpus.csv").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "plain.csv").stat().st_mode) == 0o644


def test_atomic_path_gives_a_hidden_sibling_the_target_appears_only_at_the_end(tmp_path: Path) -> None:
    path = tmp_path / "manifest.csv"
    atomic_write(path, b"old\n")
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        assert tmp.parent == path.parent and tmp.name.startswith(".manifest.csv.") and tmp.suffix == ".tmp"
        csv.writer(f).writerows([["a", "b"], ["1", "2"]])
        f.flush()
        assert path.read_text() == "old\n"  # a reader meanwhile sees the old file whole
    assert path.read_bytes() == b"a,b\r\n1,2\r\n"
    assert not tmp.exists()


def test_an_error_in_the_block_keeps_the_old_file_and_removes_the_temporary(tmp_path: Path) -> None:
    path = tmp_path / "entry.bin"
    atomic_write(path, b"old")
    with pytest.raises(RuntimeError, match="half written"), atomic_path(path) as tmp:
        tmp.write_bytes(b"ne")
        raise RuntimeError("half written")
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry.bin"]


def test_a_block_that_writes_nothing_fails_and_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "download"
    atomic_write(path, b"cached")
    with pytest.raises(FileNotFoundError), atomic_path(path):
        pass  # e.g. a download that wrote no file: nothing to rename into place
    assert path.read_bytes() == b"cached"
