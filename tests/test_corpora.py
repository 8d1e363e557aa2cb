"""PMEmo2019 and HKU956 adapters on small fixture corpora of real files (mp3 through soundfile, wide EDA CSVs
with an irregular grid and prefixed headers, an HKU956 tree with a missing EDA file and HR beside EDA);
the feature cache; `a2b corpus`."""

from __future__ import annotations

import json
import multiprocessing
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from corpus_fixtures import write_clip, write_hku956_fixture, write_pmemo2019_fixture

from a2b_pipeline.cli.corpus import corpus_main
from a2b_pipeline.configs import DataConfig, DatasetConfig, config_from_dict, load_config
from a2b_pipeline.data import datasets, feature_cache, signal_csv
from a2b_pipeline.data.corpora import CorpusError, list_recordings
from a2b_pipeline.data.corpora.hku956 import scan_hku956
from a2b_pipeline.data.corpora.pmemo2019 import scan_pmemo2019, subject_id_from_header
from a2b_pipeline.data.datasets import load_recording
from a2b_pipeline.data.manifest import ManifestError
from a2b_pipeline.data.recording import BadRecordingError
from a2b_pipeline.data.signal_csv import parse_signal_csv

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpora(tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("corpora")
    pm = write_pmemo2019_fixture(base / "PMEmo2019", songs=3, subjects=4, seconds=10.0)
    hk = write_hku956_fixture(
        base / "HKU956", participants=3, songs_per_participant=3, seconds=10.0, sample_rate=22050
    )
    return {"base": base, "pmemo": pm, "hku": hk}


def _data(tmp_path: Path, channels=("eda",), **kw) -> DataConfig:
    ds = [DatasetConfig(name="x", type="manifest", manifest="unused.csv")]
    return DataConfig(
        datasets=ds,
        channels=list(channels),
        cache_dir=str(tmp_path / "cache"),
        window_seconds=4,
        hop_seconds=2,
        n_mels=16,
        **kw,
    )


# ---- PMEmo2019 ----


def test_pmemo_listing_counts_subjects_and_skips(corpora):
    info = corpora["pmemo"]
    scan = scan_pmemo2019(str(info.root), on_bad="skip")
    recs = scan.listing.recordings
    assert len(recs) == info.recordings == 11  # 3 songs x 4 listeners - 1 empty column
    assert {r.subject_id for r in recs} == info.subjects == {"100011", "100014", "100017", "100020"}
    assert scan.songs == 3
    assert len({r.recording_id for r in recs}) == len(recs)
    # prefixed headers were stripped to the id, and the source keeps the header as written
    headers = {r.signals["eda"].column for r in recs}
    assert any(h.startswith("subject_") for h in headers) and any(h.endswith("_EDA") for h in headers)
    # the time column is the first column whatever its header (one file has an empty header)
    assert {r.signals["eda"].time_column for r in recs} == {"time(s)", "Time", ""}
    reasons = {Path(s.path).relative_to(info.root).as_posix(): s.reason for s in scan.listing.skipped}
    assert set(reasons) == set(info.skipped)
    assert reasons["chorus/999.mp3"] == "chorus clip missing"
    assert reasons["EDA/1_EDA.csv"].startswith("listener missing")
    assert scan.channels["eda"].irregular and 40 < scan.channels["eda"].rate < 60


def test_pmemo_error_mode_names_file_and_row_but_missing_listener_is_quiet(corpora, tmp_path):
    root = tmp_path / "pm"
    shutil.copytree(corpora["pmemo"].root, root)
    with pytest.raises(BadRecordingError) as e:
        scan_pmemo2019(str(root), on_bad="error")
    assert (
        "chorus/999.mp3" in str(e.value) and "row 4" in str(e.value) and "chorus clip missing" in str(e.value)
    )
    # without the bad row, error mode passes: an empty listener column is not an error, only counted
    meta = (root / "metadata.csv").read_text().splitlines()
    (root / "metadata.csv").write_text("\n".join(line for line in meta if not line.startswith("999,")) + "\n")
    scan = scan_pmemo2019(str(root), on_bad="error")
    assert len(scan.listing.recordings) == 11
    assert [s.reason.split(":")[0] for s in scan.listing.skipped] == ["listener missing (empty column)"]


def _edit_eda(root: Path, music: str, fn) -> Path:
    p = root / "EDA" / f"{music}_EDA.csv"
    lines = p.read_text().splitlines()
    p.write_text("\n".join(fn(lines)) + "\n")
    return p


@pytest.mark.parametrize(
    "edit, reason",
    [
        (lambda ls: [ls[0], *ls[1:5], ls[6], ls[5], *ls[7:]], "time goes backwards at line 7"),
        (lambda ls: [line.split(",")[0] for line in ls], "no subject columns"),
        (
            lambda ls: [
                ls[0],
                ls[1].split(",")[0] + ",abc" + ls[1][ls[1].index(",", ls[1].index(",") + 1) :],
                *ls[2:],
            ],
            "not a number",
        ),
    ],
    ids=["time-backwards", "no-subjects", "non-numeric"],
)
def test_pmemo_bad_eda_files_are_named(corpora, tmp_path, edit, reason):
    root = tmp_path / "pm"
    shutil.copytree(corpora["pmemo"].root, root)
    path = _edit_eda(root, "2", edit)
    scan = scan_pmemo2019(str(root), on_bad="skip")
    hits = [s for s in scan.listing.skipped if s.path == str(path)]
    assert hits and reason in hits[0].reason, scan.listing.skipped
    with pytest.raises(BadRecordingError, match=reason):
        scan_pmemo2019(str(root), on_bad="error")


def test_pmemo_published_variants(tmp_path):
    """Uppercase Chorus/ folder, fileName without extension, musicId '7.0', extra metadata columns, a BOM,
    a ragged column (listener stopped early), EDA files of songs not in the metadata."""
    root = tmp_path / "pm"
    (root / "Chorus").mkdir(parents=True)
    (root / "EDA").mkdir()
    write_clip(root / "Chorus" / "7.mp3", 6.0, 3.0, seed=3, sample_rate=22050)
    times = np.arange(0, 6, 0.02)
    rows = ["time,subject_100016,100017_EDA,  ,"]
    for t in times:
        short = f"{2 + t / 10:.4f}" if t < 4 else ""
        rows.append(f"{t:.2f},{1 + t / 10:.4f},{short},,")
    (root / "EDA" / "7_EDA.csv").write_text("\n".join(rows) + "\n")
    (root / "EDA" / "8_EDA.csv").write_text("time,100016\n0,1\n0.02,1\n")
    (root / "metadata.csv").write_text(
        "\ufeffmusicId,fileName,title,artist,duration\n7.0,7,Seven,Someone,200\n"
    )
    scan = scan_pmemo2019(str(root), on_bad="error")
    recs = sorted(scan.listing.recordings, key=lambda r: r.subject_id)
    assert [r.recording_id for r in recs] == ["7_100016", "7_100017"]
    assert recs[0].audio_path.endswith("Chorus/7.mp3")
    assert scan.durations["7_100017"] == pytest.approx(4.0, abs=0.03)  # ends where its column ends
    assert [s.reason for s in scan.listing.skipped] == ["musicId 8 is not in metadata.csv"]


@pytest.mark.parametrize(
    "header, sid",
    [
        ("100016", "100016"),
        ("subject_100016", "100016"),
        ("100016_EDA", "100016"),
        (" S100016 ", "100016"),
        ("1001_EDA", "1001"),
        ("hku1901", "1901"),
        ("listener", "listener"),
    ],
)
def test_subject_id_from_header(header, sid):
    assert subject_id_from_header(header) == sid


def test_pmemo_rejects_channels_it_does_not_have(corpora):
    with pytest.raises(CorpusError, match="only the 'eda' channel"):
        scan_pmemo2019(str(corpora["pmemo"].root), channels=["eda", "hr"])


def test_missing_root_and_metadata_are_corpus_errors(tmp_path):
    with pytest.raises(CorpusError, match="not found"):
        scan_pmemo2019(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "x.txt").write_text("x")
    with pytest.raises(CorpusError, match="no metadata.csv"):
        scan_pmemo2019(str(tmp_path / "empty"))
    with pytest.raises(CorpusError, match="AV_ratings"):
        scan_hku956(str(tmp_path / "empty"))


# ---- HKU956 ----


def test_hku956_listing_eda_and_hr(corpora):
    info = corpora["hku"]
    scan = scan_hku956(str(info.root), channels=["eda", "hr"], on_bad="skip", measure=True)
    recs = scan.listing.recordings
    assert len(recs) == info.recordings == 8  # 3 x 3 records, one without its EDA file
    assert {r.subject_id for r in recs} == info.subjects == {"hku1901", "hku1902", "hku1903"}
    assert scan.songs == 5
    [skip] = scan.listing.skipped
    assert Path(skip.path).relative_to(info.root).as_posix() == info.skipped[0]
    assert skip.reason == "no EDA file for this listening record" and skip.row == 3
    r = recs[0]
    assert (
        r.signals["eda"].rate == 4.0 and r.signals["hr"].rate == 1.0 and r.signals["eda"].time_column is None
    )
    assert Path(r.audio_path).parent.name == "HKU956_audio"  # from the link column
    # play_duration shortens the second record of each participant
    stopped = [x for x in recs if x.recording_id.split("_")[1] == "1"]
    assert stopped and all(x.duration_seconds == 8.0 for x in stopped)
    assert all(scan.durations[x.recording_id] == pytest.approx(8.0) for x in stopped)
    assert scan.channels["eda"].rate == 4.0 and scan.channels["hr"].files == 9
    with pytest.raises(BadRecordingError, match=r"hku1901/EDA/2_\d+\.csv: no EDA file"):
        scan_hku956(str(info.root), channels=["eda"], on_bad="error")
    # an HR-only config keeps the record that lacks EDA
    assert len(scan_hku956(str(info.root), channels=["hr"]).listing.recordings) == 9


def test_hku956_audio_dir_and_rate_override(corpora):
    info = corpora["hku"]
    audio_dir = info.root.parent / "HKU956_audio"
    scan = scan_hku956(str(info.root), audio_dir=str(audio_dir), signal_rates={"eda": 8.0}, on_bad="skip")
    assert all(Path(r.audio_path).parent == audio_dir for r in scan.listing.recordings)
    assert scan.listing.recordings[0].signals["eda"].rate == 8.0
    with pytest.raises(CorpusError, match="no sampling rate known for channel 'ibi'"):
        scan_hku956(str(info.root), channels=["ibi"])


def test_signal_csv_shapes_parse_alike():
    values = [0.5, 0.6, 0.7]
    header = parse_signal_csv("EDA\n0.5\n0.6\n0.7\n")
    bare = parse_signal_csv("0.5\n0.6\n0.7\n")
    e4 = parse_signal_csv("1546300800.000000\n4.000000\n0.5\n0.6\n0.7\n")
    assert header["EDA"].tolist() == bare["0"].tolist() == e4["0"].tolist() == values
    with pytest.raises(BadRecordingError, match="line 3, column 'EDA': not a number"):
        parse_signal_csv("EDA\n0.5\nx\n", "f.csv")


def test_adapters_are_registered_with_the_data_layer(corpora, tmp_path):
    data = _data(tmp_path, on_bad_recording="skip")
    ds = DatasetConfig(name="pm", type="pmemo2019", root=str(corpora["pmemo"].root))
    listing = list_recordings(ds, data)
    assert len(listing.recordings) == 11 and {r.dataset for r in listing.recordings} == {"pm"}
    ds = DatasetConfig(name="hk", type="hku956", root=str(corpora["hku"].root))
    assert len(list_recordings(ds, data).recordings) == 8


# ---- loading: alignment, bad audio, the feature cache ----


def _event_seconds(features: torch.Tensor, target: torch.Tensor, data: DataConfig) -> tuple[float, float]:
    energy = features.exp().sum(1)
    return float(energy.argmax()) / data.frame_rate, float(
        torch.nan_to_num(target[:, 0], -1e9).argmax()
    ) / data.target_rate


def test_alignment_event_in_audio_is_event_in_target(corpora, tmp_path):
    """The burst at second s of the clip and the EDA peak at second s land on the same second."""
    data = _data(tmp_path)
    for scan, info in (
        (scan_pmemo2019(str(corpora["pmemo"].root), on_bad="skip"), corpora["pmemo"]),
        (scan_hku956(str(corpora["hku"].root), on_bad="skip"), corpora["hku"]),
    ):
        for rec in scan.listing.recordings[:4]:
            song = (
                rec.recording_id.split("_")[0]
                if scan.type == "pmemo2019"
                else rec.recording_id.split("_")[-1]
            )
            loaded = load_recording(rec, data)
            audio_s, target_s = _event_seconds(loaded.features, loaded.target, data)
            assert audio_s == pytest.approx(info.events[song] + 0.025, abs=0.05), rec.recording_id
            assert target_s == pytest.approx(info.events[song], abs=0.5 / data.target_rate), rec.recording_id
            assert loaded.features.shape[0] / data.frame_rate == pytest.approx(
                loaded.target.shape[0] / data.target_rate, abs=0.25
            )


@pytest.mark.parametrize("damage", ["truncated", "not-audio"])
def test_bad_mp3_is_a_bad_recording_naming_the_file(corpora, tmp_path, damage):
    root = tmp_path / "pm"
    shutil.copytree(corpora["pmemo"].root, root)
    clip = root / "chorus" / "2.mp3"
    if damage == "truncated":
        clip.write_bytes(clip.read_bytes()[:300])
    else:
        clip.write_text("this is not an mp3\n" * 50)
    rec = next(
        r
        for r in scan_pmemo2019(str(root), on_bad="skip").listing.recordings
        if r.recording_id.startswith("2_")
    )
    with pytest.raises(BadRecordingError) as e:
        load_recording(rec, _data(tmp_path))
    assert str(clip) in str(e.value) and "pmemo2019" in str(e.value)


def test_feature_cache_second_pass_never_decodes(corpora, tmp_path):
    data = _data(tmp_path)
    recs = scan_pmemo2019(str(corpora["pmemo"].root), on_bad="skip").listing.recordings
    feature_cache.forget_memory()
    feature_cache.reset_stats()
    first = [load_recording(r, data) for r in recs]
    # one decode per song, not per listener
    assert feature_cache.STATS["features_miss"] == 3 and feature_cache.STATS["target_miss"] == len(recs)
    feature_cache.forget_memory()
    feature_cache.reset_stats()
    second = [load_recording(r, data) for r in recs]
    assert feature_cache.STATS["features_miss"] == 0 and feature_cache.STATS["target_miss"] == 0
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a.features, b.features) and torch.equal(
            a.target,
            b.target,
        )


