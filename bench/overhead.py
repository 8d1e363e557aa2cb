"""Trainer overhead: the same model, data, optimizer and steps through a bare PyTorch loop and train().

Arms (each repetition runs them in rotating order; medians over repetitions):
  a  bare loop      a plain loop written here: AdamW, cosine LambdaLR, F.mse_loss, clip_grad_norm_,
                    fed by the same MetaDataLoader (make_loader over the same prepare_data result)
  b  train()        validation, checkpointing and logging intervals set beyond the run, wandb disabled
  c  train() + log  the demo's logging: every 20 steps (quick: 10) to wandb offline
  d  train() demo   c plus the demo's validation and checkpoint every 50 steps (quick: 20)

Only the loop is timed, identically for every arm: a global optimizer step post-hook stamps the clocks after
each optimizer step, and the rate is taken from the stamp after step `warmup` to the stamp after the last
step. Setup (prepare_data, model build, wandb start) and teardown (the final validation and checkpoint that
train() always writes) fall outside that window; they are reported separately as fixed costs per call.

Also: a parity check (the bare loop's and train()'s final weights) and a host-read audit: every
tensor -> Python conversion (.item(), float(), bool(), int(), .tolist()) made from a2b_pipeline code outside
the data layer is counted per step during a train() run; on a GPU each one is a host-device sync, so
steps that don't log must show none.

    .venv/bin/python bench/overhead.py [--quick] [--reps N] [--steps N]
"""

from __future__ import annotations

import contextlib
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import _common as C
import torch
import torch.nn.functional as F

ARMS = {
    "a": "bare PyTorch loop",
    "b": "train(), val/ckpt/log off",
    "c": "train(), demo logging (wandb offline)",
    "d": "train(), demo log + val + ckpt",
}


def bare_loop(cfg: Any, data: Any, steps: int, clock: C.StepClock) -> torch.nn.Module:
    """What a researcher writes without a trainer."""
    from a2b_pipeline.data.pipeline import make_loader
    from a2b_pipeline.models import build_model, model_io

    device = torch.device("cpu")
    torch.manual_seed(cfg.seed)  # train() seeds the same way before building the model
    model = build_model(cfg.model, model_io(cfg)).to(device)
    o, s = cfg.optimizer, cfg.scheduler
    opt = torch.optim.AdamW(
        model.parameters(), lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay
    )

    def cosine(step: int) -> float:  # the demo's schedule: linear warm-up, then cosine to min_lr_ratio
        if step < s.warmup_steps:
            return (step + 1) / s.warmup_steps
        progress = min(1.0, (step - s.warmup_steps) / max(1, steps - s.warmup_steps))
        return s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine)
    loader = make_loader(data, cfg, "train")
    model.train()
    step = 0
    with clock:
        while step < steps:
            for x, y in loader:
                x, y = x.to(device), y.to(device)
                loss = F.mse_loss(model(x), y)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                step += 1
                if step == steps:
                    break
    return model


def run_train(cfg: Any, run_dir: Path, clock: C.StepClock) -> tuple[Any, C.Span]:
    from a2b_pipeline.state import TrainState
    from a2b_pipeline.train import train

    shutil.rmtree(run_dir, ignore_errors=True)
    state = TrainState.from_config(cfg, run_dir)
    start = C.clocks()
    with clock:
        state = train(state)
    total = C.Span.since(start)
    assert state.status == "complete", state.message
    return state, total


def arm_configs(args: Any, steps: int) -> dict[str, Any]:
    never = 10**9
    log_every, val_every = (10, 20) if args.quick else (20, 50)
    base = {"train": {"max_steps": steps, "num_epochs": None}}

    def cfg(log: int, val: int, ckpt: int, wandb: str) -> Any:
        over = C._merge(
            {"train": {"log_every_n_steps": log, "val_every_n_steps": val}},
            {"checkpoint": {"every_n_steps": ckpt}, "tracking": {"wandb_mode": wandb}},
        )
        return C.bench_config(args.data_dir, quick=args.quick, threads=args.threads, **C._merge(over, base))

    return {
        "a": cfg(never, never, never, "disabled"),
        "b": cfg(never, never, never, "disabled"),
        "c": cfg(log_every, never, never, "offline"),
        "d": cfg(log_every, val_every, val_every, "offline"),
    }


# ---- attribution: the loop's own time ----


