"""checkpoint/directory.py: names, listing, atomic writes with digests, pointers, retention, the bounded and
verified reads, and the refusals (each naming the file)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch
import xxhash
from safetensors.torch import save_file

from a2b_pipeline.checkpoint.directory import (
    STATE_FILE,
    CheckpointError,
    checkpoint_file,
    checkpoint_name,
    digest_bytes,
    entry_inside,
    file_digest,
    list_checkpoints,
    prune_checkpoints,
    read_bounded,
    read_state_text,
    read_verified_tensors,
    set_pointer,
    tensor_bytes,
    verify_bytes,
    verify_file,
    write_checkpoint_dir,
)


def _ckpt(run: Path, step: int, marker: bool = True) -> Path:
    d = run / checkpoint_name(step)
    d.mkdir(parents=True)
    if marker:
        (d / STATE_FILE).write_text("{}")
    return d


def test_names_and_listing_oldest_first(tmp_path: Path) -> None:
    assert checkpoint_name(12) == "step_000000012"
    assert list_checkpoints(tmp_path / "absent") == []
    for step in (10, 2, 300):
        _ckpt(tmp_path, step)
    _ckpt(tmp_path, 5, marker=False)  # not committed
    (tmp_path / "step_12").mkdir()  # not a step name
    (tmp_path / "step_12" / STATE_FILE).write_text("{}")
    assert [p.name for p in list_checkpoints(tmp_path)] == [checkpoint_name(s) for s in (2, 10, 300)]


def test_write_is_atomic_with_digests_and_a_rewrite_swaps(tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(b"copied bytes")
    seen: list[dict[str, str]] = []

    def state_json(files: dict[str, str]) -> bytes:
        seen.append(dict(files))
        return b'{"ok": 1}'

    path = tmp_path / "run" / checkpoint_name(3)
    tensors = {"model.safetensors": {"w": torch.arange(6.0).reshape(2, 3)}}
    files = write_checkpoint_dir(
        path, state_json, tensors, {"copy.bin": (src, file_digest(src))}, {"blob.json": b"[1]"}
    )
    assert seen == [files] and set(files) == {"model.safetensors", "copy.bin", "blob.json"}
    for name, digest in files.items():
        assert digest == file_digest(path / name) and digest.startswith("xxh3_128:")
    assert (path / STATE_FILE).read_bytes() == b'{"ok": 1}' and (path / "blob.json").read_bytes() == b"[1]"
    torch.testing.assert_close(
        read_verified_tensors(path / "model.safetensors", files["model.safetensors"], path / STATE_FILE)["w"],
        torch.arange(6.0).reshape(2, 3),
    )
    write_checkpoint_dir(path, lambda f: b"{}", {}, {}, {"new.txt": b"x"})  # rewrite: the old files go
    assert sorted(p.name for p in path.iterdir()) == ["new.txt", STATE_FILE]
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temporary or old directories


def test_a_failed_write_leaves_nothing(tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(b"changed since it was recorded")
    path = tmp_path / "run" / checkpoint_name(1)
    with pytest.raises(CheckpointError, match=r"copy\.bin: checksum mismatch"):
        write_checkpoint_dir(path, lambda f: b"{}", {}, {"copy.bin": (src, digest_bytes(b"original"))})
    assert list((tmp_path / "run").iterdir()) == []


def test_pointer_is_relative_and_replaced(tmp_path: Path) -> None:
    a, b = _ckpt(tmp_path, 1), _ckpt(tmp_path, 2)
    set_pointer(tmp_path, "best", a)
    set_pointer(tmp_path, "best", b)
    assert os.readlink(tmp_path / "best") == b.name
    assert (tmp_path / "best").resolve() == b.resolve()
    assert not (tmp_path / ".best.tmp").exists() and not (tmp_path / ".best.tmp").is_symlink()


def test_prune_keeps_the_newest_and_the_protected(tmp_path: Path) -> None:
    steps = [_ckpt(tmp_path, s) for s in (1, 2, 3, 4, 5)]
    (tmp_path / ".tmp-step_000000009-x").mkdir()
    (tmp_path / ".pruned-step_000000007").mkdir()  # a prune a killed process left
    prune_checkpoints(tmp_path, keep_last=2, protect=[steps[1], None])
    assert [p.name for p in list_checkpoints(tmp_path)] == [steps[i].name for i in (1, 3, 4)]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(steps[i].name for i in (1, 3, 4))
    prune_checkpoints(tmp_path, keep_last=1, protect=[])
    assert [p.name for p in list_checkpoints(tmp_path)] == [steps[4].name]


def test_prune_leaves_a_symlinked_checkpoint_alone(tmp_path: Path) -> None:
    run, other = tmp_path / "run", tmp_path / "other"
    theirs = _ckpt(other, 1)
    run.mkdir()
    os.symlink(theirs, run / checkpoint_name(1))  # not a checkpoint of this run
    _ckpt(run, 2)
    prune_checkpoints(run, keep_last=1, protect=[])
    assert (run / checkpoint_name(1)).is_symlink() and (theirs / STATE_FILE).exists()


def test_entries_must_stay_in_their_run_directory(tmp_path: Path) -> None:
    run, other = tmp_path / "run", tmp_path / "other"
    mine, theirs = _ckpt(run, 1), _ckpt(other, 1)
    set_pointer(run, "last", mine)
    assert entry_inside(run, run / "last") == mine.resolve()
    os.symlink(theirs, run / "best")
    with pytest.raises(CheckpointError, match=r"best leads out of its run directory .*other"):
        entry_inside(run, run / "best")


def test_listed_files_are_plain_regular_files_inside(tmp_path: Path) -> None:
    ckpt = _ckpt(tmp_path, 1)
    (ckpt / "model.safetensors").write_bytes(b"x")
    assert checkpoint_file(ckpt, "model.safetensors") == ckpt / "model.safetensors"
    for bad in ("../model.safetensors", "a/b", ".hidden", "", 3):
        with pytest.raises(CheckpointError, match="not a plain file name"):
            checkpoint_file(ckpt, bad)
    with pytest.raises(CheckpointError, match=r"gone\.bin: missing"):
        checkpoint_file(ckpt, "gone.bin")
    os.symlink(ckpt / "model.safetensors", ckpt / "link.bin")
    (ckpt / "sub").mkdir()
    for name in ("link.bin", "sub"):
        with pytest.raises(CheckpointError, match=rf"{name}: not a regular file"):
            checkpoint_file(ckpt, name)


def test_bounded_reads(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"x" * 100)
    assert read_bounded(f, 100, "why") == b"x" * 100  # exactly the limit is fine
    with pytest.raises(CheckpointError, match=r"f: larger than .*, why: refused"):
        read_bounded(f, 99, "why")
    with pytest.raises(CheckpointError, match=r"nope: missing"):
        read_bounded(tmp_path / "nope", 10, "why")
    os.symlink(f, tmp_path / "link")
    with pytest.raises(CheckpointError, match="not a regular file"):
        read_bounded(tmp_path / "link", 1000, "why")
    s = tmp_path / STATE_FILE
    s.write_text('{"é": 1}', encoding="utf-8")
    assert read_state_text(s) == '{"é": 1}'
    s.write_bytes(b'{"\xff": 1}')
    with pytest.raises(CheckpointError, match=r"train_state\.json: not UTF-8"):
        read_state_text(s)


def test_digests_by_algorithm_and_their_checks(tmp_path: Path) -> None:
    f = tmp_path / "data.bin"
    blob = os.urandom(3 << 20) + b"tail"  # more than one 1 MB read
    f.write_bytes(blob)
    assert file_digest(f) == digest_bytes(blob) == f"xxh3_128:{xxhash.xxh3_128(blob).hexdigest()}"
    sha = hashlib.sha256(blob).hexdigest()
    assert file_digest(f, "sha256") == f"sha256:{sha}"
    verify_file(f, file_digest(f))
    verify_file(f, sha)  # a bare hex digest is a sha256
    verify_bytes(f, blob, f"sha256:{sha}")
    with pytest.raises(CheckpointError, match=r"data\.bin: checksum mismatch"):
        verify_file(f, digest_bytes(blob[:-1]))
    with pytest.raises(CheckpointError, match=r"data\.bin: checksum mismatch"):
        verify_bytes(f, blob[:-1], sha)
    digest = file_digest(f)
    with pytest.raises(CheckpointError, match="checksum mismatch"):  # all of it is compared
        verify_file(f, digest[:-1] + ("0" if digest[-1] != "0" else "1"))
    with pytest.raises(CheckpointError, match=r"unknown digest 'md5:"):
        verify_file(f, "md5:abc")
    with pytest.raises(CheckpointError, match=r"gone\.bin: missing"):
        verify_file(tmp_path / "gone.bin", digest_bytes(b""))


def test_verified_tensor_reads_and_sizes(tmp_path: Path) -> None:
    f = tmp_path / "t.safetensors"
    save_file({"a": torch.zeros(3, 4, dtype=torch.float16), "b": torch.ones(5, dtype=torch.int64)}, str(f))
    assert tensor_bytes(f) == (3 * 4 * 2 + 5 * 8, torch.float16)
    with pytest.raises(CheckpointError, match=r"t\.safetensors: not listed in .*train_state\.json"):
        read_verified_tensors(f, None, tmp_path / STATE_FILE)
    got = read_verified_tensors(f, file_digest(f), tmp_path / STATE_FILE)
    assert got["b"].dtype == torch.int64 and got["b"].sum() == 5
    recorded = file_digest(f)
    save_file({"a": torch.ones(3, 4, dtype=torch.float16), "b": torch.ones(5, dtype=torch.int64)}, str(f))
    with pytest.raises(CheckpointError, match=r"t\.safetensors: checksum mismatch"):  # changed since
        read_verified_tensors(f, recorded, tmp_path / STATE_FILE)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x80\x04not safetensors")
    with pytest.raises(CheckpointError, match=r"junk\.safetensors: not a safetensors file"):
        read_verified_tensors(junk, file_digest(junk), tmp_path / STATE_FILE)
    with pytest.raises(CheckpointError, match=r"junk\.safetensors: not a safetensors file"):
        tensor_bytes(junk)