def test_feature_cache_entries_of_earlier_versions_with_sha256_are_checked(tmp_path):
    import hashlib
    import json

    import numpy as np

    path, arrays = tmp_path / "e.a2bc", {"x": np.arange(12, dtype=np.float32).reshape(3, 4)}
    feature_cache.write_entry(path, "k1", arrays, {"n": 3})
    blob = path.read_bytes()
    head = len(feature_cache.MAGIC) + 8
    (hlen,) = feature_cache._LEN.unpack_from(blob, len(feature_cache.MAGIC))
    header, payload = json.loads(blob[head : head + hlen]), blob[head + hlen :]
    assert header.pop("xxh3_128")
    header["sha256"] = hashlib.sha256(payload).hexdigest()  # as entries were written before xxh3
    legacy = json.dumps(header, sort_keys=True).encode()
    path.write_bytes(feature_cache.MAGIC + feature_cache._LEN.pack(len(legacy)) + legacy + payload)
    got, meta = feature_cache.read_entry(path, "k1")
    assert np.array_equal(got["x"], arrays["x"]) and meta == {"n": 3}
    path.write_bytes(path.read_bytes()[:-1] + b"\x01")  # one byte of the payload changed
    with pytest.raises(feature_cache.CorruptEntry, match="checksum mismatch"):
        feature_cache.read_entry(path, "k1")