class Attribution:
    """Splits each step's time into the work every loop shares (the model's forward, Tensor.backward,
    optimizer.step, optimizer.zero_grad, clip_grad_norm_, DataLoader __next__) and the rest: the loop's own
    time (the bare loop's Python and loss; train()'s bookkeeping, loss, MetaDataLoader). Both are measured in
    the same steps, so the own time is far less noisy than a difference of two runs' step times.
    """

    def __init__(self) -> None:
        self.step = 0  # optimizer steps completed
        self.shared: dict[int, float] = {}
        self._depth = 0
        self._t_fwd = 0.0
        self._t_opt: tuple[int, float] | None = None
        self._undo: list[Any] = []

    def add(self, step: int, dt: float) -> None:
        self.shared[step] = self.shared.get(step, 0.0) + dt

    def on_step(self, n: int) -> None:
        self.step = n

    def _timed(self, fn: Any) -> Any:
        def wrapper(*a: Any, **k: Any) -> Any:
            step, t = self.step, time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.add(step, time.perf_counter() - t)

        return wrapper

    def __enter__(self) -> Attribution:
        import torch.nn.modules.module as mm
        import torch.optim.optimizer as oo
        import torch.utils.data.dataloader as dl

        def fwd_pre(module: Any, inp: Any) -> None:
            if self._depth == 0:
                self._t_fwd = time.perf_counter()
            self._depth += 1

        def fwd_post(module: Any, inp: Any, out: Any) -> None:
            self._depth -= 1
            if self._depth == 0:
                self.add(self.step, time.perf_counter() - self._t_fwd)

        def opt_pre(opt: Any, a: Any, k: Any) -> None:
            self._t_opt = (self.step, time.perf_counter())

        def opt_post(opt: Any, a: Any, k: Any) -> None:
            if self._t_opt is not None:
                self.add(self._t_opt[0], time.perf_counter() - self._t_opt[1])
                self._t_opt = None

        self._undo = [
            mm.register_module_forward_pre_hook(fwd_pre),
            mm.register_module_forward_hook(fwd_post),
            oo.register_optimizer_step_pre_hook(opt_pre),
            oo.register_optimizer_step_post_hook(opt_post),
        ]
        for owner, name in (
            (torch.Tensor, "backward"),
            (torch.optim.Optimizer, "zero_grad"),
            (torch.nn.utils, "clip_grad_norm_"),
            (dl._BaseDataLoaderIter, "__next__"),
        ):
            original = getattr(owner, name)
            setattr(owner, name, self._timed(original))
            self._undo.append((owner, name, original))
        return self

    def __exit__(self, *exc: Any) -> None:
        for u in self._undo:
            if isinstance(u, tuple):
                setattr(*u)
            else:
                u.remove()
        self._undo = []

    def own_per_step(self, clock: C.StepClock, skip: int) -> tuple[float, float]:
        """(median own seconds per step, median step seconds) over the steps after `skip` (wall clock)."""
        st = [w for w, _ in clock.stamps]
        own, dur = [], []
        for k in range(skip + 1, len(st)):  # step k+1 ran while k steps were done
            d = st[k] - st[k - 1]
            dur.append(d)
            own.append(d - self.shared.get(k, 0.0))
        return C.median(own), C.median(dur)


def attribute(
    args: Any, cfgs: dict[str, Any], data: Any, names: list[str], steps: int, warmup: int, n_reps: int
) -> dict[str, Any]:
    own: dict[str, list[float]] = {n: [] for n in names}
    dur: dict[str, list[float]] = {n: [] for n in names}
    for rep in range(n_reps):
        for name in C.rotate(names, rep):
            att = Attribution()
            clock = C.StepClock(att.on_step)
            with att:
                if name == "a":
                    bare_loop(cfgs["a"], data, steps, clock)
                else:
                    run_dir = args.data_dir / "runs" / f"overhead-att-{name}"
                    run_train(cfgs[name], run_dir, clock)
                    shutil.rmtree(run_dir, ignore_errors=True)
            o, d = att.own_per_step(clock, warmup)
            own[name].append(o)
            dur[name].append(d)
    out: dict[str, Any] = {}
    base_own, base_dur = C.median(own["a"]), C.median(dur["a"])
    for name in names:
        extra = [(o - oa) / da for o, oa, da in zip(own[name], own["a"], dur["a"], strict=True)]
        out[name] = {
            "own_ms_per_step": 1e3 * C.median(own[name]),
            "step_ms": 1e3 * C.median(dur[name]),
            "own_ms_per_step_reps": [1e3 * x for x in own[name]],
            "extra_vs_a_share": C.median(extra),
            "extra_vs_a_share_min": min(extra),
            "extra_vs_a_share_max": max(extra),
        }
    out["a_own_ms"], out["a_step_ms"] = 1e3 * base_own, 1e3 * base_dur
    return out


# ---- host-read audit ----

_CONVERSIONS = ("item", "tolist", "__bool__", "__float__", "__int__")


