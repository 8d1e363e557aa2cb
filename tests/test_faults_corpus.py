"""Bad recordings in a real corpus: each reported with its manifest row and path; `error` stops before
training, `skip` skips, counts, and trains on the rest.

One synthetic corpus is written once per module (8 subjects x 3 recordings x 12 s) and copied per test;
each fault damages real files of one recording the way they get damaged in the wild.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml
from _util import tiny_config

from a2b_pipeline.checkpoint.directory import list_checkpoints
from a2b_pipeline.cli import main
from a2b_pipeline.configs import RunConfig
from a2b_pipeline.data.manifest import ManifestError, read_manifest
from a2b_pipeline.data.pipeline import prepare_data
from a2b_pipeline.data.recording import BadRecordingError, Recording
from a2b_pipeline.data.synthetic import write_synthetic_corpus
from a2b_pipeline.state import TrainState

SECONDS = 12.0  # two 8 s windows per recording (hop 4 s)
SUBJECTS, PER_SUBJECT = 8, 3


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("faults_corpus") / "corpus"
    write_synthetic_corpus(
        root, subjects=SUBJECTS, recordings_per_subject=PER_SUBJECT, seconds=SECONDS, seed=7
    )
    return root


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Feature cache shared by the module's tests: keyed by content, a damaged file never hits it."""
    return tmp_path_factory.mktemp("faults_cache")


@pytest.fixture
def corpus(tmp_path: Path, template: Path) -> Path:
    """A private copy of the template corpus; returns its manifest."""
    shutil.copytree(template, tmp_path / "corpus")
    return tmp_path / "corpus" / "manifest.csv"


def _config(tmp_path: Path, manifest: Path, cache: Path, mode: str, extra: list[str] = ()) -> RunConfig:
    ds = {"name": "wild", "type": "manifest", "manifest": str(manifest)}
    return tiny_config(
        tmp_path,
        [
            f"data.datasets=[{yaml.safe_dump(ds, default_flow_style=True).strip()}]",
            f"data.cache_dir={cache}",
            f"data.on_bad_recording={mode}",
            "data.duration_tolerance_seconds=1.0",
            *extra,
        ],
    )


def _recordings(manifest: Path) -> list[Recording]:
    return read_manifest(str(manifest), "wild", channels=["eda", "hr"])


def _csv_lines(rec: Recording) -> list[str]:
    return Path(rec.signals["eda"].path).read_text().splitlines()


def _write_lines(rec: Recording, lines: list[str]) -> None:
    Path(rec.signals["eda"].path).write_text("\n".join(lines) + "\n")


# ---- the faults: each damages one recording and returns (path to be named, reason pattern) ----


def missing_audio(rec: Recording) -> tuple[str, str]:
    Path(rec.audio_path).unlink()
    return rec.audio_path, "column 'audio_path': file not found"


def missing_signal_file(rec: Recording) -> tuple[str, str]:
    Path(rec.signals["eda"].path).unlink()
    return rec.signals["eda"].path, "column 'signal_path': file not found"