def test_feature_cache_rebuilds_corrupt_and_stale_entries(corpora, tmp_path):
    root = tmp_path / "pm"
    shutil.copytree(corpora["pmemo"].root, root)
    data = _data(tmp_path)
    rec = scan_pmemo2019(str(root), on_bad="skip").listing.recordings[0]
    feature_cache.forget_memory()
    ref = load_recording(rec, data)
    entries = sorted((tmp_path / "cache" / "features").rglob("*.a2bc"))
    assert len(entries) == 2  # features + target
    for p in entries:  # flip one payload byte in each
        blob = bytearray(p.read_bytes())
        blob[-3] ^= 0xFF
        p.write_bytes(bytes(blob))
    feature_cache.forget_memory()
    feature_cache.reset_stats()
    again = load_recording(rec, data)
    assert feature_cache.STATS["corrupt"] == 2 and feature_cache.STATS["features_miss"] == 1
    assert torch.equal(ref.features, again.features) and torch.equal(ref.target, again.target)
    # a truncated entry too
    p = entries[0]
    p.write_bytes(p.read_bytes()[:40])
    feature_cache.forget_memory()
    feature_cache.reset_stats()
    load_recording(rec, data)
    assert feature_cache.STATS["corrupt"] == 1
    # stale: an edited source file or another setting is another key, never the old entry
    eda = Path(rec.signals["eda"].path)
    eda.write_text(eda.read_text().replace(",", ", ", 3))
    feature_cache.reset_stats()
    load_recording(rec, data)
    assert feature_cache.STATS["target_miss"] == 1 and feature_cache.STATS["features_miss"] == 0
    feature_cache.forget_memory()
    feature_cache.reset_stats()
    other = load_recording(rec, data.model_copy(update={"n_mels": 8}))
    assert feature_cache.STATS["features_miss"] == 1 and other.features.shape[1] == 8