@contextlib.contextmanager
def count_host_reads(step_of: list[int], counts: dict[int, list[str]]):
    """Count tensor -> Python conversions called from a2b_pipeline (the data layer excepted: it reads CPU
    tensors before they move to the device), by the step in progress."""
    import a2b_pipeline

    pkg = str(Path(a2b_pipeline.__file__).parent)
    data_dir = str(Path(pkg) / "data")
    originals = {name: getattr(torch.Tensor, name) for name in _CONVERSIONS}

    def wrap(name: str, fn: Any) -> Any:
        def wrapper(self: torch.Tensor, *a: Any, **k: Any) -> Any:
            frame = sys._getframe(1)
            where = frame.f_code.co_filename
            if where.startswith(pkg) and not where.startswith(data_dir):
                counts.setdefault(step_of[0], []).append(f"{Path(where).name}:{frame.f_lineno} {name}")
            return fn(self, *a, **k)

        return wrapper

    for name, fn in originals.items():
        setattr(torch.Tensor, name, wrap(name, fn))
    try:
        yield
    finally:
        for name, fn in originals.items():
            setattr(torch.Tensor, name, fn)


def audit(args: Any) -> dict[str, Any]:
    log_every = 5 if args.quick else 10
    steps = 3 * log_every
    cfg = C.bench_config(
        args.data_dir,
        quick=args.quick,
        threads=args.threads,
        train={
            "max_steps": steps,
            "num_epochs": None,
            "log_every_n_steps": log_every,
            "val_every_n_steps": 10**9,
        },
        checkpoint={"every_n_steps": 10**9},
    )
    step_of = [0]  # the step whose post-step code is running: optimizer steps done so far
    counts: dict[int, list[str]] = {}

    def on_step(n: int) -> None:
        step_of[0] = n

    with count_host_reads(step_of, counts):
        run_train(cfg, args.data_dir / "runs" / "audit", C.StepClock(on_step))
    loop_steps = range(1, steps)  # step `steps` ends the run: final validation and checkpoint follow it
    log_steps = [s for s in loop_steps if s % log_every == 0]
    other = [s for s in loop_steps if s % log_every]
    return {
        "steps": steps,
        "log_every_n_steps": log_every,
        "reads_on_non_log_steps": sum(len(counts.get(s, [])) for s in other),
        "reads_per_log_step": max((len(counts.get(s, [])) for s in log_steps), default=0),
        "reads_before_first_step": len(counts.get(0, [])),
        "where_on_log_steps": sorted({w for s in log_steps for w in counts.get(s, [])}),
        "where_on_non_log_steps": sorted({w for s in other for w in counts.get(s, [])}),
    }


# ---- main ----


