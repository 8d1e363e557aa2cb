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
import math
import os
import shutil
import statistics
import sys
import threading
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


class NvmlBusy:
    """GPU busy share from NVML while the block runs: the driver's utilisation (the share of its sample
    period, 1/6 to 1 s, in which a kernel ran), polled every `period` s and averaged. Inert (figures
    None, with the reason) where there is no CUDA device or no NVML (nvidia-ml-py's `pynvml`)."""

    def __init__(self, device: torch.device, period: float = 0.05) -> None:
        self.samples: list[int] = []
        self.error: str | None = None
        self.period = period
        self._handle: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if device.type != "cuda":
            self.error = "not a CUDA device"
            return
        try:
            import pynvml

            pynvml.nvmlInit()
            # the CUDA index is NVML's where CUDA_VISIBLE_DEVICES does not reorder (one GPU: always)
            index = device.index if device.index is not None else torch.cuda.current_device()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            self._read = lambda: pynvml.nvmlDeviceGetUtilizationRates(self._handle).gpu
            self._read()
        except Exception as e:  # no pynvml, no driver library, a sandbox without NVML
            self.error, self._handle = f"NVML unavailable: {type(e).__name__}: {e}", None

    def start(self) -> NvmlBusy:
        if self._handle is not None:
            self._thread = threading.Thread(target=self._poll, name="nvml-busy", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> NvmlBusy:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _poll(self) -> None:
        while not self._stop.wait(self.period):
            with contextlib.suppress(Exception):
                self.samples.append(self._read())

    def figures(self) -> dict[str, Any]:
        busy = statistics.fmean(self.samples) / 100 if self.samples else None
        return {"nvml_busy_share": busy, "nvml_samples": len(self.samples), "nvml_error": self.error}


def peak_memory(device: torch.device) -> dict[str, Any]:
    """Peak device memory since the last torch.cuda.reset_peak_memory_stats (None on a CPU)."""
    if device.type != "cuda":
        return {"peak_allocated_bytes": None, "peak_reserved_bytes": None}
    return {
        "peak_allocated_bytes": torch.cuda.max_memory_allocated(device),
        "peak_reserved_bytes": torch.cuda.max_memory_reserved(device),
    }


def kernel_seconds(prof: Any) -> float:
    """Total device time of the profiled kernels, memcpys and memsets."""
    total = 0.0
    for e in prof.key_averages():
        us = getattr(e, "self_device_time_total", None)
        if us is None:
            us = getattr(e, "self_cuda_time_total", 0.0)
        total += us
    return total / 1e6


def model_loop(
    cfg: Any, precision: str, device: torch.device, steps: int, warmup: int, min_seconds: float = 0.0
) -> dict[str, Any]:
    """A bare loop on one batch already on the device. `min_seconds`: time at least this long (more steps
    than `steps` where they are fast), so NVML's utilisation, sampled by the driver over 1/6 to 1 s, has a
    window to average over."""
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
    if min_seconds > 0:  # calibrate: enough steps to fill min_seconds
        t0 = time.perf_counter()
        for _ in range(3):
            step()
        sync(device)
        steps = max(steps, math.ceil(min_seconds / max((time.perf_counter() - t0) / 3, 1e-6)))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    with NvmlBusy(device) as nvml:
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
        "steps": steps,
        "warmup_s": warm_s,
        "params": sum(p.numel() for p in model.parameters()),
        **nvml.figures(),
        **peak_memory(device),
    }
    if device.type == "cuda":
        from torch.profiler import ProfilerActivity, profile

        k = min(50, max(5, steps // 10))  # enough for a share; the profiler slows with events
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
    """`arch` with its defaults, or the `model` dict given in `over`; `checkpoint_every`: checkpoints in
    the run (default: none before the last step); `workers`: loader workers (default --workers)."""
    from a2b_pipeline.configs import config_from_dict

    never = 10**9
    raw = C.bench_config_dict(
        args.data_dir,
        quick=args.quick,
        threads=args.threads,
        model=over.pop("model", None) or {"name": arch},
        data={"batch_size": args.batch, "num_workers": over.pop("workers", args.workers)},
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
        checkpoint={"every_n_steps": over.pop("checkpoint_every", never), "keep_last": 2},
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


# ---- the realistic check (bench/gpu-check.sh) ----

# ~25 M parameters (a layer of d_model 512 with a 4x feed-forward is ~3.15 M): the model the targets are for.
# TINY_MODEL stands in for it in the CPU dry run of bench/gpu-check.sh (`--size tiny`).
CHECK_MODEL = {"name": "transformer", "d_model": 512, "heads": 8, "layers": 8, "ff_mult": 4, "dropout": 0.1}
TINY_MODEL = {"name": "transformer", "d_model": 32, "heads": 4, "layers": 1, "ff_mult": 2, "dropout": 0.1}
TARGETS = {"gpu_busy_share_min": 0.90, "data_wait_share_max": 0.05, "checkpoint_stall_vs_raw_max": 1.0}


@contextlib.contextmanager
def patched(owner: Any, name: str, wrap: Any) -> Any:
    """owner.name replaced by wrap(original) for the block."""
    original = getattr(owner, name)
    setattr(owner, name, wrap(original))
    try:
        yield
    finally:
        setattr(owner, name, original)


class LoopProbe:
    """What train()'s loop waits for, timed from outside the trainer: each `next()` on its batch iterator
    (train.micro_batches: MetaDataLoader draw, DataLoader, collate, pinning) and each Checkpointer.save
    (after a device sync, so steps still queued on the GPU don't count as checkpoint time). Keeps the last
    Checkpointer, whose model and optimizer the raw safetensors write is timed on."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.waits: list[float] = []
        self.saves: list[float] = []
        self.checkpointer: Any = None
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> LoopProbe:
        import a2b_pipeline.train as trainer
        from a2b_pipeline.checkpoint.checkpointer import Checkpointer

        self._stack.enter_context(patched(trainer, "micro_batches", self._timed_batches))
        self._stack.enter_context(patched(Checkpointer, "save", self._timed_save))
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stack.close()

    def _timed_batches(self, original: Any) -> Any:
        def batches(*a: Any, **k: Any) -> Any:
            inner = original(*a, **k)
            while True:
                t0 = time.perf_counter()
                try:
                    batch = next(inner)
                except StopIteration:
                    return
                self.waits.append(time.perf_counter() - t0)
                yield batch

        return batches

    def _timed_save(self, original: Any) -> Any:
        probe = self

        def save(checkpointer: Any, state: Any, best: bool) -> None:
            sync(probe.device)
            t0 = time.perf_counter()
            original(checkpointer, state, best)
            probe.saves.append(time.perf_counter() - t0)
            probe.checkpointer = checkpointer

        return save


def train_arm(args: Any, cfg: Any, device: torch.device, warmup: int) -> tuple[dict[str, Any], LoopProbe]:
    """train() on the real data path: steps/s and samples/s after `warmup` steps, NVML busy over the same
    window, the time each step waited for its batch, peak memory."""
    target = cfg.train.max_steps
    nvml = NvmlBusy(device)

    def on_step(n: int) -> None:  # called before step n's stamp: the window is stamps[warmup:]
        if n == warmup + 1:
            nvml.start()
        if n == target:
            sync(device)
            nvml.stop()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with LoopProbe(device) as probe:
        clock = run_train(cfg, args.data_dir / "runs" / "gpu-check", device, on_step)
    n, span = clock.window(warmup)
    waits = probe.waits[warmup + 1 : target]  # waits[i] is step i+1's batch: the window's n steps
    steps_per_s = n / span.wall
    return {
        "steps": target,
        "timed_steps": n,
        "steps_per_s": steps_per_s,
        "samples_per_s": steps_per_s * clock.mean_batch,  # type: ignore[attr-defined]
        "mean_batch": clock.mean_batch,  # type: ignore[attr-defined]
        "data_wait_s_per_step": sum(waits) / max(1, len(waits)),
        "data_wait_median_s": statistics.median(waits) if waits else None,
        "data_wait_max_s": max(waits) if waits else None,
        "data_wait_share": sum(waits) / span.wall,
        **nvml.figures(),
        **peak_memory(device),
    }, probe


def raw_write(checkpointer: Any, device: torch.device, where: Any, reps: int = 3) -> dict[str, Any]:
    """safetensors `save_file` of the tensors a checkpoint holds (weights and optimizer moments, from the
    device), with and without an fsync: the baseline the loop's checkpoint wait is held against."""
    from safetensors.torch import save_file

    from a2b_pipeline.checkpoint.directory import fsync_path

    tensors = dict(checkpointer.model.state_dict())
    for idx, st in checkpointer.optimizer.state_dict()["state"].items():
        tensors.update({f"optimizer.{idx}.{k}": v for k, v in st.items() if torch.is_tensor(v)})
    where.mkdir(parents=True, exist_ok=True)
    times: dict[bool, list[float]] = {False: [], True: []}
    for rep in range(reps):
        for synced in (False, True):
            f = where / f"raw-{rep}-{int(synced)}.safetensors"
            os.sync()  # untimed: no arm pays for the dirty pages of the one before
            sync(device)
            t0 = time.perf_counter()
            save_file(tensors, str(f))
            if synced:
                fsync_path(f)
            times[synced].append(time.perf_counter() - t0)
            f.unlink()
    return {
        "raw_write_s": statistics.median(times[False]),
        "raw_write_fsync_s": statistics.median(times[True]),
        "checkpoint_bytes": sum(t.numel() * t.element_size() for t in tensors.values()),
    }


def checkpoint_arm(args: Any, cfg: Any, device: torch.device, warmup: int, every: int) -> dict[str, Any]:
    """train() with an async checkpoint every `every` steps: what each save makes the loop wait (the host
    copy off the device and the hand-off to the writer thread), against a raw safetensors write."""
    res, probe = train_arm(args, cfg, device, warmup)
    periodic = probe.saves[:-1]  # the last save ends the run
    steady = periodic[1:] or periodic  # the first one allocates the pinned host buffers
    res.update(
        checkpoint_every=every,
        checkpoints=len(periodic),
        stall_first_s=periodic[0] if periodic else None,
        stall_median_s=statistics.median(steady) if steady else None,
        stall_max_s=max(steady) if steady else None,
    )
    res.update(raw_write(probe.checkpointer, device, args.data_dir / "raw-write"))
    if res["stall_median_s"] is not None:
        res["stall_vs_raw"] = res["stall_median_s"] / res["raw_write_s"]
    return res


def diagnose(out: dict[str, Any]) -> list[str]:
    """What limits the GPU, in words, from the figures (for the log and the summary)."""
    arms, notes = out["arms"], []
    train_ = arms.get("train bf16", {})
    busy, model_busy = train_.get("nvml_busy_share"), arms.get("model bf16", {}).get("gpu_busy_share")
    if busy is not None and busy < TARGETS["gpu_busy_share_min"]:
        if model_busy is not None and model_busy < TARGETS["gpu_busy_share_min"]:
            notes.append(
                f"the bare model loop keeps the GPU busy only {model_busy:.0%}: the step is bound by the "
                "host launching kernels (small kernels); torch.compile / CUDA graphs or a larger batch help"
            )
        share = train_.get("data_wait_share")
        if share is not None and share > TARGETS["data_wait_share_max"]:
            notes.append(f"the loop waits for data {share:.0%} of the time")
    share = train_.get("data_wait_share")
    if share is not None and share > TARGETS["data_wait_share_max"]:
        workers = {k: v for k, v in arms.items() if k.startswith("train bf16, ")}
        for name, r in workers.items():
            if "data_wait_share" not in r:
                continue
            more = r["data_wait_share"]
            notes.append(
                f"data wait {share:.1%} with {out['workers']} loader workers, {more:.1%} in '{name}' "
                + (
                    "(workers help: set data.num_workers so)"
                    if more < share
                    else "(more workers did not shorten it: look at what each batch costs, the "
                    "MetaDataLoader draw, collate, pinning, the hand-off from the workers)"
                )
            )
        if not workers:
            notes.append("data wait above target: try more loader workers (bench/gpu.py --check --workers N)")
    return notes


def targets_met(out: dict[str, Any]) -> dict[str, Any]:
    """Each target: {"value", "limit", "met"}; met is None where the figure is missing."""
    arms = out["arms"]
    t, c = arms.get("train bf16", {}), arms.get("checkpoint bf16", {})

    def verdict(value: Any, limit: float, at_least: bool) -> dict[str, Any]:
        met = None if value is None else (value >= limit if at_least else value <= limit)
        return {"value": value, "limit": limit, "met": met}

    return {
        "gpu_busy_share (train bf16, NVML)": verdict(
            t.get("nvml_busy_share"), TARGETS["gpu_busy_share_min"], True
        ),
        "data_wait_share (train bf16)": verdict(
            t.get("data_wait_share"), TARGETS["data_wait_share_max"], False
        ),
        "checkpoint stall / raw safetensors write": verdict(
            c.get("stall_vs_raw"), TARGETS["checkpoint_stall_vs_raw_max"], False
        ),
    }


def realistic_check(args: Any, device: torch.device) -> int:
    """The figures bench/gpu-check.sh records, each arm in turn while `--budget-s` lasts (an arm that
    would not fit is skipped and says so); the JSON is rewritten after every arm, so a run stopped from
    outside keeps what it measured."""
    full = args.size == "full"
    model = CHECK_MODEL if full else TINY_MODEL
    warmup, steps = (10, 50) if full else (2, 4)
    min_model_s, train_s = (3.0, 10.0) if full else (0.0, 0.0)
    deadline = time.monotonic() + args.budget_s
    out: dict[str, Any] = {
        "size": args.size,
        "model": model,
        "batch": args.batch,
        "workers": args.workers,
        "deterministic": not args.nondeterministic,
        "targets": TARGETS,
        "arms": {},
    }

    def cfg_for(precision: str, n_steps: int, **over: Any) -> Any:
        return train_cfg(args, "transformer", precision, device, n_steps, model=dict(model), **over)

    if args.prepare_only:  # bench/gpu-check.sh does this while the tests run: corpora and feature cache
        from a2b_pipeline.data.pipeline import prepare_data

        t0 = time.perf_counter()
        data = prepare_data(cfg_for("bf16", 1))
        print(f"check data ready in {time.perf_counter() - t0:.1f} s (data version {data.data_version})")
        return 0

    def arm(name: str, need_s: float, run: Any) -> dict[str, Any]:
        left = deadline - time.monotonic()
        if left < need_s:
            res: dict[str, Any] = {
                "skipped": f"out of time: {left:.0f} s left, the arm needs ~{need_s:.0f} s"
            }
        else:
            t0 = time.perf_counter()
            try:
                res = run()
            except Exception as e:  # one failing arm (e.g. compile) must not hide the others
                res = {"error": f"{type(e).__name__}: {e}"}
                traceback.print_exc()
            res["arm_s"] = time.perf_counter() - t0
        out["arms"][name] = res
        print(f"  {name}: {res}", flush=True)
        C.write_json("gpu-check", out, args.json)
        return res

    eager = arm(
        "model bf16", 20, lambda: model_loop(cfg_for("bf16", 1), "bf16", device, steps, warmup, min_model_s)
    )
    rate = eager.get("steps_per_s") or 50.0
    n_train = warmup + max(steps, round(rate * train_s))
    arm("train bf16", 60, lambda: train_arm(args, cfg_for("bf16", n_train), device, warmup)[0])
    every = max(3, round(rate))  # about one checkpoint a second at the bare loop's pace
    n_ckpt = warmup + 6 * every
    arm(
        "checkpoint bf16",
        45,
        lambda: checkpoint_arm(args, cfg_for("bf16", n_ckpt, checkpoint_every=every), device, warmup, every),
    )
    compiled = arm(
        "model bf16+compile",
        90,
        lambda: model_loop(cfg_for("bf16", 1), "bf16+compile", device, steps, warmup, min_model_s),
    )
    if "samples_per_s" in eager and "samples_per_s" in compiled:
        out["compile_speedup"] = compiled["samples_per_s"] / eager["samples_per_s"]
    more = max(4, 2 * args.workers)  # does the data wait go away with loader workers?
    arm(
        f"train bf16, {more} workers",
        45,
        lambda: train_arm(args, cfg_for("bf16", n_train, workers=more), device, warmup)[0],
    )
    arm("model fp32", 20, lambda: model_loop(cfg_for("fp32", 1), "fp32", device, steps, warmup, min_model_s))
    arm("loader alone", 15, lambda: {"windows_per_s": loader_rate(cfg_for("bf16", 1), 5.0 if full else 1.0)})
    arm(
        "train bf16+compile",
        120,
        lambda: train_arm(args, cfg_for("bf16+compile", n_train), device, warmup)[0],
    )
    train_eager, train_compiled = out["arms"]["train bf16"], out["arms"]["train bf16+compile"]
    if "samples_per_s" in train_eager and "samples_per_s" in train_compiled:
        out["train_compile_speedup"] = train_compiled["samples_per_s"] / train_eager["samples_per_s"]
    out["targets_met"] = targets_met(out)
    out["diagnosis"] = diagnose(out)
    C.write_json("gpu-check", out, args.json)
    print_check(out, device)
    return 0


def print_check(out: dict[str, Any], device: torch.device) -> None:
    def f(v: Any, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    rows = []
    for name, r in out["arms"].items():
        busy = r.get("nvml_busy_share")
        rows.append(
            [
                name,
                f(r.get("steps_per_s"), ".1f"),
                f(r.get("samples_per_s", r.get("windows_per_s")), ".0f"),
                f(r.get("gpu_busy_share"), ".0%"),
                f(busy, ".0%"),
                f(r.get("data_wait_share"), ".1%"),
                f(r.get("peak_allocated_bytes") and r["peak_allocated_bytes"] / 2**30, ".2f"),
                (r.get("skipped") or r.get("error") or "")[:50],
            ]
        )
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    m = out["model"]
    C.table(
        f"{name}: transformer d_model {m['d_model']} x {m['layers']} layers, batch {out['batch']}",
        [
            "arm",
            "steps/s",
            "samples (windows)/s",
            "busy (profiler)",
            "busy (NVML)",
            "data wait",
            "peak GiB",
            "note",
        ],
        rows,
    )
    if "compile_speedup" in out:
        print(f"torch.compile speedup (bare loop, bf16): {out['compile_speedup']:.2f}x")
    if "train_compile_speedup" in out:
        print(f"torch.compile speedup (train(), bf16): {out['train_compile_speedup']:.2f}x")
    c = out["arms"].get("checkpoint bf16", {})
    if "stall_median_s" in c:
        print(
            f"async checkpoint: the loop waits {f(c['stall_median_s'], '.3f')} s per checkpoint (first "
            f"{f(c['stall_first_s'], '.3f')} s); raw safetensors write {c['raw_write_s']:.3f} s, with fsync "
            f"{c['raw_write_fsync_s']:.3f} s ({c['checkpoint_bytes'] / 1e6:.0f} MB)"
        )
    for k, v in out["targets_met"].items():
        verdict = {True: "met", False: "NOT MET", None: "not measured"}[v["met"]]
        print(f"target {k}: {f(v['value'], '.3f')} (limit {v['limit']}): {verdict}")
    for note in out["diagnosis"]:
        print(f"diagnosis: {note}")


def main() -> int:
    p = C.parser(__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 100, quick 20)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers of the train() arm")
    p.add_argument("--archs", default="conv_gru,tcn,transformer")
    p.add_argument("--precisions", default=",".join(PRECISIONS))
    p.add_argument("--nondeterministic", action="store_true", help="train.deterministic=false everywhere")
    p.add_argument("--device", default="cuda", help="cuda (default); cpu only to smoke-test this script")
    p.add_argument(
        "--check",
        action="store_true",
        help="bench/gpu-check.sh's realistic check (a ~25 M parameter transformer, bf16) and its targets",
    )
    p.add_argument(
        "--size", choices=("full", "tiny"), default="full", help="--check's model (tiny: CPU dry run)"
    )
    p.add_argument("--budget-s", type=float, default=240.0, help="--check: arms that don't fit are skipped")
    p.add_argument(
        "--prepare-only", action="store_true", help="--check: synthesize and featurize its data, no more"
    )
    args = p.parse_args()
    name = "gpu-check" if args.check else "gpu"
    if args.device == "cuda" and not torch.cuda.is_available() and not args.prepare_only:
        print("no CUDA device: skipped")
        C.write_json(name, {"skipped": "no CUDA device"}, args.json)
        return 0
    device = torch.device(args.device)
    if args.check:
        if args.size == "tiny":  # the quick corpora, windows and batch go with the tiny model
            args.quick, args.batch = True, C.QUICK_DATA["batch_size"]
        C.setup_torch(args.threads)
        if args.nondeterministic:
            torch.use_deterministic_algorithms(False)
        return realistic_check(args, device)
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
            C.write_json(
                "gpu", {"partial": True, "results": results}, args.json
            )  # kept if stopped from outside
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