def test_feature_cache_keys_follow_the_code_that_computes_them(corpora, tmp_path, monkeypatch):
    """Entries are keyed by the modules and functions their caller says compute them: other target code (as
    after an edit of the signal reader) is another target key, while the features, keyed by the audio code
    only, are still served."""
    assert signal_csv in datasets.TARGET_CODE and signal_csv not in datasets.FEATURE_CODE
    data = _data(tmp_path)
    rec = scan_pmemo2019(str(corpora["pmemo"].root), on_bad="skip").listing.recordings[0]
    feature_cache.forget_memory()
    load_recording(rec, data)

    def edited_reader() -> str:
        return "the signal reader, edited"

    monkeypatch.setattr(datasets, "TARGET_CODE", (*datasets.TARGET_CODE, edited_reader))
    feature_cache.forget_memory()
    feature_cache.reset_stats()
    load_recording(rec, data)
    assert feature_cache.STATS["target_miss"] == 1 and feature_cache.STATS["target_hit"] == 0
    assert feature_cache.STATS["features_hit"] == 1 and feature_cache.STATS["features_miss"] == 0


def _write_same_entry(args):
    root, key, seed = args
    arrays = {"a": np.arange(50_000, dtype=np.float32) + seed * 0}
    for _ in range(20):
        feature_cache.write_entry(Path(root) / "e.a2bc", key, arrays, {"n": 1})
        feature_cache.read_entry(Path(root) / "e.a2bc", key)
    return True


