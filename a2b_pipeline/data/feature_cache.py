"""On-disk cache of decoded audio features and resampled targets.

An entry is keyed by (content hash of its source file(s), hash of the settings that shape it, hash of the
source code that computes it): an edited file, a changed setting or changed decoding code gives a new key, so
a stale entry is never found, let alone used. Each entry is one file

    MAGIC | 8-byte little-endian header length | JSON header | payload (raw arrays)

whose header records the key, the arrays' dtypes and shapes and the payload's xxh3-128 checksum (entries
written before it carry a sha256, which is checked instead). A reader checks all
of it; an entry that fails (truncated, flipped bits, another key, another format) is deleted, counted in
``STATS["corrupt"]`` and rebuilt. Writers write a temporary file beside the entry, fsync it and rename it
into place, so concurrent workers (DataLoader workers, DDP ranks, parallel runs) only ever see whole
entries; two writers of the same key write the same bytes and the last rename wins.

The audio features of one clip are shared by every listener of that clip (PMEmo: one recording per listener):
the cache key depends on the audio only, and in one process the same tensor is handed out again while it
is alive, so a song is decoded once and held in memory once.

Remote sources (``s3://...``) are first made local through :mod:`a2b_pipeline.data.remote` (downloaded once,
keyed by URL + ETag + size).

Entries live under ``<data.cache_dir or $A2B_CACHE_DIR or ~/.cache/a2b>/features``; ``A2B_FEATURE_CACHE=0``
turns the disk cache off (everything is decoded, nothing written). Deleting the folder is always safe.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import inspect
import json
import os
import struct
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xxhash

from a2b_pipeline.data import remote
from a2b_pipeline.data.recording import BadRecordingError, Recording
from a2b_pipeline.files import atomic_write, open_regular

# Bump to invalidate every entry by hand. Entries are also keyed by the source code that computes them (the
# `code` its caller passes: the modules and functions that decode or resample), so an edit of that code
# never serves stale entries.
FEATURE_CODE_VERSION = 1
TARGET_CODE_VERSION = 1

MAGIC = b"A2BFC\x01\n"
_LEN = struct.Struct("<Q")

# hits/misses per kind and corrupt entries replaced, in this process (tests and benchmarks read them)
STATS: dict[str, int] = {
    "features_hit": 0,
    "features_miss": 0,
    "target_hit": 0,
    "target_miss": 0,
    "inputs_hit": 0,  # a model's own inputs (hf_encoder: a pretrained encoder's hidden states)
    "inputs_miss": 0,
    "corrupt": 0,
}

_LOCK = threading.Lock()
_HASHES: dict[tuple, str] = {}  # (path, size, mtime_ns, inode) -> sha256 of the content
# features handed out in this process, while some recording still holds them (one tensor per song)
_ALIVE: weakref.WeakValueDictionary[str, torch.Tensor] = weakref.WeakValueDictionary()
_ALIVE_META: dict[str, int] = {}  # key -> n_samples


def reset_stats() -> None:
    with _LOCK:
        for k in STATS:
            STATS[k] = 0


def _count(name: str) -> None:
    with _LOCK:
        STATS[name] += 1


# One lock per cache key: threads loading recordings of the same song wait for one decode.
_key_lock = remote.KeyedLocks()


def _disabled() -> bool:
    return os.environ.get("A2B_FEATURE_CACHE", "1").strip().lower() in ("0", "off", "false", "no")


# ---- hashing ----


_CODE_HASHES: dict[tuple[object, ...], str] = {}


def code_version(code: Sequence[object]) -> str:
    """sha256 over the source of the given modules and functions (their file's name when it has none)."""
    key = tuple(code)
    hit = _CODE_HASHES.get(key)
    if hit is not None:
        return hit
    h = hashlib.sha256()
    for obj in key:
        name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", repr(obj))
        where = f"{getattr(obj, '__module__', None) or ''}.{name}"
        try:
            src = inspect.getsource(obj)  # type: ignore[arg-type]
        except (OSError, TypeError):
            src = f"{where}@{getattr(obj, '__file__', '')}"
        h.update(f"{where}\n{src}\n".encode())
    digest = h.hexdigest()[:16]
    _CODE_HASHES[key] = digest
    return digest


def content_hash(path: str) -> str:
    """sha256 of a local file's bytes; remembered per (path, size, mtime, inode) in this process."""
    st = os.stat(path)
    memo_key = (os.path.abspath(path), st.st_size, st.st_mtime_ns, st.st_ino)
    # A file modified in the last seconds may be modified again within the same mtime tick with the same
    # size ("racy" stat data, as git calls it): hash it every time until it has settled.
    settled = time.time() - st.st_mtime_ns / 1e9 > 2.0
    with _LOCK:
        hit = _HASHES.get(memo_key) if settled else None
    if hit is not None:
        return hit
    h = hashlib.sha256()
    with open_regular(path, follow_symlinks=True) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    digest = h.hexdigest()
    if settled:
        with _LOCK:
            _HASHES[memo_key] = digest
    return digest


def settings_hash(settings: dict[str, Any]) -> str:
    blob = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


# ---- entries ----


def cache_root(cache_dir: str | os.PathLike[str] | None) -> Path:
    return remote.default_cache_dir(cache_dir) / "features"


def entry_path(root: Path, kind: str, key: str) -> Path:
    return root / kind / key[:2] / f"{key}.a2bc"


def write_entry(path: Path, key: str, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """Atomically write arrays + meta under `key` (temporary file, fsync, rename)."""
    specs, chunks = [], []
    for name, arr in arrays.items():
        a = np.ascontiguousarray(arr)
        specs.append({"name": name, "dtype": a.dtype.str, "shape": list(a.shape), "nbytes": int(a.nbytes)})
        chunks.append(a.tobytes())
    payload = b"".join(chunks)
    header = json.dumps(
        {"key": key, "arrays": specs, "meta": meta, "xxh3_128": xxhash.xxh3_128_hexdigest(payload)},
        sort_keys=True,
    ).encode()
    atomic_write(path, MAGIC + _LEN.pack(len(header)) + header + payload)


class CorruptEntry(ValueError):
    pass


def read_entry(path: Path, key: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Arrays and meta of an entry. CorruptEntry when anything doesn't check out, FileNotFoundError when
    there is none."""
    with open_regular(path) as f:
        blob = f.read()
    if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + _LEN.size:
        raise CorruptEntry("bad magic (not a cache entry, or another format version)")
    (hlen,) = _LEN.unpack_from(blob, len(MAGIC))
    start = len(MAGIC) + _LEN.size
    try:
        header = json.loads(blob[start : start + hlen])
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorruptEntry(f"unreadable header ({e})") from None
    if not isinstance(header, dict) or header.get("key") != key:
        raise CorruptEntry("entry belongs to another key")
    payload = memoryview(blob)[start + hlen :]
    if "xxh3_128" in header:  # 8x faster than sha256: a third of a warm epoch's time went into sha256
        ok = xxhash.xxh3_128_hexdigest(payload) == header["xxh3_128"]
    else:
        ok = hashlib.sha256(payload).hexdigest() == header.get("sha256")
    if not ok:
        raise CorruptEntry("payload checksum mismatch (truncated or damaged)")
    arrays, off = {}, 0
    try:
        for spec in header["arrays"]:
            n = int(spec["nbytes"])
            arr = np.frombuffer(payload[off : off + n], dtype=np.dtype(spec["dtype"]))
            arrays[spec["name"]] = arr.reshape(spec["shape"]).copy()
            off += n
    except (KeyError, TypeError, ValueError) as e:
        raise CorruptEntry(f"bad array spec ({e})") from None
    if off != len(payload):
        raise CorruptEntry("payload length does not match the array specs")
    return arrays, header.get("meta", {})


def get_or_build(
    root: Path,
    kind: str,
    key: str,
    build: Callable[[], tuple[dict[str, np.ndarray], dict[str, Any]]],
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The entry for `key`, built (and stored) when absent, corrupt or unreadable."""
    path = entry_path(root, kind, key)
    if not _disabled():
        try:
            out = read_entry(path, key)
            remote.touch(path)
            _count(f"{kind}_hit")
            return out
        except FileNotFoundError:
            pass
        except (CorruptEntry, OSError):
            _count("corrupt")
            with contextlib.suppress(OSError):
                path.unlink()
    _count(f"{kind}_miss")
    arrays, meta = build()
    if not _disabled():
        # a full or read-only cache disk slows things down but breaks nothing
        with contextlib.suppress(OSError):
            write_entry(path, key, arrays, meta)
    return arrays, meta


# ---- the two things load_recording needs ----


def _localize(path: str, rec: Recording, cache_dir: str | None) -> str:
    """A local copy of `path`; a missing remote object is a bad recording, other remote errors propagate."""
    try:
        return remote.fetch(path, cache_dir)
    except remote.RemoteNotFoundError as e:
        if "bucket" in str(e) and "does not exist" in str(e):
            raise
        raise BadRecordingError(rec, path, str(e).removeprefix(f"{remote.redact(path)}: ")) from None


def audio_features(
    rec: Recording,
    data: Any,
    compute: Callable[[str], tuple[torch.Tensor, int]],
    code: Sequence[object],
) -> tuple[torch.Tensor, int]:
    """(log-mel frames of the whole audio [T, n_mels], number of audio samples at data.sample_rate).

    `compute(local_audio_path)` does the decoding on a miss; `code` (the modules and functions it runs) is
    part of the key. BadRecordingErrors name the original path.
    """
    settings = {"sample_rate": data.sample_rate, "n_mels": data.n_mels, "frame_rate": data.frame_rate}
    feats, meta = audio_array(rec, data.cache_dir, "features", {"kind": "logmel", **settings}, compute, code)
    return feats, int(meta["n_samples"])


def audio_array(
    rec: Recording,
    cache_dir: str | None,
    kind: str,
    settings: dict[str, Any],
    compute: Callable[[str], tuple[torch.Tensor, int]],
    code: Sequence[object],
) -> tuple[torch.Tensor, dict[str, Any]]:
    """An array computed from a recording's audio alone (log-mel frames, a model's inputs), cached under
    `kind` and keyed by the audio's content, `settings` and `code`; meta holds `n_samples` from `compute`.
    One tensor per key is shared in this process while alive (every listener of a song)."""
    local = _localize(rec.audio_path, rec, cache_dir)
    key = settings_hash(
        {"v": FEATURE_CODE_VERSION, "code": code_version(code), "audio": content_hash(local), **settings}
    )

    def build() -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        try:
            arr, n_samples = compute(local)
        except BadRecordingError as e:
            path = rec.audio_path if e.path == local else e.path
            raise BadRecordingError(rec, path, e.reason) from None
        return {"features": arr.detach().cpu().numpy()}, {"n_samples": int(n_samples)}

    with _key_lock(key):
        alive = _ALIVE.get(key)
        if alive is not None and key in _ALIVE_META:
            _count(f"{kind}_hit")
            return alive, {"n_samples": _ALIVE_META[key]}
        arrays, meta = get_or_build(cache_root(cache_dir), kind, key, build)
        arr = torch.from_numpy(arrays["features"])
        _ALIVE[key] = arr
        _ALIVE_META[key] = int(meta["n_samples"])
    return arr, meta


def target(
    rec: Recording,
    data: Any,
    compute: Callable[[Recording], tuple[torch.Tensor, dict[str, float]]],
    code: Sequence[object],
) -> tuple[torch.Tensor, dict[str, float]]:
    """(targets on t = j / target_rate up to the signals' last sample [T, C], extent numbers from `compute`).

    `compute(local_rec)` reads and resamples on a miss (`local_rec` is `rec` with local signal paths); `code`
    (the modules and functions it runs) is part of the key.
    BadRecordingErrors name the original paths.
    """
    signals = {}
    parts = {}
    for ch in data.channels:
        src = rec.signals.get(ch)
        if src is None:
            raise BadRecordingError(rec, rec.audio_path, f"no signal source for channel {ch!r}")
        local = _localize(src.path, rec, data.cache_dir)
        signals[ch] = dataclasses.replace(src, path=local)
        parts[ch] = [content_hash(local), src.column, src.time_column, src.rate]
    key = settings_hash(
        {
            "kind": "target",
            "v": TARGET_CODE_VERSION,
            "code": code_version(code),
            "signals": parts,
            "channels": list(data.channels),
            "target_rate": data.target_rate,
            "offset": rec.offset_seconds,
        }
    )
    local_rec = dataclasses.replace(rec, signals={**rec.signals, **signals})
    back = {s.path: rec.signals[ch].path for ch, s in signals.items()}

    def build() -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        try:
            tgt, extent = compute(local_rec)
        except BadRecordingError as e:
            raise BadRecordingError(rec, back.get(e.path, e.path), e.reason) from None
        arrays = {"target": tgt.detach().cpu().numpy().astype(np.float32)}
        return arrays, {k: float(v) for k, v in extent.items()}

    with _key_lock(key):
        arrays, meta = get_or_build(cache_root(data.cache_dir), "target", key, build)
    return torch.from_numpy(arrays["target"]), meta


def extend_target(target: torch.Tensor, n: int) -> torch.Tensor:
    """The first `n` rows of a cached target, NaN-padded past its end (past the signals' last sample)."""
    if n <= target.shape[0]:
        return target[:n]
    pad = torch.full((n - target.shape[0], *target.shape[1:]), float("nan"), dtype=target.dtype)
    return torch.cat([target, pad])


def forget_memory() -> None:
    """Drop what this process holds (shared feature tensors, file hashes): the next load reads the disk
    cache as a new process would. For tests and benchmarks."""
    with _LOCK:
        _ALIVE.clear()
        _ALIVE_META.clear()
        _HASHES.clear()
