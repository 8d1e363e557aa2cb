"""bench/gpu-check.sh's first and last word: the machine (`env`) and the verdict (`summary`).

    python bench/gpu_summary.py env --json OUT/env.json
    python bench/gpu_summary.py summary --out OUT [--phase NAME=RC:SECONDS ...]

`summary` reads OUT/junit.xml (pytest tests/test_gpu.py) and OUT/gpu-check.json (bench/gpu.py --check), writes
OUT/summary.json (the figures RESULTS.md asks for, every target with its verdict, each phase's exit status)
and prints it as a short table, last, where the device tool's output tail shows it. Standard library and
torch only: it must run whatever else failed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

# tests/test_gpu.py's tests that are targets of issue 28, by the start of their junit name
TEST_TARGETS = {
    "bf16 resume bit-exact": "test_resume_on_device_is_bit_exact[bf16]",
    "fp32 resume bit-exact": "test_resume_on_device_is_bit_exact[fp32]",
    "no sync on non-log steps (fp32)": "test_no_host_device_sync_on_steps_that_do_not_log[fp32]",
    "no sync on non-log steps (bf16)": "test_no_host_device_sync_on_steps_that_do_not_log[bf16]",
    "compiled model: plain keys, resumes": "test_compiled_model_saves_plain_keys_and_resumes",
    "async checkpoints from the device = sync ones": "test_async_checkpoints_from_device_equal_sync_ones",
}


def environment() -> dict[str, Any]:
    info: dict[str, Any] = {
        "date_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }
    try:
        import torch

        info.update(
            torch=torch.__version__,
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            cuda_available=torch.cuda.is_available(),
        )
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            info.update(
                gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), capability=f"{p.major}.{p.minor}"
            )
    except Exception as e:  # the summary must still say what it could
        info["torch_error"] = f"{type(e).__name__}: {e}"
    try:
        import pynvml

        pynvml.nvmlInit()
        info["driver"] = pynvml.nvmlSystemGetDriverVersion()
    except Exception as e:
        info["nvml_error"] = f"{type(e).__name__}: {e}"
    return info


def test_outcomes(junit: Path) -> dict[str, dict[str, str]]:
    """name -> {"outcome": passed|failed|error|skipped, "message"}; empty if pytest wrote nothing."""
    if not junit.is_file():
        return {}
    out = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = {"failure": "failed"}.get(tag, tag)
                message = (node.get("message") or "")[:300]
        out[case.get("name", "?")] = {"outcome": outcome, "message": message}
    return out


def summarize(out_dir: Path, phases: list[str]) -> dict[str, Any]:
    env_file, check_file = out_dir / "env.json", out_dir / "gpu-check.json"
    env = json.loads(env_file.read_text()) if env_file.is_file() else environment()
    check = json.loads(check_file.read_text()) if check_file.is_file() else {}
    tests = test_outcomes(out_dir / "junit.xml")
    targets: dict[str, Any] = {}
    for label, name in TEST_TARGETS.items():
        t = tests.get(name, {"outcome": "not run"})
        targets[label] = {"met": {"passed": True, "failed": False, "error": False}.get(t["outcome"]), **t}
    targets.update(check.get("targets_met", {}))
    arms = check.get("arms", {})
    figures = {
        name: {
            k: v
            for k, v in arm.items()
            if k
            in (
                "steps_per_s",
                "samples_per_s",
                "gpu_busy_share",
                "nvml_busy_share",
                "data_wait_share",
                "data_wait_s_per_step",
                "peak_allocated_bytes",
                "stall_median_s",
                "stall_first_s",
                "raw_write_s",
                "raw_write_fsync_s",
                "stall_vs_raw",
                "windows_per_s",
                "params",
                "skipped",
                "error",
            )
        }
        for name, arm in arms.items()
    }
    return {
        "env": env,
        "phases": dict(p.split("=", 1) for p in phases),
        "model": check.get("model"),
        "size": check.get("size"),
        "batch": check.get("batch"),
        "compile_speedup": check.get("compile_speedup"),
        "train_compile_speedup": check.get("train_compile_speedup"),
        "figures": figures,
        "targets": targets,
        "diagnosis": check.get("diagnosis", []),
        "tests": tests,
    }


def show(summary: dict[str, Any]) -> None:
    env = summary["env"]
    print("=" * 100)
    print(
        f"gpu-check summary: {env.get('gpu', 'no GPU')}, torch {env.get('torch')}, CUDA {env.get('cuda')}, "
        f"driver {env.get('driver', '-')}, {env.get('date_utc')}"
    )
    print("phases (exit status:seconds): " + ", ".join(f"{k} {v}" for k, v in summary["phases"].items()))
    for name, f in summary["figures"].items():
        parts = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in f.items()]
        print(f"  {name}: " + ", ".join(parts))
    if summary["compile_speedup"] is not None:
        print(f"  torch.compile speedup (bare loop, bf16): {summary['compile_speedup']:.2f}x")
    if summary["train_compile_speedup"] is not None:
        print(f"  torch.compile speedup (train(), bf16): {summary['train_compile_speedup']:.2f}x")
    for label, t in summary["targets"].items():
        verdict = {True: "MET", False: "NOT MET", None: "not measured"}[t.get("met")]
        value = t.get("value", t.get("outcome"))
        shown = f"{value:.3f}" if isinstance(value, float) else value
        print(f"  target {label}: {verdict} ({shown})")
    for note in summary["diagnosis"]:
        print(f"  diagnosis: {note}")
    print("=" * 100)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    e = sub.add_parser("env")
    e.add_argument("--json", type=Path, required=True)
    s = sub.add_parser("summary")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--phase", action="append", default=[], help="NAME=RC:SECONDS, one per phase")
    args = p.parse_args()
    if args.what == "env":
        info = environment()
        args.json.write_text(json.dumps(info, indent=1))
        print(json.dumps(info, indent=1))
        return 0
    summary = summarize(args.out, args.phase)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    show(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