def test_feature_cache_concurrent_writers(tmp_path):
    """Processes writing and reading the same entry never see a partial file."""
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(4) as pool:
        assert all(pool.map(_write_same_entry, [(str(tmp_path), "k", i) for i in range(4)]))
    arrays, meta = feature_cache.read_entry(tmp_path / "e.a2bc", "k")
    assert arrays["a"][-1] == 49_999 and meta == {"n": 1}
    assert not list(tmp_path.glob(".*tmp"))
    with pytest.raises(feature_cache.CorruptEntry, match="another key"):
        feature_cache.read_entry(tmp_path / "e.a2bc", "other")


# ---- a2b corpus ----


def test_corpus_cli_json(corpora, capsys):
    assert corpus_main(str(corpora["pmemo"].root), "pmemo2019", True, None) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"recordings", "subjects", "hours", "skipped", "songs", "channels"} <= set(out)
    assert out["recordings"] == 11 and out["subjects"] == 4 and out["songs"] == 3
    assert out["hours"] == pytest.approx(11 * 10 / 3600, rel=0.02)
    assert {s["reason"] for s in out["skipped"]} >= {"chorus clip missing"}
    assert all(set(s) >= {"path", "reason"} for s in out["skipped"])


def test_corpus_cli_text_manifest_and_errors(corpora, tmp_path, capsys):
    out_csv = tmp_path / "m" / "hku.csv"
    assert corpus_main(str(corpora["hku"].root), "hku956", False, str(out_csv)) == 0
    text = capsys.readouterr().out
    assert "recordings: 8" in text and "eda: 4 Hz" in text and "hr: 1 Hz" in text
    assert "no EDA file for this listening record" in text and "manifest: 8 row(s)" in text
    # the manifest is a regular `manifest` dataset; its audio stays where the corpus keeps it, outside the
    # manifest's folder, which a config allows explicitly
    ds = DatasetConfig(name="frozen", type="manifest", manifest=str(out_csv))
    with pytest.raises(ManifestError, match="is outside the manifest's folder"):
        list_recordings(ds, _data(tmp_path))
    listing = list_recordings(ds, _data(tmp_path, allow_outside_paths=True))
    assert len(listing.recordings) == 8
    loaded = load_recording(listing.recordings[0], _data(tmp_path))
    assert loaded.target.shape[1] == 1 and torch.isfinite(loaded.target).all()
    # errors: one line naming the path, exit 2, no traceback
    assert corpus_main(str(tmp_path / "missing"), "hku956", True, None) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "missing") in err and "Traceback" not in err and err.count("\n") == 1


