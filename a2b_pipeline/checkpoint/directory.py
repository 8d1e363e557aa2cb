"""A checkpoint directory on disk: atomic writes, file digests, `last`/`best` pointers, retention.

Plain file mechanics with no knowledge of what a TrainState holds (state.py, store.py and
checkpointer.py build on them), and the names of a checkpoint's files. Importing it costs no torch: light
modules (the Dagster definitions, the leaderboard) take STATE_FILE from here.

Digests are xxh3-128 ("xxh3_128:<hex>"): they catch truncated, torn or bit-rotted files at ~10 GB/s,
where sha256 ran at ~1.4 GB/s and cost more than loading the tensors (bench/checkpoint.py). They guard
integrity, not authenticity: whoever can rewrite a file can rewrite train_state.json beside it. A bare
64-hex digest is a sha256, as the first checkpoints recorded.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import xxhash

from a2b_pipeline import files

if TYPE_CHECKING:
    import torch

# A checkpoint directory's files (state.py's module docstring describes each)
STATE_FILE = "train_state.json"  # the TrainState, written last: the commit marker
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
EMA_FILE = "ema.safetensors"
METRICS_FILE = "metrics.jsonl"
STEP_DIR = re.compile(r"^step_(\d{9})$")
DIGEST_ALGOS = ("xxh3_128", "sha256")
# A checkpoint from elsewhere is untrusted: the state file it carries is read only up to this size (parsing
# JSON takes ~20x its size in memory), and the files it lists are plain names of regular files inside it.
MAX_STATE_BYTES = files.MAX_STATE_BYTES
FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class CheckpointError(RuntimeError):
    """A checkpoint that can't be trusted: missing, truncated, tampered, foreign or too new."""


class SchemaTooNewError(CheckpointError):
    """Written by a newer a2b_pipeline: never skipped over to resume an older checkpoint of the run,
    which would train over (and replace) what the newer version wrote."""


def checkpoint_name(step: int) -> str:
    return f"step_{step:09d}"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Committed checkpoints (those with the marker), oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [p for p in run_dir.iterdir() if STEP_DIR.match(p.name) and (p / STATE_FILE).exists()]
    return sorted(found, key=lambda p: p.name)


def entry_inside(run_dir: Path, entry: Path) -> Path:
    """The real path of a run directory's entry (a step_* directory, the `last` or `best` pointer), which must
    lead to a directory of that same run directory: else CheckpointError naming where it leads (a symlink
    into another run would have that run resumed, written and pruned from here)."""
    real, run = entry.resolve(), run_dir.resolve()
    if real.parent != run:
        raise CheckpointError(
            f"{entry} leads out of its run directory {run} to {real} (run directory {real.parent}): refused; "
            "a checkpoint of another run is read through its own run directory only"
        )
    return real


def checkpoint_file(ckpt: Path, name: str) -> Path:
    """A file a checkpoint's train_state.json lists: a plain file name (no path), naming a regular file in
    the checkpoint directory itself (not a symlink, a device or a directory); else CheckpointError."""
    if not isinstance(name, str) or not FILE_NAME.match(name):
        raise CheckpointError(
            f"{ckpt / STATE_FILE}: lists file {name!r}, which is not a plain file name inside the checkpoint"
        )
    path = ckpt / name
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    if not stat.S_ISREG(mode):
        raise CheckpointError(f"{path}: not a regular file (a symlink, device or directory): refused")
    return path


def read_state_text(state_file: Path) -> str:
    """train_state.json's text, read only up to MAX_STATE_BYTES: CheckpointError for a bigger file, or one
    that is not a regular file or not UTF-8."""
    blob = read_bounded(state_file, MAX_STATE_BYTES, "more than a run's state takes")
    try:
        return blob.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{state_file}: not UTF-8 ({e})") from None


def read_bounded(file: Path, limit: int, why: str) -> bytes:
    """files.read_bounded with its refusals as CheckpointError (naming the file and `why` the limit holds)."""
    try:
        return files.read_bounded(file, limit, why)
    except FileNotFoundError:
        raise CheckpointError(f"{file}: missing") from None
    except files.FileRefusedError as e:
        raise CheckpointError(str(e)) from None
    except OSError as e:
        raise CheckpointError(f"{file}: unreadable ({e})") from None


