"""Helpers shared by the benchmarks: configs on synthetic corpora, interleaved timing, tables, JSON.

Every benchmark compares arms measured side by side in one process: the arms run in rotating order
within each repetition (A B C, B C A, C A B, ...), so slow drifts of a shared machine hit every arm alike,
and the figures are medians over repetitions. Ratios are taken per repetition (arm vs baseline of the same
repetition) and their median is reported with the min..max spread.

Two clocks are recorded for each measurement: wall time (what a user waits for) and process CPU time (all
threads of this process). On a loaded machine the CPU clock is far steadier, because time spent descheduled
does not count; the tables show both.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out"
DEMO_YAML = REPO / "configs" / "demo.yaml"


# ---- arguments ----


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="a fast smoke run (small sizes, few repetitions)")
    p.add_argument("--reps", type=int, default=None, help="repetitions per arm (default: 5, quick: 2)")
    p.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (default 1: steady on a shared machine)"
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=OUT / "data",
        help="synthetic corpora, feature cache and run directories (reused between runs)",
    )
    p.add_argument("--json", type=Path, default=None, help="where to write the JSON (default bench/out/)")
    return p


def reps(args: argparse.Namespace, full: int = 5, quick: int = 2) -> int:
    return args.reps or (quick if args.quick else full)


# ---- configs ----


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v
    return base


QUICK_DATA = {
    "n_mels": 16,
    "window_seconds": 4,
    "hop_seconds": 2,
    "batch_size": 8,
}
QUICK_MODEL = {"name": "conv_gru", "conv_channels": 16, "hidden": 16, "dropout": 0.1}


def bench_config_dict(data_dir: Path, *, quick: bool, threads: int, **over: Any) -> dict[str, Any]:
    """The demo config (configs/demo.yaml) with its corpora, cache and runs under `data_dir`, tracking
    disabled, no progress bar, a fixed thread count; `quick` shrinks corpora, windows and model."""
    import yaml

    raw = yaml.safe_load(DEMO_YAML.read_text())
    tag = "quick" if quick else "demo"
    for ds in raw["data"]["datasets"]:
        ds["root"] = str(data_dir / tag / ds["name"])
        if quick:
            ds["synthetic"].update(subjects=3, recordings_per_subject=2, seconds=16)
    raw["data"]["cache_dir"] = str(data_dir / "cache")
    raw["checkpoint"]["dir"] = str(data_dir / "runs")
    raw["tracking"]["wandb_mode"] = "disabled"
    raw["train"].update(progress_bar=False, num_threads=threads, device="cpu")
    if quick:
        raw["data"].update(QUICK_DATA)
        raw["model"] = dict(QUICK_MODEL)
    if "model" in over:  # another model: its own keys only
        raw["model"] = dict(over.pop("model"))
    return _merge(raw, over)


def bench_config(data_dir: Path, *, quick: bool, threads: int, **over: Any):
    from a2b_pipeline.configs import config_from_dict

    return config_from_dict(bench_config_dict(data_dir, quick=quick, threads=threads, **over), "bench")


# ---- clocks ----


def clocks() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


@dataclass
class Span:
    wall: float
    cpu: float

    @classmethod
    def since(cls, start: tuple[float, float]) -> Span:
        w, c = clocks()
        return cls(w - start[0], c - start[1])


class StepClock:
    """Stamps (wall, cpu) after every optimizer step of any optimizer, through torch's global
    step post-hook: it times the loop inside `train()` exactly as it times a bare loop, without touching
    the trainer. `rate(skip)` is steps per second between the stamp after step `skip` and the last one,
    so setup (data preparation, model build, wandb start) and teardown (final validation and checkpoint)
    stay out of it."""

    def __init__(self, on_step: Callable[[int], None] | None = None) -> None:
        self.stamps: list[tuple[float, float]] = []
        self.on_step = on_step
        self._handle: Any = None

    def _hook(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self.on_step is not None:
            self.on_step(len(self.stamps) + 1)
        self.stamps.append(clocks())

    def __enter__(self) -> StepClock:
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self._handle = register_optimizer_step_post_hook(self._hook)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._handle.remove()

    def median_steps(self, skip: int) -> dict[str, float]:
        """Median seconds per step after step `skip`, by each clock."""
        st = self.stamps[skip:]
        walls = [b[0] - a[0] for a, b in zip(st, st[1:], strict=False)]
        cpus = [b[1] - a[1] for a, b in zip(st, st[1:], strict=False)]
        return {"median_step_wall_s": median(walls), "median_step_cpu_s": median(cpus)}

    def window(self, skip: int) -> tuple[int, Span]:
        if len(self.stamps) < skip + 2:
            raise RuntimeError(f"only {len(self.stamps)} optimizer steps were stamped (need {skip + 2})")
        (w0, c0), (w1, c1) = self.stamps[skip], self.stamps[-1]
        return len(self.stamps) - 1 - skip, Span(w1 - w0, c1 - c0)


# ---- statistics ----


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


@dataclass
class Series:
    """Per-repetition measurements of one arm: `rate` in units/s by wall and by CPU clock."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    extra: dict[str, list[float]] = field(default_factory=dict)

    def add(self, units: float, span: Span, **extra: float) -> None:
        self.wall.append(units / span.wall)
        self.cpu.append(units / span.cpu if span.cpu > 0 else float("nan"))
        for k, v in extra.items():
            self.extra.setdefault(k, []).append(v)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "wall_rate_median": median(self.wall),
            "cpu_rate_median": median(self.cpu),
            "wall_rates": self.wall,
            "cpu_rates": self.cpu,
        }
        for k, v in self.extra.items():
            out[f"{k}_median"] = median(v)
            out[k] = v
        return out


def median_interval(stamps: Sequence[float]) -> float:
    """Median gap between consecutive stamps: one item's time, robust to bursts of descheduling."""
    return median([b - a for a, b in zip(stamps, stamps[1:], strict=False)])


def paired(arm: Sequence[float], base: Sequence[float]) -> dict[str, float]:
    """Median, min and max of arm[i] / base[i] over repetitions i."""
    r = [a / b for a, b in zip(arm, base, strict=True)]
    return {"median": median(r), "min": min(r), "max": max(r)}


def rotate(names: Sequence[str], rep: int) -> list[str]:
    k = rep % len(names)
    return list(names[k:]) + list(names[:k])


def fmt_ratio(r: dict[str, float]) -> str:
    return f"{r['median']:.3f} [{r['min']:.3f}..{r['max']:.3f}]"


# ---- output ----


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)
    out = [title, line]
    for j, row in enumerate(cells):
        padded = [c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        out.append("  ".join(padded))
        if j == 0:
            out.append(line)
    out.append(line)
    text = "\n".join(out)
    print(text, flush=True)
    return text


def machine() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "date": _dt.date.today().isoformat(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    with contextlib.suppress(OSError):
        info["loadavg_1m"] = os.getloadavg()[0]
    return info


def write_json(name: str, payload: dict[str, Any], path: Path | None = None) -> Path:
    path = path or OUT / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "machine": machine(), **payload}
    path.write_text(json.dumps(payload, indent=1, default=str))
    print(f"wrote {path}", flush=True)
    return path


def setup_torch(threads: int) -> None:
    """The global settings train() applies (thread count, deterministic algorithms), for every arm alike."""
    import torch

    torch.set_num_threads(threads)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