def test_corpus_cli_options_are_the_types_own(corpora, capsys):
    """`--audio-dir` is an option of hku956 (its config says so), refused by a type without it."""
    audio_dir = corpora["hku"].root.parent / "HKU956_audio"
    assert corpus_main(str(corpora["hku"].root), "hku956", True, None, audio_dir=str(audio_dir)) == 0
    assert json.loads(capsys.readouterr().out)["recordings"] == 8
    assert corpus_main(str(corpora["pmemo"].root), "pmemo2019", True, None, audio_dir=str(audio_dir)) == 2
    err = capsys.readouterr().err
    assert "corpus type 'pmemo2019' has no option 'audio_dir' (its options: none)" in err, err


# ---- configs ----


@pytest.mark.parametrize("name", ["pmemo2019", "hku956", "hku956+pmemo2019"])
def test_shipped_configs_load_and_roots_can_be_overridden(name):
    cfg = load_config(REPO / "configs" / f"{name}.yaml", ["data.datasets.0.root=s3://bucket/corpus"])
    assert cfg.data.datasets[0].root == "s3://bucket/corpus"
    roots = {d.type: d.root for d in load_config(REPO / "configs" / f"{name}.yaml").data.datasets}
    assert roots.get("pmemo2019", "data/corpora/PMEmo2019") == "data/corpora/PMEmo2019"
    assert roots.get("hku956", "data/corpora/HKU956") == "data/corpora/HKU956"


def mixed_config(corpora: dict, tmp_path: Path, overrides: list[str] | None = None):
    """configs/hku956+pmemo2019.yaml pointed at the fixtures, made tiny."""
    import yaml

    from a2b_pipeline.configs import apply_overrides

    raw = yaml.safe_load((REPO / "configs" / "hku956+pmemo2019.yaml").read_text())
    raw = apply_overrides(
        raw,
        [
            f"data.datasets.0.root={corpora['hku'].root}",
            f"data.datasets.1.root={corpora['pmemo'].root}",
            f"data.cache_dir={tmp_path / 'cache'}",
            "data.window_seconds=4",
            "data.hop_seconds=2",
            "data.n_mels=16",
            "data.batch_size=4",
            "data.num_workers=0",
            "data.val_fraction=0.25",
            "data.test_fraction=0.25",
            "data.weight_schedule=[]",
            f"checkpoint.dir={tmp_path / 'runs'}",
            "tracking.wandb_mode=disabled",
            *(overrides or []),
        ],
    )
    return config_from_dict(raw, "mixed")


def test_mixed_config_prepares_both_corpora(corpora, tmp_path):
    from a2b_pipeline.data.pipeline import make_loader, prepare_data
    from a2b_pipeline.data.splits import SPLITS, group_key

    cfg = mixed_config(corpora, tmp_path)
    prepared = prepare_data(cfg)
    assert set(prepared.splits["train"]) == {"hku956", "pmemo2019"}
    n_rec = sum(len(v) for part in prepared.recordings.values() for v in part.values())
    assert n_rec + len(prepared.dropped) == 8 + 11  # the shipped config splits by subject and stimulus
    for name in ("hku956", "pmemo2019"):  # the readers' stimulus ids (song_id, musicId) keep songs apart
        for kind in ("subject", "stimulus"):
            seen = [{group_key(r, kind) for r in prepared.recordings[s][name]} for s in SPLITS]
            assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2]), (name, kind)
        assert all(r.stimulus_id for part in prepared.recordings.values() for r in part[name])
    assert {s.reason for s in prepared.skipped} >= {
        "chorus clip missing",
        "no EDA file for this listening record",
    }
    loader = make_loader(prepared, cfg, "train")
    drawn = []
    for x, y in loader:
        drawn.append(loader.last_loader)
        assert x.shape[1:] == (4 * 50, 16) and y.shape[1:] == (4 * 4, 1)
        assert torch.isfinite(x).all() and torch.isfinite(y).all()
    assert set(drawn) == {0, 1}
