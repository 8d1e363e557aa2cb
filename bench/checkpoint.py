"""Checkpoint cost: TrainState.to_checkpoint / from_checkpoint + load_tensors of a ~100 MB model against a raw
safetensors save_file / load_file of the same tensors.

Arms (rotating order per repetition; each writes a fresh directory and then loads it back into the model):
  raw          save_file(state_dict, path)            load_file(path) -> model.load_state_dict
  raw + fsync  as raw, then fsync the file and its directory (what a crash-safe save needs at least)
  checkpoint   state.to_checkpoint(dir, {"model.safetensors": state_dict})
               TrainState.from_checkpoint(dir) + load_tensors(dir, "model.safetensors", state)
               -> model.load_state_dict
  trainer      what train()'s loop waits for with checkpoint.async_write (the default): the host copy of
               the state and tensors (CheckpointWriter.save: a copy into host buffers kept from one
               checkpoint to the next) and the hand-off; the write itself (the same to_checkpoint) runs
               in the writer's thread and is waited for untimed.
               Loading is the checkpoint arm's.
Every arm and part starts after an (untimed) os.sync(), so none pays for the dirty pages of the one before.
The checkpoint writes into a temporary directory, fsyncs, records an xxh3-128 digest of every file in
train_state.json and renames; loading verifies every file (from_checkpoint) and again the file it loads
(load_tensors). Loading ends with load_state_dict in every arm, so lazily mapped tensors are really read.
A breakdown of the parts (serialise, write, fsync, digests, read, parse) follows the table.

    .venv/bin/python bench/checkpoint.py [--quick] [--reps N] [--mb 100]
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import _common as C
import torch


def big_model(args: Any, mb: float) -> tuple[Any, torch.nn.Module]:
    """A Transformer of the package sized to about `mb` MB of float32 weights, and its RunConfig."""
    from a2b_pipeline.models import build_model, model_io

    d_model, layers = 512, max(1, round(mb / 12.6))  # one layer of d_model 512, ff x4: ~3.15 M params
    cfg = C.bench_config(
        args.data_dir,
        quick=False,
        threads=args.threads,
        model={"name": "transformer", "d_model": d_model, "heads": 8, "layers": layers, "ff_mult": 4},
    )
    torch.manual_seed(0)
    return cfg, build_model(cfg.model, model_io(cfg))


def main() -> int:
    p = C.parser(__doc__.split("\n")[0])
    p.add_argument("--mb", type=float, default=None, help="model size in MB (default 100, quick 25)")
    args = p.parse_args()
    mb = args.mb or (25.0 if args.quick else 100.0)
    n_reps = C.reps(args, full=5, quick=2)
    C.setup_torch(args.threads)
    from safetensors.torch import load, load_file, save, save_file

    from a2b_pipeline.checkpoint.checkpointer import CheckpointWriter
    from a2b_pipeline.checkpoint.directory import file_digest, fsync_path
    from a2b_pipeline.checkpoint.store import load_tensors
    from a2b_pipeline.state import TrainState

    cfg, model = big_model(args, mb)
    sd = model.state_dict()
    nbytes = sum(t.numel() * t.element_size() for t in sd.values())
    root = args.data_dir / "ckpt-bench"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)

    def raw(rep: int, sync: bool) -> tuple[float, float]:
        d = root / f"raw{int(sync)}-{rep}"
        d.mkdir()
        t0 = time.perf_counter()
        save_file(sd, str(d / "model.safetensors"))
        if sync:
            fsync_path(d / "model.safetensors")
            fsync_path(d)
        t1 = time.perf_counter()
        model.load_state_dict(load_file(str(d / "model.safetensors")))
        t2 = time.perf_counter()
        shutil.rmtree(d)
        return t1 - t0, t2 - t1

    writer = CheckpointWriter(background=True)  # one for the run, as in train(): its host buffers are reused

    def ckpt(rep: int, background: bool) -> tuple[float, float]:
        """to_checkpoint, or (background) what train()'s loop waits for: the write itself is not timed."""
        d = root / f"ckpt{int(background)}-{rep}"
        state = TrainState.from_config(cfg, root)
        t0 = time.perf_counter()
        if background:
            writer.save(state, d, {"model.safetensors": sd}, best=False)
        else:
            state.to_checkpoint(d, {"model.safetensors": sd})
        t1 = time.perf_counter()
        writer.wait()  # the loop trains meanwhile
        t2 = time.perf_counter()
        loaded = TrainState.from_checkpoint(d)
        model.load_state_dict(load_tensors(d, "model.safetensors", loaded))
        t3 = time.perf_counter()
        shutil.rmtree(d)
        return t1 - t0, t3 - t2

    arms = {
        "raw": lambda r: raw(r, False),
        "raw + fsync": lambda r: raw(r, True),
        "checkpoint": lambda r: ckpt(r, False),
        "trainer (async write)": lambda r: ckpt(r, True),
    }
    times: dict[str, dict[str, list[float]]] = {a: {"save": [], "load": []} for a in arms}
    for rep in range(n_reps):
        for a in C.rotate(list(arms), rep):
            os.sync()  # every arm starts with no dirty pages left by the one before (not timed)
            s, ld = arms[a](rep)
            times[a]["save"].append(s)
            times[a]["load"].append(ld)
        print(
            f"  rep {rep + 1}/{n_reps}: "
            + ", ".join(f"{a} {times[a]['save'][-1]:.3f}+{times[a]['load'][-1]:.3f} s" for a in arms),
            flush=True,
        )

    # ---- the parts, each timed on its own (median of the repetitions) ----
    parts: dict[str, list[float]] = {}

    def part(name: str, fn: Any) -> Any:
        os.sync()
        t = time.perf_counter()
        out = fn()
        parts.setdefault(name, []).append(time.perf_counter() - t)
        return out

    for _ in range(n_reps):
        blob = part("serialise to bytes (safetensors.save)", lambda: save(sd))
        f = root / "part.safetensors"

        def write(f: Path = f, blob: bytes = blob) -> None:
            with open(f, "wb") as fh:
                fh.write(blob)

        # a new file each time: ext4 flushes a file truncated and rewritten in place on close (auto_da_alloc)
        f.unlink(missing_ok=True)
        part("write (no fsync)", write)

        def write_fsync(f: Path = f, blob: bytes = blob) -> None:
            with open(f, "wb") as fh:
                fh.write(blob)
                fh.flush()
                os.fsync(fh.fileno())

        f.unlink()
        part("write + fsync", write_fsync)
        part(
            "sha256 of the bytes (the digest before xxh3)", lambda blob=blob: hashlib.sha256(blob).hexdigest()
        )
        part("xxh3_128 of the file (file_digest)", lambda f=f: file_digest(f))
        data = part("read file to bytes", lambda f=f: f.read_bytes())
        part("parse bytes (safetensors.load)", lambda data=data: load(data))
        f.unlink()
        part("save_file (direct)", lambda f=f: save_file(sd, str(f)))
        part("load_file + load_state_dict", lambda f=f: model.load_state_dict(load_file(str(f))))
        f.unlink()
    writer.close()
    shutil.rmtree(root, ignore_errors=True)

    med = {a: {k: C.median(v) for k, v in t.items()} for a, t in times.items()}
    rows, results = [], {}
    base = times["raw"]
    for a, t in times.items():
        total = [s + ld for s, ld in zip(t["save"], t["load"], strict=True)]
        base_total = [s + ld for s, ld in zip(base["save"], base["load"], strict=True)]
        r_save = C.paired(t["save"], base["save"])
        r_load = C.paired(t["load"], base["load"])
        r_total = C.paired(total, base_total)
        rows.append(
            [
                a,
                f"{med[a]['save']:.3f}",
                f"{med[a]['load']:.3f}",
                "-" if a == "raw" else C.fmt_ratio(r_save),
                "-" if a == "raw" else C.fmt_ratio(r_load),
                "-" if a == "raw" else C.fmt_ratio(r_total),
            ]
        )
        results[a] = {**t, "save_median_s": med[a]["save"], "load_median_s": med[a]["load"]}
        results[a].update(ratio_save=r_save, ratio_load=r_load, ratio_total=r_total)
    vs_sync = C.paired(
        [s + ld for s, ld in zip(times["checkpoint"]["save"], times["checkpoint"]["load"], strict=True)],
        [s + ld for s, ld in zip(times["raw + fsync"]["save"], times["raw + fsync"]["load"], strict=True)],
    )
    results["checkpoint_vs_raw_fsync_total"] = vs_sync
    C.table(
        f"Checkpoint of a {nbytes / 1e6:.0f} MB model ({len(sd)} tensors), {n_reps} reps, wall seconds; "
        "ratios = arm / raw per rep (time, lower is better), median [min..max]",
        ["arm", "save s", "load s", "save ratio", "load ratio", "save+load ratio"],
        rows,
    )
    print(f"checkpoint vs raw + fsync, save+load: {C.fmt_ratio(vs_sync)}")
    C.table(
        "The parts (median s)",
        ["part", "s", "MB/s"],
        [[k, f"{C.median(v):.3f}", f"{nbytes / 1e6 / C.median(v):.0f}"] for k, v in parts.items()],
    )
    for a in ("checkpoint", "trainer (async write)"):
        r = results[a]["ratio_total"]["median"]
        print(f"target within 1.2x of raw safetensors (save+load), {a}: {'met' if r <= 1.2 else 'NOT met'}")
    C.write_json(
        "checkpoint",
        {
            "quick": args.quick,
            "reps": n_reps,
            "bytes": nbytes,
            "tensors": len(sd),
            "arms": results,
            "parts_median_s": {k: C.median(v) for k, v in parts.items()},
        },
        args.json,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