def truncated_wav(rec: Recording) -> tuple[str, str]:
    # a copy cut off mid-transfer: the header promises 12 s, the data holds ~4 s
    blob = Path(rec.audio_path).read_bytes()
    Path(rec.audio_path).write_bytes(blob[: len(blob) // 3])
    return rec.audio_path, "audio lasts|signal ends|cannot decode|too short"


def text_named_wav(rec: Recording) -> tuple[str, str]:
    Path(rec.audio_path).write_text("this is a text file, not audio\n" * 20)
    return rec.audio_path, "cannot decode audio"


def empty_audio(rec: Recording) -> tuple[str, str]:
    sf.write(rec.audio_path, np.zeros((0, 1), np.float32), 16000)
    return rec.audio_path, "audio is empty"


def zero_byte_audio(rec: Recording) -> tuple[str, str]:
    Path(rec.audio_path).write_bytes(b"")
    return rec.audio_path, "cannot decode audio|audio is empty"


def shorter_than_window(rec: Recording) -> tuple[str, str]:
    sf.write(rec.audio_path, 0.1 * np.random.default_rng(0).standard_normal(16000 * 5), 16000)
    lines = _csv_lines(rec)
    offset = rec.offset_seconds
    keep = [lines[0]] + [ln for ln in lines[1:] if float(ln.split(",")[0]) + offset <= 5.0]
    _write_lines(rec, keep)
    return rec.audio_path, r"too short: .* a window is 8\.0 s"


def no_time_column(rec: Recording) -> tuple[str, str]:
    lines = _csv_lines(rec)
    _write_lines(rec, [lines[0].replace("time", "timestamp"), *lines[1:]])
    return rec.signals["eda"].path, "missing time column 'time'"


def time_not_monotonic(rec: Recording) -> tuple[str, str]:
    lines = _csv_lines(rec)
    lines[40], lines[41] = lines[41], lines[40]
    _write_lines(rec, lines)
    return rec.signals["eda"].path, r"time is not strictly increasing \(at data row 41\)"


def nan_value(rec: Recording) -> tuple[str, str]:
    lines = _csv_lines(rec)
    t, _, hr = lines[30].split(",")
    lines[30] = f"{t},nan,{hr}"
    _write_lines(rec, lines)
    return rec.signals["eda"].path, r"column 'eda' has NaN/inf values \(1, first at data row 30\)"


def inf_value(rec: Recording) -> tuple[str, str]:
    lines = _csv_lines(rec)
    t, eda, _ = lines[25].split(",")
    lines[25] = f"{t},{eda},inf"
    _write_lines(rec, lines)
    return rec.signals["eda"].path, r"column 'hr' has NaN/inf values \(1, first at data row 25\)"


def channel_missing(rec: Recording) -> tuple[str, str]:
    lines = _csv_lines(rec)
    _write_lines(rec, [",".join(c.split(",")[:2]) for c in lines])  # the hr column dropped
    return rec.signals["hr"].path, r"missing channel column 'hr' \(has \['eda', 'time'\]\)"


def duration_mismatch(rec: Recording) -> tuple[str, str]:
    lines = _csv_lines(rec)
    _write_lines(rec, lines[: len(lines) * 3 // 4])  # the wristband stopped ~3 s early
    return rec.signals["eda"].path, r"signal ends at .* but the audio lasts 12\.00 s .*duration_tolerance"


FAULTS: list[Callable[[Recording], tuple[str, str]]] = [
    missing_audio,
    missing_signal_file,
    truncated_wav,
    text_named_wav,
    empty_audio,
    zero_byte_audio,
    shorter_than_window,
    no_time_column,
    time_not_monotonic,
    nan_value,
    inf_value,
    channel_missing,
    duration_mismatch,
]
ROW = 5  # the damaged recording in the one-fault tests (1-based data row of the manifest)


@pytest.mark.parametrize("fault", FAULTS, ids=[f.__name__ for f in FAULTS])
def test_fault_named_with_row_and_path_error_stops_skip_counts(
    tmp_path: Path, corpus: Path, shared_cache: Path, fault: Callable[[Recording], tuple[str, str]]
) -> None:
    rec = _recordings(corpus)[ROW - 1]
    path, reason = fault(rec)

    with pytest.raises((BadRecordingError, ManifestError)) as err:
        prepare_data(_config(tmp_path, corpus, shared_cache, "error"))
    msg = str(err.value)
    assert f"row {ROW}" in msg and path in msg and str(corpus) in msg, msg
    assert re.search(reason, msg), msg

    prepared = prepare_data(_config(tmp_path, corpus, shared_cache, "skip"))
    assert len(prepared.skipped) == 1, prepared.skipped
    (skip,) = prepared.skipped
    assert skip.row == ROW and skip.dataset == "wild", skip
    assert path in f"{skip.path} {skip.reason}" and re.search(reason, skip.reason), skip
    kept = [r.recording_id for part in prepared.recordings.values() for r in part["wild"]]
    assert len(kept) == SUBJECTS * PER_SUBJECT - 1 and rec.recording_id not in kept


def _damage_many(manifest: Path) -> list[tuple[int, str]]:
    """Every fault at once, on different recordings; every subject keeps at least one good recording."""
    recs = _recordings(manifest)
    rows = [3 * s + 1 for s in range(SUBJECTS)] + [3 * s + 2 for s in range(len(FAULTS) - SUBJECTS)]
    damaged = []
    for fault, row in zip(FAULTS, rows, strict=True):
        path, _ = fault(recs[row - 1])
        damaged.append((row, path))
    return sorted(damaged)


def test_cli_error_mode_stops_before_training_with_the_message(
    tmp_path: Path, corpus: Path, shared_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    damaged = _damage_many(corpus)
    cfg = tmp_path / "wild.yaml"
    cfg.write_text(_config(tmp_path, corpus, shared_cache, "error").to_yaml())
    assert main(["train", str(cfg)]) == 1
    err = capsys.readouterr().err
    first_row, first_path = damaged[0]  # the manifest is checked row by row
    assert f"row {first_row}" in err and first_path in err and "Traceback" not in err, err
    runs = tmp_path / "runs"
    assert not any(list_checkpoints(d) for d in runs.iterdir()) if runs.exists() else True


def test_cli_skip_mode_trains_on_the_rest_and_reports_every_skip(
    tmp_path: Path,
    corpus: Path,
    shared_cache: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    damaged = _damage_many(corpus)
    run_cfg = _config(
        tmp_path, corpus, shared_cache, "skip", ["train.max_steps=4", "train.val_every_n_steps=4"]
    )
    prepared = prepare_data(run_cfg)
    assert sorted((s.row, s.dataset) for s in prepared.skipped) == [(row, "wild") for row, _ in damaged]
    for (row, path), skip in zip(damaged, sorted(prepared.skipped, key=lambda s: s.row), strict=True):
        assert path in f"{skip.path} {skip.reason}", (row, skip)
    good = SUBJECTS * PER_SUBJECT - len(FAULTS)
    assert sum(len(part["wild"]) for part in prepared.recordings.values()) == good
    assert all(len(prepared.splits[s]["wild"]) for s in ("train", "val", "test"))

    cfg = tmp_path / "wild.yaml"
    cfg.write_text(run_cfg.to_yaml())
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="a2b_pipeline"):
        assert main(["train", str(cfg)]) == 0
    out = capsys.readouterr().out
    state = TrainState.from_checkpoint(out.strip().splitlines()[-1])
    assert state.status == "complete" and state.global_step == 4
    log = caplog.text  # what `a2b train` writes to stderr (pytest holds the root logger's handlers)
    assert f"skipped {len(FAULTS)} bad recording(s)" in log, log
    for row, path in damaged:
        assert path in log, (row, path, log[-3000:])
