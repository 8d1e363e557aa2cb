"""GPU throughput of the default architectures (conv_gru, tcn, transformer): fp32, bf16, bf16 + compile.

For each architecture (its default config, the demo's data shapes) and precision:
  model     a bare loop on batches already on the GPU: steps/s and samples/s (CUDA events), and the share of
            wall time the GPU is busy (kernel time from torch.profiler over a few steps / their wall time)
  train()   the same architecture and precision through train() and the real data path (make_loader, pinned
            memory, non_blocking copies; corpora 4x the demo's so batches are full), validation, checkpoints
            and logging beyond the run: steps/s from a global optimizer step hook (the last stamp waits for
            the GPU), samples/s from the mean batch. train/model (samples/s) near 1 means the loader and
            the trainer keep up with the GPU; well below 1 means the GPU waits for them.
  loader    windows/s of the training loader alone on this host, against the model's samples/s
Then a sync audit: train() with torch.cuda.set_sync_debug_mode("warn"); synchronizing calls are counted per
step (steps that don't log must have none).

Prints "no CUDA device: skipped" and exits 0 without a GPU. Runs in a few minutes on an H100:

    .venv/bin/python bench/gpu.py [--quick] [--batch 64] [--steps 100] [--archs conv_gru,tcn,transformer]
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import time
import traceback
import warnings
from typing import Any

import _common as C
import torch
import torch.nn.functional as F

PRECISIONS = ("fp32", "bf16", "bf16+compile")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def kernel_seconds(prof: Any) -> float:
    """Total device time of the profiled kernels, memcpys and memsets."""
    total = 0.0
    for e in prof.key_averages():
        us = getattr(e, "self_device_time_total", None)
        if us is None:
            us = getattr(e, "self_cuda_time_total", 0.0)
        total += us
    return total / 1e6


def model_loop(cfg: Any, precision: str, device: torch.device, steps: int, warmup: int) -> dict[str, Any]:
    from a2b_pipeline.models import build_model, model_io

    io = model_io(cfg)
    b = cfg.data.batch_size
    torch.manual_seed(0)
    model = build_model(cfg.model, io).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    fwd = torch.compile(model) if precision.endswith("compile") else model
    bf16 = precision.startswith("bf16")
    x = torch.randn(b, io.in_frames, io.n_mels, device=device)
    y = torch.randn(b, io.out_steps, io.channels, device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            pred = fwd(x)
        loss = F.mse_loss(pred.float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    t0 = time.perf_counter()
    for _ in range(warmup):  # torch.compile compiles here
        step()
    sync(device)
    warm_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        end.record()
        sync(device)
        seconds = start.elapsed_time(end) / 1e3
    else:
        seconds = time.perf_counter() - t0
    out: dict[str, Any] = {
        "steps_per_s": steps / seconds,
        "samples_per_s": steps * b / seconds,
        "warmup_s": warm_s,
        "params": sum(p.numel() for p in model.parameters()),
    }
    if device.type == "cuda":
        from torch.profiler import ProfilerActivity, profile

        k = max(5, steps // 10)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            sync(device)
            t0 = time.perf_counter()
            for _ in range(k):
                step()
            sync(device)
            wall = time.perf_counter() - t0
        out["gpu_busy_share"] = kernel_seconds(prof) / wall
    return out


def train_cfg(args: Any, arch: str, precision: str, device: torch.device, steps: int, **over: Any) -> Any:
    from a2b_pipeline.configs import config_from_dict

    never = 10**9
    raw = C.bench_config_dict(
        args.data_dir,
        quick=args.quick,
        threads=args.threads,
        model={"name": arch},
        data={"batch_size": args.batch, "num_workers": args.workers},
        train={
            "max_steps": steps,
            "num_epochs": None,
            "precision": "bf16" if precision.startswith("bf16") else "fp32",
            "compile": precision.endswith("compile"),
            "device": device.type,
            "deterministic": not args.nondeterministic,
            "log_every_n_steps": over.pop("log_every", never),
            "val_every_n_steps": never,
        },
        checkpoint={"every_n_steps": never},
    )
    if not args.quick:  # 4x the demo's corpora: epochs of ~30 batches of 64, so few are partial
        for ds in raw["data"]["datasets"]:
            ds["root"] = ds["root"].replace("/demo/", "/gpu/")
            ds["synthetic"].update(subjects=4 * ds["synthetic"]["subjects"], seconds=60)
    return config_from_dict(raw, "bench")


def run_train(cfg: Any, run_dir: Any, device: torch.device, on_step: Any = None) -> C.StepClock:
    from a2b_pipeline.state import TrainState
    from a2b_pipeline.train import train

    target = cfg.train.max_steps

    def stamp(n: int) -> None:
        if on_step:
            on_step(n)
        if n == target:  # the last stamp waits for the GPU to finish the queued steps
            sync(device)

    shutil.rmtree(run_dir, ignore_errors=True)
    clock = C.StepClock(stamp)
    with clock:
        state = train(TrainState.from_config(cfg, run_dir))
    shutil.rmtree(run_dir, ignore_errors=True)
    if state.status != "complete":
        raise RuntimeError(state.message)
    clock.mean_batch = state.samples_seen / max(1, state.global_step)  # type: ignore[attr-defined]
    return clock


def loader_rate(cfg: Any, seconds: float) -> float:
    from a2b_pipeline.data.pipeline import make_loader, prepare_data

    loader = make_loader(prepare_data(cfg), cfg, "train")
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for x, _ in loader:
            n += x.shape[0]
    return n / (time.perf_counter() - t0)


def sync_audit(args: Any, arch: str, device: torch.device) -> dict[str, Any]:
    log_every = 10
    cfg = train_cfg(args, arch, "fp32", device, 3 * log_every, log_every=log_every)
    step_of = [0]
    per_step: dict[int, list[str]] = {}

    def on_step(n: int) -> None:
        step_of[0] = n

    def note(message: Any, category: Any, filename: str, lineno: int, *a: Any, **k: Any) -> None:
        if "synchroniz" in str(message):
            per_step.setdefault(step_of[0], []).append(f"{filename}:{lineno}")

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = note  # restored by catch_warnings
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run_train(cfg, args.data_dir / "runs" / "gpu-audit", device, on_step)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    steps = range(1, 3 * log_every)
    return {
        "warnings_total": sum(len(v) for v in per_step.values()),
        "syncs_on_non_log_steps": sum(len(per_step.get(s, [])) for s in steps if s % log_every),
        "syncs_on_log_steps": sum(len(per_step.get(s, [])) for s in steps if s % log_every == 0),
        "where": sorted({w for v in per_step.values() for w in v})[:20],
    }


def main() -> int:
    p = C.parser(__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 100, quick 20)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers of the train() arm")
    p.add_argument("--archs", default="conv_gru,tcn,transformer")
    p.add_argument("--precisions", default=",".join(PRECISIONS))
    p.add_argument("--nondeterministic", action="store_true", help="train.deterministic=false everywhere")
    p.add_argument("--device", default="cuda", help="cuda (default); cpu only to smoke-test this script")
    args = p.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: skipped")
        C.write_json("gpu", {"skipped": "no CUDA device"}, args.json)
        return 0
    device = torch.device(args.device)
    steps = args.steps or (20 if args.quick else 100)
    warmup = 3 if args.quick else 10
    C.setup_torch(args.threads)
    if args.nondeterministic:
        torch.use_deterministic_algorithms(False)
    archs = [a for a in args.archs.split(",") if a]
    precisions = [q for q in args.precisions.split(",") if q in PRECISIONS]

    results: dict[str, Any] = {}
    rows = []
    for arch in archs:
        for precision in precisions:
            key = f"{arch}/{precision}"
            res: dict[str, Any] = {}
            try:
                cfg = train_cfg(args, arch, precision, device, warmup + steps)
                res["model"] = model_loop(cfg, precision, device, steps, warmup)
                clock = run_train(cfg, args.data_dir / "runs" / "gpu", device)
                n, span = clock.window(warmup)
                res["train_steps_per_s"] = n / span.wall
                res["train_mean_batch"] = clock.mean_batch  # type: ignore[attr-defined]
                res["train_samples_per_s"] = res["train_steps_per_s"] * res["train_mean_batch"]
                res["train_vs_model"] = res["train_samples_per_s"] / res["model"]["samples_per_s"]
            except Exception as e:  # one failing combination (e.g. compile) must not hide the others
                res["error"] = f"{type(e).__name__}: {e}"
                traceback.print_exc()
            results[key] = res
            m = res.get("model", {})
            busy = m.get("gpu_busy_share")
            rows.append(
                [
                    key,
                    f"{m['steps_per_s']:.1f}" if m else "-",
                    f"{m['samples_per_s']:.0f}" if m else "-",
                    "-" if busy is None else f"{100 * busy:.0f}%",
                    f"{res['train_samples_per_s']:.0f}" if "train_samples_per_s" in res else "-",
                    f"{res['train_vs_model']:.2f}" if "train_vs_model" in res else "-",
                    res.get("error", "")[:60],
                ]
            )
            print(f"  {key}: {res}", flush=True)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    C.table(
        f"{name}: batch {args.batch}, {steps} timed steps after {warmup} warm-up, "
        f"deterministic={not args.nondeterministic}, train() with {args.workers} loader workers",
        [
            "arch/precision",
            "model steps/s",
            "samples/s",
            "GPU busy",
            "train() samples/s",
            "train/model",
            "error",
        ],
        rows,
    )
    cfg = train_cfg(args, archs[0], "fp32", device, 1)
    loader = loader_rate(cfg, 2.0 if args.quick else 5.0)
    print(f"training loader alone: {loader:.0f} windows/s ({args.workers} workers, batch {args.batch})")
    audit = {}
    if device.type == "cuda":
        for arch in archs:
            try:
                audit[arch] = sync_audit(args, arch, device)
            except Exception as e:
                audit[arch] = {"error": f"{type(e).__name__}: {e}"}
            print(f"sync audit {arch}: {audit[arch]}")
    C.write_json(
        "gpu",
        {
            "device": name,
            "quick": args.quick,
            "batch": args.batch,
            "steps": steps,
            "warmup": warmup,
            "workers": args.workers,
            "deterministic": not args.nondeterministic,
            "results": results,
            "loader_windows_per_s": loader,
            "sync_audit": audit,
        },
        args.json,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
