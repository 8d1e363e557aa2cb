"""Peak memory of reading one large, valid signal CSV the way training does (targets.read_signal_file: read,
decode, parse a block of rows at a time), as a multiple of the file's size.

Each size runs in a fresh subprocess; the figure is the peak resident set (ru_maxrss) minus the resident set
just before the read, over the file's bytes. `--mb 371` is the file of issue #24 (~4x before the fix).

    .venv/bin/python bench/signal_memory.py --mb 100 371
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

CHILD = """
import resource, sys
from a2b_pipeline.data.targets import read_signal_file
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
table = read_signal_file(sys.argv[1], None)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(before * 1024, peak * 1024, len(table["time"]))
"""


def write_csv(path: Path, megabytes: float) -> int:
    """A signal CSV of about `megabytes` MB: time, eda, hr at 64 Hz, written in chunks."""
    rng = np.random.default_rng(0)
    rows, chunk = 0, 200_000
    with open(path, "w") as f:
        f.write("time,eda,hr\n")
        while f.tell() < megabytes * 1e6:
            t = (np.arange(rows, rows + chunk) / 64.0)[:, None]
            block = np.hstack([t, rng.random((chunk, 1)) * 10, 60 + rng.random((chunk, 1)) * 40])
            np.savetxt(f, block, fmt=["%.6f", "%.6f", "%.4f"], delimiter=",")
            rows += chunk
    return rows


def measure(megabytes: float, tmp: Path) -> dict[str, float]:
    path = tmp / f"signal-{megabytes:g}mb.csv"
    write_csv(path, megabytes)
    size = path.stat().st_size
    out = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True, check=True)
    before, peak, rows = map(int, out.stdout.split())
    path.unlink()
    return {"file_mb": size / 1e6, "rows": rows, "peak_over_file": (peak - before) / size}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--mb", type=float, nargs="+", default=[100.0])
    p.add_argument("--quick", action="store_true", help="one 20 MB file")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    sizes = [20.0] if args.quick else args.mb
    with tempfile.TemporaryDirectory() as tmp:
        results = [measure(mb, Path(tmp)) for mb in sizes]
    print("| file MB | rows | peak memory / file size |\n|---:|---:|---:|")
    for r in results:
        print(f"| {r['file_mb']:.0f} | {r['rows']} | {r['peak_over_file']:.2f}x |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