def main() -> int:
    p = C.parser(__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default 60, quick 30)")
    p.add_argument("--warmup", type=int, default=None, help="steps left out first (default 5, quick 3)")
    p.add_argument("--arms", default="abcd", help="which arms to run (a is always run)")
    args = p.parse_args()
    steps = args.steps or (30 if args.quick else 60)
    warmup = args.warmup or (3 if args.quick else 5)
    n_reps = C.reps(args, full=5, quick=2)
    names = ["a"] + [a for a in args.arms if a in ARMS and a != "a"]
    C.setup_torch(args.threads)

    from a2b_pipeline.checkpoint.store import load_tensors
    from a2b_pipeline.data.pipeline import prepare_data

    cfgs = arm_configs(args, steps)
    t0 = C.clocks()
    data = prepare_data(cfgs["a"])  # synthesizes the corpora on the first run; the bare loop's data
    prep = C.Span.since(t0)
    print(f"prepare_data: {prep.wall:.1f} s (corpora and feature cache under {args.data_dir})", flush=True)

    series = {n: C.Series() for n in names}
    parity: dict[str, float] = {}
    for rep in range(n_reps):
        for name in C.rotate(names, rep):
            clock = C.StepClock()
            if name == "a":
                model = bare_loop(cfgs["a"], data, steps, clock)
                n, span = clock.window(warmup)
                series[name].add(n, span, **clock.median_steps(warmup))
                if rep == 0:
                    bare_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                run_dir = args.data_dir / "runs" / f"overhead-{name}"
                state, total = run_train(cfgs[name], run_dir, clock)
                n, span = clock.window(warmup)
                # what the call costs beyond its `steps` loop steps (at the measured rate)
                fixed = total.wall - span.wall * steps / n
                series[name].add(n, span, fixed_cost_s=fixed, **clock.median_steps(warmup))
                if name == "b" and rep == 0:
                    trained = load_tensors(state.last_checkpoint, "model.safetensors", state)
                    parity["max_abs_weight_diff_a_vs_b"] = max(
                        float((trained[k] - w).abs().max()) for k, w in bare_weights.items()
                    )
                shutil.rmtree(run_dir, ignore_errors=True)
            print(
                f"  rep {rep + 1}/{n_reps} {name}: {series[name].wall[-1]:.2f} steps/s wall, "
                f"{series[name].cpu[-1]:.2f} steps/s cpu",
                flush=True,
            )

    base = series["a"]
    rows, results = [], {}
    for name in names:
        s = series[name]
        ratios = {
            "wall": C.paired(s.wall, base.wall),
            "cpu": C.paired(s.cpu, base.cpu),
            # median step time: robust to bursts of descheduling, blind to periodic work (logging, saving)
            "median_step_wall": C.paired(base.extra["median_step_wall_s"], s.extra["median_step_wall_s"]),
            "median_step_cpu": C.paired(base.extra["median_step_cpu_s"], s.extra["median_step_cpu_s"]),
        }
        fixed = s.extra.get("fixed_cost_s")
        rows.append(
            [
                f"({name}) {ARMS[name]}",
                f"{C.median(s.wall):.2f}",
                f"{1 / C.median(s.extra['median_step_cpu_s']):.2f}",
                *("-" if name == "a" else C.fmt_ratio(r) for r in ratios.values()),
                "-" if not fixed else f"{C.median(fixed):.2f}",
            ]
        )
        results[name] = {"label": ARMS[name], **s.summary(), "ratios": ratios}
    C.table(
        f"Trainer overhead: {steps} steps/run, rate over steps {warmup}..{steps}, {n_reps} reps, "
        f"{args.threads} thread(s); ratios = arm speed / (a) speed per rep, median [min..max]",
        [
            "arm",
            "steps/s wall",
            "1/median step cpu",
            "ratio wall",
            "ratio cpu",
            "ratio median step wall",
            "ratio median step cpu",
            "fixed s/call",
        ],
        rows,
    )
    if "b" in series:
        r = results["b"]["ratios"]
        ok = r["median_step_cpu"]["median"] >= 0.98 and r["cpu"]["median"] >= 0.98
        print(
            f"target (b) within 2% of (a): {'met' if ok else 'NOT met'} (median-step ratio "
            f"{r['median_step_cpu']['median']:.3f}, mean-rate ratio {r['cpu']['median']:.3f}, CPU clock)"
        )
    if parity:
        print(f"parity: max |w_a - w_b| after {steps} steps = {parity['max_abs_weight_diff_a_vs_b']:.2e}")

    att = attribute(args, cfgs, data, names, steps, warmup, max(2, n_reps - 2))
    C.table(
        "Own time per step (median over steps, then over reps): step time minus the time inside the model's "
        "forward, backward, optimizer step/zero_grad, clip_grad_norm_ and DataLoader __next__",
        ["arm", "step ms", "own ms", "extra own vs (a), share of (a)'s step"],
        [
            [
                f"({n}) {ARMS[n]}",
                f"{att[n]['step_ms']:.2f}",
                f"{att[n]['own_ms_per_step']:.3f}",
                "-"
                if n == "a"
                else f"{100 * att[n]['extra_vs_a_share']:+.2f}% "
                f"[{100 * att[n]['extra_vs_a_share_min']:+.2f}..{100 * att[n]['extra_vs_a_share_max']:+.2f}]",
            ]
            for n in names
        ],
    )
    if "b" in att:
        extra = att["b"]["extra_vs_a_share"]
        print(
            f"target (b) within 2% of (a), by attribution: {'met' if extra <= 0.02 else 'NOT met'} "
            f"(train() adds {att['b']['own_ms_per_step'] - att['a_own_ms']:.3f} ms of own time per "
            f"step = {100 * extra:.2f}% of the bare loop's step)"
        )

    sync = audit(args)
    print(
        f"host reads from the trainer (each a host-device sync on GPU): {sync['reads_on_non_log_steps']} on "
        f"non-log steps, {sync['reads_per_log_step']} per log step ({', '.join(sync['where_on_log_steps'])})"
    )
    cfg_a = cfgs["a"]
    C.write_json(
        "overhead",
        {
            "quick": args.quick,
            "steps": steps,
            "warmup": warmup,
            "reps": n_reps,
            "threads": args.threads,
            "batch_size": cfg_a.data.batch_size,
            "model": cfg_a.model.model_dump(mode="json"),
            "prepare_data_s": prep.wall,
            "arms": results,
            "parity": parity,
            "attribution": att,
            "host_read_audit": sync,
        },
        args.json,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
