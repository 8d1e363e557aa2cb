"""`a2b corpus ROOT --type TYPE [--json] [--to-manifest OUT.csv]`: what a published-layout corpus holds.

Prints recordings, subjects, songs, total hours (every listener's recording counts), channels with their
rates, and every record skipped with the reason. ``--json`` prints one object instead (keys ``type``,
``root``, ``recordings``, ``subjects``, ``songs``, ``hours``, ``channels``, ``skipped`` = [{path, reason,
row}], ``files``). ``--to-manifest OUT.csv`` also writes a manifest of the usable recordings in the
project's own format (one signal CSV per recording beside it, with ``time`` and channel columns), so the
corpus can be frozen, edited or mixed as a ``manifest`` dataset.

Exit status: 0 when the corpus could be read (even with skipped records), 2 when it could not; errors are
one line on stderr naming the path (and bucket), never a traceback.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from a2b_pipeline.data import remote
from a2b_pipeline.data.corpora import CorpusError, CorpusScan, scan_corpus, scannable
from a2b_pipeline.data.recording import BadRecordingError, Recording
from a2b_pipeline.data.signal_csv import parse_signal_csv, pick_value_column
from a2b_pipeline.files import atomic_path

__all__ = ["corpus_main", "summarize", "write_manifest"]


def summarize(scan: CorpusScan) -> dict[str, Any]:
    """The JSON-able summary of a scan."""
    recs = scan.listing.recordings
    seconds = sum(scan.durations.get(r.recording_id, 0.0) for r in recs)
    return {
        "type": scan.type,
        "root": scan.root,
        "recordings": len(recs),
        "subjects": len({r.subject_id for r in recs}),
        "songs": scan.songs,
        "hours": round(seconds / 3600.0, 4),
        "channels": {k: v.as_dict() for k, v in scan.channels.items()},
        "skipped": [{"path": s.path, "reason": s.reason, "row": s.row} for s in scan.listing.skipped],
        "files": len(scan.files),
    }


def _format(summary: dict[str, Any]) -> str:
    lines = [
        f"{summary['type']} corpus at {summary['root']}",
        f"  recordings: {summary['recordings']}",
        f"  subjects:   {summary['subjects']}",
        f"  songs:      {summary['songs']}",
        f"  hours:      {summary['hours']:.2f}",
        "  channels:",
    ]
    for name, ch in summary["channels"].items():
        rate = f"{ch['rate']:g} Hz" if ch["rate"] else "rate unknown"
        grid = ", irregular grid (median rate)" if ch["irregular"] else ""
        lines.append(f"    {name}: {rate}{grid}, {ch['files']} file(s)")
    skipped = summary["skipped"]
    lines.append(f"  skipped: {len(skipped)}")
    for s in skipped:
        row = f" (row {s['row']})" if s.get("row") is not None else ""
        lines.append(f"    {s['path']}{row}: {s['reason']}")
    return "\n".join(lines)


def _series(rec: Recording, channel: str, cache_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
    src = rec.signals[channel]
    table = parse_signal_csv(remote.read_text(src.path, cache_dir), src.path, rec)
    key = src.column if src.time_column is not None else pick_value_column(table, src.column)
    if key is None or key not in table:
        raise BadRecordingError(rec, src.path, f"no column {src.column!r} (has {sorted(table)})")
    values = table[key]
    if src.time_column is None:
        times = np.arange(values.size) / float(src.rate or 1.0)
    else:
        times = table[src.time_column]
    ok = ~np.isnan(values)
    times, values = times[ok], values[ok]
    if rec.duration_seconds:
        keep = times + rec.offset_seconds < rec.duration_seconds
        times, values = times[keep], values[keep]
    return times, values


def write_manifest(scan: CorpusScan, out_csv: str | os.PathLike[str], cache_dir: str | None = None) -> int:
    """Write the usable recordings as a manifest + one signal CSV each (in `<OUT stem>_signals/`).

    The signal CSV has `time` (the densest channel's own times) and one column per channel, the other
    channels linearly interpolated onto those times. Audio paths are absolute (or URLs). Returns the number of
    rows written; recordings whose signal can't be read are left out and reported on stderr.
    """
    out = Path(out_csv)
    sig_dir = out.parent / f"{out.stem}_signals"
    sig_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for rec in scan.listing.recordings:
        channels = list(rec.signals)
        try:
            series = {ch: _series(rec, ch, cache_dir) for ch in channels}
        except BadRecordingError as e:
            print(f"warning: left out of the manifest: {e}", file=sys.stderr)
            continue
        dense = max(channels, key=lambda ch: series[ch][0].size)
        t = series[dense][0]
        cols = {}
        for ch in channels:
            ts, vs = series[ch]
            cols[ch] = vs if ch == dense else np.interp(t, ts, vs, left=np.nan, right=np.nan)
        keep = np.all([np.isfinite(c) for c in cols.values()], axis=0)
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in rec.recording_id)
        sig_path = sig_dir / f"{safe}.csv"
        with atomic_path(sig_path) as tmp, open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["time", *channels])
            for i in np.flatnonzero(keep):
                w.writerow([f"{t[i]:.6f}", *(f"{cols[ch][i]:.6g}" for ch in channels)])
        audio = rec.audio_path if remote.is_url(rec.audio_path) else os.path.abspath(rec.audio_path)
        rows.append(
            {
                "recording_id": rec.recording_id,
                "subject_id": rec.subject_id,
                "audio_path": audio,
                "signal_path": f"{sig_dir.name}/{sig_path.name}",
                "offset_seconds": f"{rec.offset_seconds:g}",
                "duration_seconds": "" if rec.duration_seconds is None else f"{rec.duration_seconds:g}",
                "stimulus_id": rec.stimulus_id or "",
            }
        )
    with atomic_path(out) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(
            f,
            fieldnames=[
                "recording_id",
                "subject_id",
                "audio_path",
                "signal_path",
                "offset_seconds",
                "duration_seconds",
                "stimulus_id",
            ],
        )
        w.writeheader()
        w.writerows(rows)
    return len(rows)


def corpus_main(
    root: str,
    type: str,
    as_json: bool = False,
    to_manifest: str | None = None,
    *,
    channels: Sequence[str] | None = None,
    cache_dir: str | None = None,
    audio_dir: str | None = None,
) -> int:
    """Entry point of `a2b corpus`. Returns the exit status; prints the summary (or one error line)."""
    try:
        options = {"audio_dir": audio_dir} if audio_dir else {}  # the type says whether it takes it
        scan = scan_corpus(root, type, channels=channels, on_bad="skip", cache_dir=cache_dir, **options)
        summary = summarize(scan)
        if to_manifest:
            summary["manifest"] = str(to_manifest)
            summary["manifest_rows"] = write_manifest(scan, to_manifest, cache_dir)
    except (CorpusError, BadRecordingError, remote.RemoteError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a local file that vanished or can't be read
        print(f"error: {e}", file=sys.stderr)
        return 2
    if as_json:
        print(json.dumps(summary, sort_keys=False, allow_nan=False, default=_json_default))
    else:
        print(_format(summary))
        if to_manifest:
            print(f"  manifest: {summary['manifest_rows']} row(s) -> {to_manifest}")
    return 0


def _json_default(o: Any) -> Any:
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return str(o)


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone parser (the `a2b` CLI wires the same options)."""
    p = argparse.ArgumentParser(prog="a2b corpus", description=__doc__.splitlines()[0])
    p.add_argument("root", help="corpus root: a directory or a URL (s3://bucket/prefix)")
    p.add_argument("--type", required=True, choices=scannable())
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--to-manifest", metavar="OUT.csv", help="also write a manifest of the usable recordings")
    p.add_argument("--channels", help="comma-separated channels a recording needs (default: eda)")
    p.add_argument("--audio-dir", help="hku956: directory of <song_id>.mp3")
    p.add_argument("--cache-dir", help="download cache for remote roots (default: ~/.cache/a2b)")
    a = p.parse_args(argv)
    chans = [c.strip() for c in a.channels.split(",") if c.strip()] if a.channels else None
    return corpus_main(
        a.root, a.type, a.json, a.to_manifest, channels=chans, cache_dir=a.cache_dir, audio_dir=a.audio_dir
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
