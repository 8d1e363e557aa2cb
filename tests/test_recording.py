"""data/recording.py: the locator every bad-input message carries; no credentials in any message."""

from __future__ import annotations

import pytest

from a2b_pipeline.data.recording import BadRecordingError, Listing, Recording, SignalSource, Skipped

URL = "s3://alice:hunter2@bucket/a.wav?X-Amz-Signature=deadbeef"


def _rec(**kw) -> Recording:
    base = dict(
        dataset="hku",
        recording_id="r7",
        subject_id="s1",
        audio_path="a.wav",
        signals={"eda": SignalSource("a.csv", "EDA")},
    )
    return Recording(**{**base, **kw})


def test_defaults() -> None:
    src = SignalSource("a.csv", "EDA")
    assert (src.time_column, src.rate) == ("time", None)
    rec = _rec()
    assert (rec.offset_seconds, rec.duration_seconds, rec.row, rec.source, rec.stimulus_id) == (
        0.0,
        None,
        None,
        "",
        None,
    )
    assert (
        Listing().recordings == [] and Listing().skipped == [] and Listing().skipped is not Listing().skipped
    )


def test_where_names_dataset_row_and_source() -> None:
    assert _rec(row=3, source="m.csv").where() == "dataset 'hku' row 3 of m.csv (recording 'r7')"
    assert _rec().where() == "dataset 'hku' (recording 'r7')"
    assert _rec(row=0).where() == "dataset 'hku' row 0 (recording 'r7')"  # row 0 is a row


def test_bad_recording_error_names_where_and_redacts() -> None:
    e = BadRecordingError(_rec(row=4, source=URL), URL, f"cannot read {URL}")
    assert str(e).startswith("dataset 'hku' row 4 of s3://bucket/a.wav?X-Amz-Signature=")
    assert "hunter2" not in str(e) and "deadbeef" not in str(e) and "alice" not in str(e)
    assert e.row == 4 and e.dataset == "hku" and "hunter2" not in e.path and "deadbeef" not in e.reason
    assert str(e).endswith(f": {e.path}: {e.reason}")
    bare = BadRecordingError(None, "x.csv", "empty")
    assert str(bare) == "x.csv: empty" and bare.row is None and bare.dataset == ""
    with pytest.raises(ValueError, match="x.csv: empty"):
        raise bare


def test_skipped_is_redacted() -> None:
    s = Skipped(URL, f"404 for {URL}", row=2, dataset="hku")
    assert "hunter2" not in s.path and "deadbeef" not in s.reason and s.path.startswith("s3://bucket/a.wav")
    assert (s.row, s.dataset) == (2, "hku")