def write_checkpoint_dir(
    path: Path,
    state_json: Callable[[dict[str, str]], bytes],
    tensors: dict[str, dict[str, torch.Tensor]],
    copies: dict[str, tuple[Path, str]],
    blobs: dict[str, bytes] | None = None,
) -> dict[str, str]:
    """Write checkpoint directory `path` atomically and return the digest of every file in it.

    `tensors` (file name -> tensors) are saved with safetensors, `blobs` (file name -> bytes) as they are,
    `copies` (file name -> (source, its recorded digest)) are copied and verified against that digest.
    Files go into a temporary sibling directory and are fsynced; `state_json(digests)` gives the
    train_state.json bytes, written last (the commit marker); then the directory is renamed into place
    and the parent fsynced.
    """
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{path.name}-", dir=path.parent))
    try:
        files: dict[str, str] = {}
        for name, tdict in tensors.items():
            # straight to the file (the same bytes as safetensors.save, without a copy in memory)
            save_file({k: v.detach().contiguous().cpu() for k, v in tdict.items()}, str(tmp / name))
            files[name] = file_digest(tmp / name)  # of the bytes in the page cache, before the flush
            fsync_path(tmp / name)
        for name, blob in (blobs or {}).items():
            write_synced(tmp / name, blob)
            files[name] = digest_bytes(blob)
        for name, (source, digest) in copies.items():
            shutil.copyfile(source, tmp / name)
            verify_file(tmp / name, digest)  # the copy is what was recorded, not a file changed since
            files[name] = digest
            fsync_path(tmp / name)
        write_synced(tmp / STATE_FILE, state_json(files))
        if path.exists():  # rewriting a step (its final status): swap, then drop the old one
            old = path.with_name(f".old-{path.name}")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        fsync_path(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return files


def set_pointer(run_dir: str | Path, name: str, target: Path) -> None:
    """Point `run_dir/name` (a relative symlink) at `target`, atomically."""
    link = Path(run_dir) / name
    tmp = Path(run_dir) / f".{name}.tmp"
    tmp.unlink(missing_ok=True)
    os.symlink(target.name, tmp)
    os.replace(tmp, link)


def prune_checkpoints(run_dir: str | Path, keep_last: int, protect: list[Path | None]) -> None:
    """Delete all but the newest `keep_last` checkpoints, never one in `protect` (best, last)."""
    keep = {Path(p).resolve() for p in protect if p}
    for ckpt in list_checkpoints(run_dir)[:-keep_last]:
        if ckpt.is_symlink():  # not a checkpoint of this run (loading refuses it too): left alone
            continue
        if ckpt.resolve() not in keep:
            # renamed out of sight first: a process killed while deleting files one by one must not leave
            # a step_* that still has its train_state.json but lacks files it lists
            doomed = ckpt.with_name(f".pruned-{ckpt.name}")
            os.replace(ckpt, doomed)
            shutil.rmtree(doomed, ignore_errors=True)
    # Temporary directories of writes or prunes that never finished (a killed process). One process writes
    # a run directory, and its own write is done when it prunes, so any left now are dead.
    for debris in [*Path(run_dir).glob(".tmp-step_*"), *Path(run_dir).glob(".pruned-step_*")]:
        shutil.rmtree(debris, ignore_errors=True)


def file_digest(path: Path, algo: str = "xxh3_128") -> str:
    """`algo:hex` of a file, read in 1 MB chunks into one reused buffer (fresh memory for the whole file
    costs page faults; unlike a mapping, reading turns a file that shrinks meanwhile into a mismatch, not
    a SIGBUS)."""
    h = _hasher(algo)
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return f"{algo}:{h.hexdigest()}"


def digest_bytes(blob: bytes, algo: str = "xxh3_128") -> str:
    """`algo:hex` of bytes in memory, as file_digest gives for a file holding them."""
    h = _hasher(algo)
    h.update(blob)
    return f"{algo}:{h.hexdigest()}"


def _hasher(algo: str) -> Any:
    return xxhash.xxh3_128() if algo == "xxh3_128" else hashlib.new(algo)


def verify_file(file: Path, expected: str) -> None:
    """Raise CheckpointError unless the file's digest is the recorded one."""
    algo, want = _recorded_digest(file, expected)
    try:
        got = file_digest(file, algo)
    except FileNotFoundError:
        raise CheckpointError(f"{file}: missing") from None
    except OSError as e:
        raise CheckpointError(f"{file}: unreadable ({e})") from None
    _check_digest(file, got, want)


def verify_bytes(file: Path, blob: bytes, expected: str) -> None:
    """verify_file for `file`'s bytes, already read into memory."""
    algo, want = _recorded_digest(file, expected)
    _check_digest(file, digest_bytes(blob, algo), want)


def _recorded_digest(file: Path, expected: str) -> tuple[str, str]:
    """(algorithm, hex) of a recorded digest; a bare hex digest is a sha256."""
    algo, _, want = expected.rpartition(":")
    algo = algo or "sha256"
    if algo not in DIGEST_ALGOS:
        raise CheckpointError(f"{file}: unknown digest {expected!r}")
    return algo, want


def _check_digest(file: Path, got: str, want: str) -> None:
    if got.rpartition(":")[2] != want:
        raise CheckpointError(f"{file}: checksum mismatch (truncated or modified after it was written)")


def read_verified_tensors(file: Path, expected: str | None, listing: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's safetensors file, after checking it against its recorded digest (`listing` is the
    train_state.json that records it)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if expected is None:
        raise CheckpointError(f"{file}: not listed in {listing}")
    # Verified again right before the load (the state may have been read long ago): committed checkpoint
    # files are never rewritten in place (a new one is written beside and renamed), so what load_file maps
    # a moment later is what was hashed.
    verify_file(file, expected)
    try:
        return load_file(file)
    except (SafetensorError, OSError, ValueError) as e:
        # A pickle or any other format planted here is refused by safetensors, never executed.
        raise CheckpointError(f"{file}: not a safetensors file ({e})") from None


def tensor_bytes(file: Path) -> tuple[int, torch.dtype | None]:
    """(bytes of all tensors, dtype of the first) from a safetensors file's header, without loading it."""
    import torch
    from safetensors import SafetensorError, safe_open

    total, dtype = 0, None
    try:
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                sl = f.get_slice(key)
                n = 1
                for d in sl.get_shape():
                    n *= d
                dt = getattr(torch, _SAFETENSORS_DTYPES.get(sl.get_dtype(), "float32"))
                total += n * dt.itemsize
                dtype = dtype or dt
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{file}: not a safetensors file ({e})") from None
    return total, dtype


_SAFETENSORS_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}


def write_synced(path: Path, blob: bytes) -> None:
    with open(path, "wb") as f:
        f.write(blob)
        f.flush()
        os.fsync(f.fileno())


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (a directory: so a rename in it survives a crash)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
