"""Benchmark: decode + feature time of epoch 1 (cold feature cache) against epoch 2 (warm), PMEmo-sized.

    .venv/bin/python bench/cache.py                      # 794 songs x 30 s x 10 listeners (PMEmo2019-sized)
    .venv/bin/python bench/cache.py --songs 100          # smaller
    .venv/bin/python bench/cache.py --no-results-md      # don't append to bench/RESULTS.md

A PMEmo2019-layout corpus is written to a temporary folder: one 44.1 kHz stereo mp3 chorus clip encoded
once and copied per song with a distinct ID3 trailer (distinct content hashes, identical decoding work), and
one wide EDA CSV per song (irregular ~50 Hz grid, one column per listener). Every recording is then loaded
through `load_recording` (the single place where audio is decoded) three times, sequentially:

  epoch 1         cold cache: decode mp3, resample, log-mel; read + resample EDA; write cache entries
  epoch 2 (disk)  a new process's view: nothing in memory, every entry read from disk and verified
  epoch 2 (mem)   the same process again: features shared in memory, targets from disk

Prints a table, writes JSON (--json, default bench/out/cache.json) and appends the figures to
bench/RESULTS.md under a heading with the date and "CPU".
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(1, str(REPO / "tests"))  # the corpus fixture writers live with the tests, not in the package

from corpus_fixtures import write_clip, write_pmemo2019_fixture  # noqa: E402

from a2b_pipeline.configs import DataConfig, DatasetConfig  # noqa: E402
from a2b_pipeline.data import feature_cache  # noqa: E402
from a2b_pipeline.data.corpora.pmemo2019 import scan_pmemo2019  # noqa: E402
from a2b_pipeline.data.datasets import load_recording  # noqa: E402


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def epoch(recs, data) -> dict:
    """Load every recording once; wall and process-CPU seconds (CPU is steadier on a shared machine)."""
    feature_cache.reset_stats()
    t0, c0 = time.perf_counter(), time.process_time()
    frames = 0
    for r in recs:
        frames += load_recording(r, data).features.shape[0]
    secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {
        "seconds": secs,
        "cpu_seconds": cpu,
        "per_recording_ms": 1000 * secs / len(recs),
        "frames": frames,
        **dict(feature_cache.STATS),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--songs", type=int, default=794)
    p.add_argument("--listeners", type=int, default=10)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--json", default=str(REPO / "bench" / "out" / "cache.json"))
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: steady when shared)")
    p.add_argument("--no-results-md", action="store_true")
    p.add_argument("--keep", help="write the corpus and cache here and keep them")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)

    work = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="a2b-bench-cache-"))
    try:
        t0 = time.perf_counter()
        template = work / "template.mp3"
        write_clip(template, a.seconds, a.seconds / 2, seed=0)
        info = write_pmemo2019_fixture(
            work / "PMEmo2019",
            songs=a.songs,
            subjects=a.listeners,
            seconds=a.seconds,
            missing_clip=False,
            missing_listener=False,
            clip_template=template,
        )
        build_s = time.perf_counter() - t0
        data = DataConfig(
            datasets=[DatasetConfig(name="pmemo2019", type="pmemo2019", root=str(info.root))],
            channels=["eda"],
            sample_rate=16000,
            n_mels=64,
            frame_rate=50,
            target_rate=4,
            window_seconds=8,
            hop_seconds=2,
            cache_dir=str(work / "cache"),
        )
        recs = scan_pmemo2019(str(info.root), on_bad="error").listing.recordings
        assert len(recs) == a.songs * a.listeners

        feature_cache.forget_memory()
        e1 = epoch(recs, data)
        feature_cache.forget_memory()
        e2_disk = epoch(recs, data)
        e2_mem = epoch(recs, data)
        assert e2_disk["features_miss"] == 0 and e2_disk["target_miss"] == 0, "epoch 2 decoded something"
        cache_bytes = sum(f.stat().st_size for f in (work / "cache").rglob("*") if f.is_file())
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)

    result = {
        "benchmark": "feature cache: decode + features, epoch 1 vs epoch 2",
        "date": dt.date.today().isoformat(),
        "device": "CPU",
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "load_average": round(os.getloadavg()[0], 1) if hasattr(os, "getloadavg") else None,
        "corpus": {
            "songs": a.songs,
            "listeners_per_song": a.listeners,
            "recordings": len(recs),
            "clip_seconds": a.seconds,
            "clip": "mp3 44.1 kHz stereo",
            "eda": "~50 Hz irregular grid",
            "build_seconds": round(build_s, 2),
        },
        "settings": {"sample_rate": 16000, "n_mels": 64, "frame_rate": 50, "target_rate": 4},
        "epoch1": e1,
        "epoch2_disk": e2_disk,
        "epoch2_memory": e2_mem,
        "speedup_disk": e1["seconds"] / e2_disk["seconds"],
        "speedup_memory": e1["seconds"] / e2_mem["seconds"],
        "speedup_disk_cpu": e1["cpu_seconds"] / e2_disk["cpu_seconds"],
        "cache_mb": round(cache_bytes / 2**20, 1),
    }
    rows = [("epoch 1 (cold)", e1), ("epoch 2 (disk cache)", e2_disk), ("epoch 2 (in memory)", e2_mem)]
    print(
        f"{len(recs)} recordings ({a.songs} songs x {a.listeners} listeners, {a.seconds:g} s clips), "
        f"{result['cpu']}, {result['cores']} cores, torch threads {result['torch_threads']}"
    )
    print(
        f"{'pass':<22}{'wall s':>9}{'cpu s':>9}{'ms/rec':>9}{'decodes':>9}{'targets built':>15}"
        f"{'speedup wall':>14}{'speedup cpu':>13}"
    )
    for name, r in rows:
        print(
            f"{name:<22}{r['seconds']:>9.2f}{r['cpu_seconds']:>9.2f}{r['per_recording_ms']:>9.2f}"
            f"{r['features_miss']:>9}{r['target_miss']:>15}{e1['seconds'] / r['seconds']:>13.1f}x"
            f"{e1['cpu_seconds'] / r['cpu_seconds']:>12.1f}x"
        )
    print(f"cache on disk: {result['cache_mb']} MB")
    out = Path(a.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    if not a.no_results_md:
        md = REPO / "bench" / "RESULTS.md"
        lines = [
            f"\n## {result['date']} CPU: feature cache, epoch 1 vs epoch 2 (bench/cache.py)\n",
            f"{result['cpu']}, {result['cores']} cores, torch {result['torch']} "
            f"({result['torch_threads']} thread(s)), load average {result['load_average']} during the run "
            "(wall time includes waiting for a shared CPU; the CPU-time ratio is the steadier one). "
            f"PMEmo2019-sized corpus: {a.songs} songs x {a.listeners} listeners = {len(recs)} recordings, "
            f"{a.seconds:g} s mp3 clips (44.1 kHz stereo), EDA on an irregular ~50 Hz grid; "
            "log-mel 64 x 50 fps at 16 kHz, targets at 4 Hz; recordings loaded one after another.\n",
            "| pass | wall s | CPU s | ms / recording (wall) | mp3 decodes | targets built "
            "| speedup (wall) | speedup (CPU) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, r in rows:
            lines.append(
                f"| {name} | {r['seconds']:.2f} | {r['cpu_seconds']:.2f} | {r['per_recording_ms']:.2f} "
                f"| {r['features_miss']} | {r['target_miss']} | {e1['seconds'] / r['seconds']:.1f}x "
                f"| {e1['cpu_seconds'] / r['cpu_seconds']:.1f}x |"
            )
        lines.append(
            f"\nCache on disk: {result['cache_mb']} MB. Epoch 1 decodes each song once for all its "
            "listeners; epoch 2 decodes nothing (every entry checksum-verified on read).\n"
        )
        if not md.exists():
            md.write_text("# Benchmark results\n")
        with open(md, "a") as f:
            f.write("\n".join(lines))
        print(f"appended to {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
