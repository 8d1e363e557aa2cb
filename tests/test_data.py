"""Data layer on real files: synthetic corpus, decoding, alignment, splits, manifest errors, bad input."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import fsspec
import numpy as np
import pytest
import soundfile as sf
import torch
from _util import tiny_config

from a2b_pipeline.configs import DataConfig, DatasetConfig
from a2b_pipeline.data.audio import read_audio
from a2b_pipeline.data.datasets import NormStats, WindowDataset, compute_norm_stats, load_recording
from a2b_pipeline.data.features import log_mel
from a2b_pipeline.data.manifest import ManifestError, read_manifest, read_manifest_listing, summarize_manifest
from a2b_pipeline.data.pipeline import loader_weights, make_loader, prepare_data
from a2b_pipeline.data.recording import BadRecordingError, Recording, SignalSource
from a2b_pipeline.data.splits import split_counts, split_recordings
from a2b_pipeline.data.synthetic import write_synthetic_corpus
from a2b_pipeline.data.targets import read_signal


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("A2B_CACHE_DIR", str(tmp_path / "cache"))  # the feature cache stays in tmp_path


def data_cfg(**kw) -> DataConfig:
    base = {"datasets": [DatasetConfig(name="d", manifest="unused.csv")], "channels": ["eda", "hr"]}
    return DataConfig(**{**base, **kw})


# ---- synthetic corpus and decoding ----


def test_synthetic_corpus_is_deterministic_and_decodes(tmp_path, synth_corpus):
    again = write_synthetic_corpus(
        tmp_path / "again", subjects=4, recordings_per_subject=2, seconds=16.0, seed=0
    )
    for rel in ("manifest.csv", "audio/s02_r01.wav", "signals/s02_r01.csv"):
        assert (synth_corpus.parent / rel).read_bytes() == (again.parent / rel).read_bytes()

    recs = read_manifest(str(synth_corpus), "syn", channels=["eda", "hr"])
    assert len(recs) == 8 and len({r.subject_id for r in recs}) == 4
    assert all(-2.0 <= r.offset_seconds <= 0.0 for r in recs)  # signals start before the audio
    info = sf.info(recs[0].audio_path)
    assert (info.samplerate, info.channels, info.duration) == (16000, 1, 16.0)

    data = data_cfg()
    lr = load_recording(recs[0], data)
    assert lr.features.shape == (16 * 50, 32) and lr.target.shape == (16 * 4, 2)
    assert torch.isfinite(lr.features).all() and torch.isfinite(lr.target).all()
    assert 2.0 < lr.target[:, 0].mean() < 14.0 and 55.0 < lr.target[:, 1].mean() < 115.0  # eda uS, hr bpm

    summary = summarize_manifest(str(synth_corpus))
    assert summary["recordings"] == 8 and summary["subjects"] == 4
    assert summary["channels"] == ["eda", "hr"] and math.isclose(summary["hours"], 8 * 16 / 3600)


def test_synthetic_skin_conductance_rises_after_sound_onsets(synth_corpus):
    """Skin conductance responses follow acoustic events 1-3 s later (a2b_pipeline/data/synthetic.py):
    read from the written .wav and .csv files, the rises of the EDA signal correlate with the loudness onsets
    1.25-3.5 s earlier, and not with those after them (a response never precedes its event)."""
    recs = read_manifest(str(synth_corpus), "syn", channels=["eda"])
    lags = range(-8, 15)  # target samples at 4 Hz: -2 s .. +3.5 s
    mean_r = dict.fromkeys(lags, 0.0)
    for rec in recs:
        lr = load_recording(rec, data_cfg(channels=["eda"]))
        energy = lr.features.exp().sum(1).log()
        loud = torch.nn.functional.adaptive_avg_pool1d(energy[None, None], lr.target.shape[0])[0, 0]
        onsets, rises = torch.relu(loud.diff()), torch.relu(lr.target[:, 0].diff())
        for k in lags:
            a, b = (onsets[: len(onsets) - k], rises[k:]) if k >= 0 else (onsets[-k:], rises[:k])
            mean_r[k] += float(torch.corrcoef(torch.stack([a, b]))[0, 1]) / len(recs)
    after = sum(mean_r[k] for k in range(5, 15)) / 10  # the signal 1.25-3.5 s after the audio
    before = sum(mean_r[k] for k in range(-8, 1)) / 9  # the signal up to 2 s before it
    assert after > 0.05 and after > before + 0.05, mean_r


def test_read_audio_resamples_mixes_and_filters(tmp_path):
    sr = 44100
    t = np.arange(sr * 2) / sr
    left = 0.5 * np.sin(2 * np.pi * 1000 * t) + 0.3 * np.sin(2 * np.pi * 12000 * t)  # 12 kHz > new Nyquist
    stereo = np.stack([left, left], 1).astype(np.float32)
    for ext in ("wav", "flac", "mp3"):
        path = tmp_path / f"tone.{ext}"
        sf.write(path, stereo, sr, format=ext.upper())
        wave = read_audio(str(path), 16000)
        assert wave.dtype == torch.float32 and wave.ndim == 1
        assert abs(wave.shape[0] - 32000) <= (0 if ext != "mp3" else 2000)
        mid = wave[4000:28000].numpy()
        spectrum = np.abs(np.fft.rfft(mid * np.hanning(len(mid))))
        freqs = np.fft.rfftfreq(len(mid), 1 / 16000)
        assert abs(freqs[spectrum.argmax()] - 1000) < 5
        # 12 kHz would alias to 4 kHz without the low-pass
        assert spectrum[np.abs(freqs - 4000) < 50].max() < 0.01 * spectrum.max()
        assert abs(np.sqrt(2) * mid.std() - 0.5) < 0.03  # the 1 kHz amplitude is kept

    # fsspec URLs go through the same decoder
    with fsspec.open("memory://a2b-test/tone.wav", "wb") as f:
        f.write((tmp_path / "tone.wav").read_bytes())
    assert read_audio("memory://a2b-test/tone.wav", 16000).shape == (32000,)


def test_log_mel_non_integer_hop_keeps_frame_count():
    wave = torch.randn(22050 * 3)
    assert log_mel(wave, 22050, 40, 100.0).shape == (300, 40)
    assert log_mel(torch.randn(16000), 16000, 32, 50.0).shape == (50, 32)


# ---- alignment ----


def _write_recording(dir_: Path, *, burst: tuple[float, float], seconds: float, offset: float) -> Recording:
    """Quiet audio with a loud burst; the signal is 1 exactly while the burst plays (in audio time)."""
    sr = 16000
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * sr)) / sr
    audio = 0.001 * rng.standard_normal(t.size)
    on = (t >= burst[0]) & (t < burst[1])
    audio[on] = 0.5 * rng.standard_normal(on.sum())
    sf.write(dir_ / "burst.wav", audio.astype(np.float32), sr)
    # offset < 0: the signal started recording before the audio; signal time = audio time - offset
    t_sig = np.arange(int((seconds - offset) * 32)) / 32
    t_audio = t_sig + offset
    value = ((t_audio >= burst[0]) & (t_audio < burst[1])).astype(float)
    np.savetxt(
        dir_ / "burst.csv",
        np.stack([t_sig, value, 70 + value], 1),
        delimiter=",",
        header="time,eda,hr",
        comments="",
    )
    sig = str(dir_ / "burst.csv")
    return Recording(
        "d",
        "burst",
        "s1",
        str(dir_ / "burst.wav"),
        {"eda": SignalSource(sig, "eda"), "hr": SignalSource(sig, "hr")},
        offset_seconds=offset,
    )


def test_window_audio_and_target_cover_the_same_seconds(tmp_path):
    rec = _write_recording(tmp_path, burst=(10.0, 11.0), seconds=20.0, offset=-1.5)
    data = data_cfg(normalize="none")
    lr = load_recording(rec, data)
    ds = WindowDataset([lr], data, compute_norm_stats([lr], [lr], data))
    assert len(ds) == 4  # starts at 0, 4, 8, 12 s; a window at 16 s would run past the end
    assert ds.window_info(2) == (rec, 8.0)

    raw_energy = lr.features.exp().sum(1)
    x, y = ds[2]
    assert x.shape == (400, 32) and y.shape == (32, 2)
    loud = (raw_energy[400:800] > 100 * raw_energy[:400].median()).nonzero()[:, 0]
    assert abs(loud[0].item() - 100) <= 2 and abs(loud[-1].item() - 150) <= 2  # frames of 10..11 s
    high = (y[:, 0] > 0.5).nonzero()[:, 0].tolist()
    assert high == [8, 9, 10, 11]  # target samples at 10, 10.25, 10.5, 10.75 s
    assert torch.equal(y[:, 1] - 70, y[:, 0])


def test_read_signal_shifts_by_offset(tmp_path):
    rec = _write_recording(tmp_path, burst=(3.0, 4.0), seconds=10.0, offset=0.5)
    y = read_signal(rec, ["eda"], 4.0)
    assert torch.isnan(y[:2, 0]).all()  # before the signal started (audio 0..0.5 s)
    assert (y[:, 0] > 0.5).nonzero()[:, 0].tolist() == [12, 13, 14, 15]


# ---- splits ----


def _recs(subjects: list[str], per: int = 2) -> list[Recording]:
    return [Recording("d", f"{s}_{i}", s, f"{s}_{i}.wav", {}) for s in subjects for i in range(per)]


def test_splits_are_subject_disjoint_deterministic_and_stable():
    subjects = [f"p{i}" for i in range(10)]
    recs = _recs(subjects)
    a = split_recordings(recs, 0.2, 0.2, seed=0)
    b = split_recordings(list(reversed(recs)), 0.2, 0.2, seed=0)
    who = {k: {r.subject_id for r in v} for k, v in a.items()}
    assert who == {k: {r.subject_id for r in v} for k, v in b.items()}
    assert [len(who[k]) for k in ("train", "val", "test")] == [6, 2, 2]
    assert not (who["train"] & who["val"] or who["train"] & who["test"] or who["val"] & who["test"])
    assert sum(len(v) for v in a.values()) == len(recs)
    assert who != {k: {r.subject_id for r in v} for k, v in split_recordings(recs, 0.2, 0.2, 1).items()}

    # a new subject moves at most the subjects at the two split boundaries
    c = split_recordings(_recs([*subjects, "p_new"]), 0.2, 0.2, seed=0)
    where_a = {r.subject_id: k for k, v in a.items() for r in v}
    where_c = {r.subject_id: k for k, v in c.items() for r in v}
    assert sum(where_a[s] != where_c[s] for s in subjects) <= 2


@pytest.mark.parametrize("n", [3, 4, 5, 7])
def test_every_split_non_empty_from_three_subjects(n):
    assert all(k >= 1 for k in split_counts(n, 0.1, 0.1))
    parts = split_recordings(_recs([f"p{i}" for i in range(n)]), 0.05, 0.05, seed=3)
    assert all(parts[k] for k in ("train", "val", "test"))


# ---- manifests ----


def test_manifest_errors_name_file_row_and_column(tmp_path, synth_corpus):
    lines = synth_corpus.read_text().splitlines()
    bad = tmp_path / "corpus" / "bad.csv"

    bad.write_text("recording_id,subject_id,audio_path\nx,y,z\n")
    with pytest.raises(ManifestError, match=r"bad\.csv: missing column\(s\) \['signal_path'\]"):
        read_manifest(str(bad), "d")

    rows = [lines[0], lines[1], lines[2].rsplit(",", 1)[0] + ",soon"]
    bad.write_text("\n".join(rows) + "\n")
    with pytest.raises(ManifestError, match=r"bad\.csv, row 2: column 'offset_seconds': not a finite number"):
        read_manifest(str(bad), "d")

    rows = [lines[0], lines[1], lines[2].replace("audio/", "nowhere/")]
    bad.write_text("\n".join(rows) + "\n")
    with pytest.raises(ManifestError, match=r"row 2: column 'audio_path': file not found: .*nowhere"):
        read_manifest(str(bad), "d")
    listing = read_manifest_listing(str(bad), "d", channels=["eda"], on_bad="skip")
    assert len(listing.recordings) == 1 and len(listing.skipped) == 1 and listing.skipped[0].row == 2

    rows = [lines[0], lines[1], lines[1]]
    bad.write_text("\n".join(rows) + "\n")
    with pytest.raises(ManifestError, match="row 2: column 'recording_id': duplicate"):
        read_manifest(str(bad), "d")


def test_jsonl_manifest_matches_csv(synth_corpus):
    header, *rows = [line.split(",") for line in synth_corpus.read_text().splitlines()]
    jsonl = synth_corpus.with_name("manifest.jsonl")
    objs = [dict(zip(header, r, strict=True)) for r in rows]
    for o in objs:
        o["offset_seconds"] = float(o["offset_seconds"])
    jsonl.write_text("\n".join(json.dumps(o) for o in objs) + "\n")
    from_csv = read_manifest(str(synth_corpus), "d")
    from_jsonl = read_manifest(str(jsonl), "d")
    strip = [(r.recording_id, r.audio_path, r.signals, r.offset_seconds) for r in from_csv]
    assert strip == [(r.recording_id, r.audio_path, r.signals, r.offset_seconds) for r in from_jsonl]
    assert set(from_csv[0].signals) == {"eda", "hr"}  # discovered from the signal file's header


def test_npz_signal_files_load_like_csv(tmp_path, synth_corpus):
    """The manifest format allows .npz signal files (`time` + one array per channel): same windows."""
    import csv

    rows = list(csv.DictReader(synth_corpus.open()))
    for r in rows:
        csv_path = synth_corpus.parent / r["signal_path"]
        table = list(csv.DictReader(csv_path.open()))
        columns = {k: np.array([float(t[k]) for t in table]) for k in table[0]}
        np.savez(csv_path.with_suffix(".npz"), **columns)
        r["signal_path"] = str(Path(r["signal_path"]).with_suffix(".npz"))
    npz_manifest = synth_corpus.with_name("manifest_npz.csv")
    with npz_manifest.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    data = data_cfg()
    from_csv, from_npz = read_manifest(str(synth_corpus), "d"), read_manifest(str(npz_manifest), "d")
    assert set(from_npz[0].signals) == {"eda", "hr"} and from_npz[0].signals["eda"].path.endswith(".npz")
    for a, b in zip(from_csv, from_npz, strict=True):
        ra, rb = load_recording(a, data), load_recording(b, data)
        assert torch.equal(ra.features, rb.features) and torch.equal(ra.target, rb.target), a.recording_id


# ---- bad recordings ----


def test_bad_recordings_raise_with_path(tmp_path, synth_corpus):
    rec = read_manifest(str(synth_corpus), "syn", channels=["eda", "hr"])[0]
    data = data_cfg()
    sig = rec.signals["eda"].path
    good_csv = Path(sig).read_text()

    def expect(match: str, path: str) -> None:
        with pytest.raises(BadRecordingError, match=match) as e:
            load_recording(rec, data)
        assert e.value.path == path and "row 1" in str(e.value) and path in str(e.value)

    lines = good_csv.splitlines()
    Path(sig).write_text(
        "\n".join([*lines[:5], lines[5].replace(lines[5].split(",")[1], "nan", 1), *lines[6:]])
    )
    expect("column 'eda' has NaN/inf values", sig)
    Path(sig).write_text("\n".join([*lines[:5], lines[6], lines[5], *lines[7:]]))
    expect("time is not strictly increasing", sig)
    Path(sig).write_text(good_csv.replace("time,eda,hr", "t,eda,hr"))
    expect("missing time column 'time'", sig)
    Path(sig).write_text(good_csv.replace("time,eda,hr", "time,gsr,hr"))
    expect("missing channel column 'eda'", sig)
    Path(sig).write_text("\n".join(lines[: len(lines) // 2]) + "\n")
    expect("signal ends at .* but the audio lasts 16.00 s", sig)
    Path(sig).write_text(good_csv)

    audio = rec.audio_path
    Path(audio).write_bytes(b"RIFF not really a wave file")
    expect("cannot decode audio", audio)
    sf.write(audio, np.zeros((0, 1), np.float32), 16000)
    expect("audio is empty", audio)
    sf.write(audio, np.zeros(16000 * 5, np.float32), 16000)
    Path(sig).write_text("\n".join(lines[: 1 + 32 * 7]) + "\n")
    expect("too short: .* a window is 8.0 s", audio)


def test_prepare_data_skip_mode_records_bad_recordings(tmp_path, synth_corpus):
    manifest = str(synth_corpus)
    recs = read_manifest(manifest, "syn", channels=["eda"])
    Path(recs[1].audio_path).write_bytes(b"garbage")
    lines = Path(recs[4].signals["eda"].path).read_text().splitlines()
    lines[10] = lines[10].split(",")[0] + ",inf,70"
    Path(recs[4].signals["eda"].path).write_text("\n".join(lines) + "\n")

    raw = ["data.datasets.0.manifest=" + manifest]
    cfg = tiny_config(tmp_path, raw + ["data.datasets.0.type=manifest", "data.channels=[eda]"])
    with pytest.raises(BadRecordingError, match=recs[1].audio_path):
        prepare_data(cfg)

    cfg = tiny_config(
        tmp_path, raw + ["data.datasets.0.type=manifest", "data.channels=[eda]", "data.on_bad_recording=skip"]
    )
    prepared = prepare_data(cfg)
    assert sorted((s.path, s.row, s.dataset) for s in prepared.skipped) == [
        (recs[1].audio_path, 2, "synA"),
        (recs[4].signals["eda"].path, 5, "synA"),
    ]
    assert "cannot decode" in prepared.skipped[0].reason
    assert sum(len(v) for v in (prepared.recordings[s]["synA"] for s in ("train", "val", "test"))) == 6


# ---- the whole pipeline ----


def test_prepare_data_and_loaders(tmp_path):
    cfg = tiny_config(tmp_path)
    prepared = prepare_data(cfg)
    assert list(prepared.splits["train"]) == ["synA", "synB"]
    for name in ("synA", "synB"):
        subjects = [{r.subject_id for r in prepared.recordings[s][name]} for s in ("train", "val", "test")]
        assert all(subjects) and not (
            subjects[0] & subjects[1] or subjects[0] & subjects[2] or subjects[1] & subjects[2]
        )
        # 16 s recordings, 8 s windows every 4 s: 3 windows each
        for s in ("train", "val", "test"):
            assert len(prepared.splits[s][name]) == 3 * len(prepared.recordings[s][name])

    # normalisation statistics come from the train split: train features are ~standardised
    x = torch.stack([prepared.splits["train"][n][i][0] for n in ("synA", "synB") for i in range(3)])
    assert x.shape[1:] == (400, 16) and abs(x.mean()) < 0.3
    norm = prepared.norm
    assert NormStats.from_dict(json.loads(json.dumps(norm.to_dict()))) == norm
    assert norm.mode == "subject" and len(norm.subjects) == 8  # every subject of both datasets

    # stable version; a changed file or data setting gives a new one
    assert prepare_data(cfg).data_version == prepared.data_version
    wav = prepared.recordings["train"]["synA"][0].audio_path
    st = os.stat(wav)
    os.utime(wav, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert prepare_data(cfg).data_version != prepared.data_version
    other = tiny_config(tmp_path, ["data.hop_seconds=2"])
    assert prepare_data(other).data_version != prepared.data_version
    assert (
        prepare_data(tiny_config(tmp_path, ["data.batch_size=2"])).data_version
        == prepare_data(cfg).data_version
    )

    loader = make_loader(prepared, cfg, "train")
    assert loader.dataset_names == ["synA", "synB"] and loader.weights == [1.0, 0.5]
    assert loader_weights(loader, cfg, 100) == [1.0, 0.5]
    batches = list(loader)
    assert (
        len(batches)
        == len(loader)
        == sum(math.ceil(len(prepared.splits["train"][n]) / 4) for n in ("synA", "synB"))
    )
    xb, yb = batches[0]
    assert xb.shape[1:] == (400, 16) and yb.shape[1:] == (32, 2) and xb.dtype == yb.dtype == torch.float32
    assert [b[0].shape for b in batches] == [b[0].shape for b in make_loader(prepared, cfg, "train")]
    val = make_loader(prepared, cfg, "val")
    assert val.weights == [1.0, 1.0] and sum(b[0].shape[0] for b in val) == sum(
        len(d) for d in prepared.splits["val"].values()
    )
