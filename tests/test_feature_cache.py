"""data/feature_cache.py: the entry format byte by byte, every refusal of a damaged entry, hits, misses and
rebuilds counted, keys that change with content, settings, code and offset (and nothing else), errors that
name the original paths, and the NaN-padded extension of a target."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import xxhash

from a2b_pipeline.data import feature_cache as fc
from a2b_pipeline.data.recording import BadRecordingError, Recording, SignalSource


@pytest.fixture(autouse=True)
def _fresh() -> None:
    fc.forget_memory()
    fc.reset_stats()


def _stats(**want: int) -> dict[str, int]:
    return {k: fc.STATS[k] for k in want}


def test_entry_layout_and_round_trip(tmp_path: Path) -> None:
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([7, -1], dtype=np.int64)}
    path = fc.entry_path(tmp_path, "features", "abcdef")
    assert path == tmp_path / "features" / "ab" / "abcdef.a2bc"
    fc.write_entry(path, "abcdef", arrays, {"n_samples": 5})
    blob = path.read_bytes()
    assert blob.startswith(fc.MAGIC)
    (hlen,) = struct.unpack_from("<Q", blob, len(fc.MAGIC))
    start = len(fc.MAGIC) + 8
    header = json.loads(blob[start : start + hlen])
    payload = blob[start + hlen :]
    assert payload == arrays["a"].tobytes() + arrays["b"].tobytes()
    assert header["xxh3_128"] == xxhash.xxh3_128_hexdigest(payload) and header["key"] == "abcdef"
    assert header["arrays"][0] == {"name": "a", "dtype": "<f4", "shape": [2, 3], "nbytes": 24}
    got, meta = fc.read_entry(path, "abcdef")
    assert meta == {"n_samples": 5} and list(got) == ["a", "b"]
    for k in arrays:
        assert got[k].dtype == arrays[k].dtype
        np.testing.assert_array_equal(got[k], arrays[k])
    assert list(path.parent.iterdir()) == [path]  # no temporary left


def _raw_entry(path: Path, header: dict, payload: bytes) -> None:
    h = json.dumps(header).encode()
    path.write_bytes(fc.MAGIC + struct.pack("<Q", len(h)) + h + payload)


def test_damaged_entries_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "e.a2bc"
    fc.write_entry(path, "k", {"a": np.arange(4, dtype=np.float32)}, {})
    good = path.read_bytes()
    with pytest.raises(fc.CorruptEntry, match="another key"):
        fc.read_entry(path, "other")
    for blob, why in [
        (b"XXXX" + good[4:], "bad magic"),
        (good[: len(fc.MAGIC) + 3], "bad magic"),
        (good[:-1], "checksum mismatch"),
        (good[:-1] + bytes([good[-1] ^ 1]), "checksum mismatch"),
        (good[: len(fc.MAGIC) + 8] + b"{not json" + good[len(fc.MAGIC) + 17 :], "unreadable header"),
    ]:
        path.write_bytes(blob)
        with pytest.raises(fc.CorruptEntry, match=why):
            fc.read_entry(path, "k")
    payload = np.arange(4, dtype=np.float32).tobytes()
    spec = {"name": "a", "dtype": "<f4", "shape": [3], "nbytes": 12}  # a spec shorter than the payload
    _raw_entry(path, {"key": "k", "arrays": [spec], "xxh3_128": xxhash.xxh3_128_hexdigest(payload)}, payload)
    with pytest.raises(fc.CorruptEntry, match="payload length does not match"):
        fc.read_entry(path, "k")
    # an entry of the first format: a sha256 of the payload
    spec = {"name": "a", "dtype": "<f4", "shape": [2, 2], "nbytes": 16}
    _raw_entry(path, {"key": "k", "arrays": [spec], "sha256": hashlib.sha256(payload).hexdigest()}, payload)
    np.testing.assert_array_equal(fc.read_entry(path, "k")[0]["a"], np.arange(4.0).reshape(2, 2))
    _raw_entry(path, {"key": "k", "arrays": [spec], "sha256": hashlib.sha256(b"x").hexdigest()}, payload)
    with pytest.raises(fc.CorruptEntry, match="checksum mismatch"):
        fc.read_entry(path, "k")


def test_get_or_build_counts_hits_misses_and_rebuilds(tmp_path: Path, monkeypatch) -> None:
    calls = []

    def build() -> tuple[dict[str, np.ndarray], dict]:
        calls.append(1)
        return {"features": np.full(3, float(len(calls)), dtype=np.float32)}, {"n": len(calls)}

    first = fc.get_or_build(tmp_path, "features", "k1", build)
    again = fc.get_or_build(tmp_path, "features", "k1", build)
    assert len(calls) == 1 and again[1] == first[1] == {"n": 1}
    assert _stats(features_hit=0, features_miss=0, corrupt=0) == {
        "features_hit": 1,
        "features_miss": 1,
        "corrupt": 0,
    }
    path = fc.entry_path(tmp_path, "features", "k1")
    path.write_bytes(path.read_bytes()[:-2])  # truncated
    rebuilt = fc.get_or_build(tmp_path, "features", "k1", build)
    assert len(calls) == 2 and rebuilt[1] == {"n": 2} and fc.STATS["corrupt"] == 1
    assert fc.read_entry(path, "k1")[1] == {"n": 2}  # rewritten whole
    monkeypatch.setenv("A2B_FEATURE_CACHE", "off")
    fc.get_or_build(tmp_path, "features", "k2", build)
    fc.get_or_build(tmp_path, "features", "k1", build)  # not read either
    assert len(calls) == 4 and not fc.entry_path(tmp_path, "features", "k2").exists()


def test_hashes(tmp_path: Path) -> None:
    f = tmp_path / "a.bin"
    f.write_bytes(b"x" * (3 << 20))
    assert fc.content_hash(str(f)) == hashlib.sha256(b"x" * (3 << 20)).hexdigest()
    tick = time.time_ns()  # a file system whose mtime has a coarse tick: both writes in the same one
    os.utime(f, ns=(tick, tick))
    assert fc.content_hash(str(f)) == hashlib.sha256(b"x" * (3 << 20)).hexdigest()
    f.write_bytes(b"y" * (3 << 20))  # same size, same inode, same mtime: still noticed
    os.utime(f, ns=(tick, tick))
    assert fc.content_hash(str(f)) == hashlib.sha256(b"y" * (3 << 20)).hexdigest()
    os.utime(f, ns=(tick - 10**10, tick - 10**10))  # settled (10 s old): remembered from now on
    assert fc.content_hash(str(f)) == hashlib.sha256(b"y" * (3 << 20)).hexdigest()
    assert (os.path.abspath(f), 3 << 20, tick - 10**10, os.stat(f).st_ino) in fc._HASHES
    s = {"b": 1, "a": [1.5, "x"]}
    assert fc.settings_hash(s) == fc.settings_hash({"a": [1.5, "x"], "b": 1})
    assert fc.settings_hash(s) == hashlib.sha256(b'{"a":[1.5,"x"],"b":1}').hexdigest()
    assert fc.code_version([fc.extend_target]) == fc.code_version([fc.extend_target])
    assert fc.code_version([fc.extend_target]) != fc.code_version([fc.forget_memory])
    assert len(fc.code_version([fc])) == 16


def _rec(tmp_path: Path, **kw) -> Recording:
    sig = {"eda": SignalSource(str(tmp_path / "s.csv"), "EDA")}
    return Recording(
        **{
            "dataset": "d",
            "recording_id": "r",
            "subject_id": "s",
            "audio_path": str(tmp_path / "a.wav"),
            "signals": sig,
            **kw,
        }
    )


def _data(tmp_path: Path, **kw) -> SimpleNamespace:
    base = dict(sample_rate=8000, n_mels=4, frame_rate=25.0, target_rate=4.0, channels=["eda"])
    return SimpleNamespace(**{**base, "cache_dir": str(tmp_path / "cache"), **kw})


def test_audio_features_decoded_once_per_content_and_settings(tmp_path: Path) -> None:
    (tmp_path / "a.wav").write_bytes(b"audio one")
    calls: list[str] = []

    def compute(local: str) -> tuple[torch.Tensor, int]:
        calls.append(local)
        return torch.full((3, 4), float(len(calls))), 800

    rec, data = _rec(tmp_path), _data(tmp_path)
    code = [compute]
    a, n = fc.audio_features(rec, data, compute, code)
    b, n2 = fc.audio_features(rec, data, compute, code)
    assert n == n2 == 800 and b is a and calls == [str(tmp_path / "a.wav")]  # one tensor while alive
    assert (fc.cache_root(data.cache_dir) / "features").is_dir()
    fc.forget_memory()
    c, n = fc.audio_features(rec, data, compute, code)  # a new process: the disk entry
    assert len(calls) == 1 and c is not a and torch.equal(c, a) and n == 800 and fc.STATS["features_hit"] == 2
    fc.audio_features(rec, _data(tmp_path, n_mels=5), compute, code)  # another setting
    fc.audio_features(rec, _data(tmp_path, frame_rate=50.0), compute, code)
    fc.audio_features(rec, _data(tmp_path, sample_rate=16000), compute, code)
    fc.audio_features(rec, data, compute, [compute, fc.extend_target])  # other code
    assert len(calls) == 5
    fc.forget_memory()
    (tmp_path / "a.wav").write_bytes(b"audio two")  # edited
    d, _ = fc.audio_features(rec, data, compute, code)
    assert len(calls) == 6 and float(d[0, 0]) == 6.0
    fc.audio_features(_rec(tmp_path, recording_id="other listener", subject_id="t"), data, compute, code)
    assert len(calls) == 6  # the same song for another listener


def test_audio_errors_name_the_original_path(tmp_path: Path) -> None:
    rec = _rec(tmp_path, row=3, audio_path=f"file://{tmp_path / 'a.wav'}")  # read at tmp_path/a.wav
    with pytest.raises(BadRecordingError, match=r"row 3.*a\.wav: .*no such file") as e:
        fc.audio_features(rec, _data(tmp_path), lambda p: (torch.zeros(1, 4), 1), [])
    assert e.value.row == 3
    (tmp_path / "a.wav").write_bytes(b"junk")

    def bad(local: str) -> tuple[torch.Tensor, int]:
        raise BadRecordingError(None, local, "cannot decode")

    with pytest.raises(BadRecordingError, match=r"row 3 .*: .*a\.wav: cannot decode") as e:
        fc.audio_features(rec, _data(tmp_path), bad, [])
    assert e.value.path == rec.audio_path and e.value.path.startswith("file://") and e.value.row == 3


def test_targets_keyed_by_signals_and_offset(tmp_path: Path) -> None:
    (tmp_path / "s.csv").write_text("time,EDA\n0,1\n")
    calls: list[Recording] = []

    def compute(local_rec: Recording) -> tuple[torch.Tensor, dict[str, float]]:
        calls.append(local_rec)
        return torch.arange(4, dtype=torch.float64).reshape(4, 1), {"end": 1.0}

    data = _data(tmp_path)
    t, meta = fc.target(_rec(tmp_path), data, compute, [compute])
    assert t.dtype == torch.float32 and t.flatten().tolist() == [0, 1, 2, 3] and meta == {"end": 1.0}
    fc.target(_rec(tmp_path), data, compute, [compute])
    assert len(calls) == 1 and _stats(target_hit=0, target_miss=0) == {"target_hit": 1, "target_miss": 1}
    fc.target(_rec(tmp_path, offset_seconds=0.5), data, compute, [compute])
    fc.target(_rec(tmp_path), _data(tmp_path, target_rate=8.0), compute, [compute])
    other = {"eda": SignalSource(str(tmp_path / "s.csv"), "EDA", rate=4.0, time_column=None)}
    fc.target(_rec(tmp_path, signals=other), data, compute, [compute])
    assert len(calls) == 4
    fc.target(_rec(tmp_path, recording_id="r2", duration_seconds=9.0), data, compute, [compute])
    assert len(calls) == 4  # only the signals, the channels, the rate and the offset shape a target
    with pytest.raises(BadRecordingError, match="no signal source for channel 'hr'"):
        fc.target(_rec(tmp_path), _data(tmp_path, channels=["eda", "hr"]), compute, [compute])

    def bad(local_rec: Recording) -> tuple[torch.Tensor, dict[str, float]]:
        assert local_rec.signals["eda"].path == str(tmp_path / "s.csv")  # read locally
        raise BadRecordingError(local_rec, local_rec.signals["eda"].path, "no EDA column")

    url = {"eda": SignalSource(f"file://{tmp_path / 's.csv'}", "EDA")}
    with pytest.raises(BadRecordingError, match=r"s\.csv: no EDA column") as e:
        fc.target(_rec(tmp_path, offset_seconds=2.0, signals=url), data, bad, [bad])
    assert e.value.path == f"file://{tmp_path / 's.csv'}"  # named as the manifest names it


def test_extend_target() -> None:
    t = torch.arange(6.0).reshape(3, 2)
    assert torch.equal(fc.extend_target(t, 2), t[:2])
    assert torch.equal(fc.extend_target(t, 3), t)
    out = fc.extend_target(t, 5)
    assert out.shape == (5, 2) and torch.equal(out[:3], t) and out[3:].isnan().all() and out.dtype == t.dtype
