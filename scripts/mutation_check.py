"""Apply realistic one-line bugs to the core modules, one at a time, and check that the test file named for
the module (a2b_pipeline/<dir>/<name>.py -> tests/test_<name>.py) fails on each. Not part of CI: it runs
the named test files once per bug (a few minutes). Every file is restored after each bug, also on Ctrl-C.

    .venv/bin/python scripts/mutation_check.py            # all bugs; prints caught/missed and the rate
    .venv/bin/python scripts/mutation_check.py -k engine  # only bugs whose module or name contains "engine"
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Bug:
    module: str  # path under a2b_pipeline/
    old: str  # must occur exactly once in the module
    new: str
    what: str
    tests: str = ""  # test file, when not tests/test_<module name>.py

    @property
    def test_file(self) -> str:
        return self.tests or f"tests/test_{Path(self.module).stem}.py"


BUGS = [
    # train.py: accumulation, validation, best/early stopping, plateau
    Bug("train.py", "part = loss / accum if accum > 1 else loss", "part = loss", "no loss scaling"),
    Bug("train.py", "p.grad.mul_(accum / got)", "p.grad.mul_(1.0)", "short last group not rescaled"),
    Bug("train.py", "step_loss = step_loss / got", "step_loss = step_loss / accum", "logged loss over accum"),
    Bug(
        "train.py",
        "with run.ema.swapped_in(model) if run.ema else",
        "with contextlib.nullcontext() if run.ema else",
        "validation without EMA",
    ),
    Bug(
        "train.py",
        'return best is None or (value > best if mode == "max" else value < best)',
        'return best is None or (value < best if mode == "max" else value > best)',
        "max/min inverted",
    ),
    Bug(
        "train.py",
        'return best is None or (value > best if mode == "max" else value < best)',
        'return best is None or (value >= best if mode == "max" else value <= best)',
        "a tie improves",
    ),
    Bug(
        "train.py",
        "run.checkpointer.save(state, best=state.checkpoint_state.best_step == step)",
        "run.checkpointer.save(state, best=True)",
        "every save is best",
    ),
    Bug(
        "train.py",
        "return patience is not None and state.bad_validations > patience",
        "return patience is not None and state.bad_validations >= patience",
        "patience off by one",
    ),
    Bug(
        "train.py",
        "        state.bad_validations = 0\n",
        "        pass\n",
        "bad count not reset on improvement",
    ),
    Bug(
        "train.py",
        'if plateau["bad"] > cfg.scheduler.plateau_patience:',
        'if plateau["bad"] >= cfg.scheduler.plateau_patience:',
        "plateau patience off by one",
    ),
    Bug(
        "train.py",
        'plateau["scale"] *= cfg.scheduler.plateau_factor',
        'plateau["scale"] = cfg.scheduler.plateau_factor',
        "plateau drop not compounded",
    ),
    Bug(
        "train.py",
        'make_loader(data, cfg, "val") if rank == 0',
        'make_loader(data, cfg, "test") if rank == 0',
        "validation on the test split",
    ),
    Bug(
        "train.py",
        "norm = nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.train.grad_clip)",
        "norm = torch.zeros(())",
        "gradients not clipped",
    ),
    Bug(
        "train.py",
        'lr = lr_at(cfg, step, run.total_steps, run.plateau["scale"])',
        'lr = lr_at(cfg, step + 1, run.total_steps, run.plateau["scale"])',
        "lr of the next step",
    ),
    Bug("train.py", "        run.ema.update(raw_model)", "        pass", "EMA never updated"),
    Bug("train.py", "    optimizer.zero_grad(set_to_none=True)", "    pass", "gradients never zeroed"),
    Bug("train.py", "    state.metric_state.metrics.update(metrics)", "    pass", "metric_state not updated"),
    Bug(
        "train.py",
        "validate_now = step % val_interval(cfg_, len(run.train_loader)) == 0 or step == run.total_steps",
        "validate_now = step % val_interval(cfg_, len(run.train_loader)) == 0",
        "last step not validated",
    ),
    Bug(
        "train.py",
        "save_now = validate_now or stop_now or bool(every and step % every == 0)",
        "save_now = stop_now or bool(every and step % every == 0)",
        "no checkpoint at validation",
    ),
    # engine.py
    Bug(
        "engine.py",
        "self.shadow[k].lerp_(v, 1.0 - self.decay)",
        "self.shadow[k].lerp_(v, self.decay)",
        "EMA weight swapped",
    ),
    Bug(
        "engine.py",
        "    model.eval()\n    acc = MetricAccumulator",
        "    acc = MetricAccumulator",
        "validation in train mode",
    ),
    Bug(
        "engine.py",
        "@torch.no_grad()\ndef evaluate_loader",
        "def evaluate_loader",
        "validation with autograd",
    ),
    Bug(
        "engine.py", "            model.load_state_dict(backup)", "            pass", "EMA swap never undone"
    ),
    Bug(
        "engine.py",
        "    if missing or extra or shapes:",
        "    if missing or extra:",
        "misshapen weights accepted",
    ),
    # schedule.py
    Bug(
        "schedule.py",
        "math.ceil(batches_per_epoch * t.num_epochs / t.grad_accum_steps)",
        "batches_per_epoch * t.num_epochs // t.grad_accum_steps",
        "planned steps drop the short group",
    ),
    Bug(
        "schedule.py",
        "return start + (base - start) * (step + 1) / warm",
        "return start + (base - start) * step / warm",
        "warmup off by one",
    ),
    Bug(
        "schedule.py",
        "frozen = rule.until_step is None or step < rule.until_step",
        "frozen = rule.until_step is None or step <= rule.until_step",
        "unfreeze a step late",
    ),
    Bug("schedule.py", "return base * plateau_scale", "return base", "plateau scale ignored"),
    Bug(
        "schedule.py",
        "return max(1, math.ceil(batches_per_epoch / cfg.train.grad_accum_steps))",
        "return max(1, batches_per_epoch)",
        "epoch validation ignores accumulation",
    ),
    # checkpointing.py
    Bug(
        "checkpointing.py",
        "            self.ema.shadow = checked_weights(",
        "            _ = checked_weights(",
        "EMA shadow not restored",
    ),
    Bug(
        "checkpointing.py",
        "        self.plateau.update(state.optimizer_state.plateau)",
        "        pass",
        "plateau state not restored",
    ),
    Bug("checkpointing.py", "            rngs[self.rank].restore()", "            pass", "RNG not restored"),
    Bug(
        "checkpointing.py",
        "            self.scaler.load_state_dict(state.optimizer_state.scaler)",
        "            pass",
        "GradScaler not restored",
    ),
    Bug(
        "checkpointing.py",
        "    if best:\n        set_pointer",
        "    if True:\n        set_pointer",
        "best pointer moved by every save",
    ),
    Bug(
        "checkpointing.py",
        "        self.loader.load_state_dict(state.meta_dataloader_state.loader_state_dict())",
        "        pass",
        "loader position not restored",
    ),
    Bug(
        "checkpointing.py",
        "protect=[best_dir, path]",
        "protect=[path]",
        "retention prunes the best checkpoint",
    ),
    # state.py (RNG capture)
    Bug(
        "state.py",
        "            python_rng_state=random.getstate(),\n        )\n\n    def restore",
        "            python_rng_state=random.Random(seed).getstate(),\n        )\n\n    def restore",
        "python RNG not captured",
    ),
    Bug("state.py", "        np.random.set_state((", "        (", "numpy RNG not restored"),
    # metrics.py
    Bug(
        "metrics.py",
        'return F.l1_loss(pred, true, reduction="none").mean((0, 1))',
        'return F.l1_loss(pred, true, reduction="none").sum((0, 1))',
        "l1 summed",
    ),
    Bug(
        "metrics.py", "cw = cw / cw.sum() * n_channels", "cw = cw / cw.sum()", "channel weights not rescaled"
    ),
    Bug(
        "metrics.py",
        "vp, vt = s[2] / n - mp**2, s[3] / n - mt**2",
        "vp, vt = s[2] / n - mp**2, s[3] / n - mp**2",
        "pooled variance of the wrong mean",
    ),
    Bug(
        "metrics.py",
        'out[f"{prefix}/{name}"] = float(per.mean())',
        'out[f"{prefix}/{name}"] = float(per[0])',
        "mean over channels is the first",
    ),
    Bug(
        "metrics.py",
        "return 2 * cov / (pv + tv + (pm - tm).square() + EPS)",
        "return 2 * cov / (pv + tv + EPS)",
        "CCC without the mean term",
    ),
    # scoring.py
    Bug(
        "scoring.py",
        "(base[level][m] - model[level][m])\n                        if m in LOWER_IS_BETTER",
        "(model[level][m] - base[level][m])\n                        if m in LOWER_IS_BETTER",
        "error margin sign flipped",
    ),
    Bug(
        "scoring.py",
        "np.percentile(meds, [2.5, 97.5])",
        "np.percentile(meds, [5, 95])",
        "90% interval as 95%",
    ),
    Bug(
        "scoring.py",
        'out: dict[str, Any] = {"value": float(np.median(vals))',
        'out: dict[str, Any] = {"value": float(np.mean(vals))',
        "mean for median",
    ),
    Bug("scoring.py", "    if len(ids) >= 2:", "    if len(ids) >= 1:", "interval from one subject"),
    Bug(
        "scoring.py",
        '"mse": (err * err).mean(-2)}',
        '"mse": np.sqrt((err * err).mean(-2))}',
        "RMSE as MSE",
    ),
    # evaluate.py
    Bug(
        "evaluate.py",
        "parts = {name: ds for name, ds in data.splits.get(split, {}).items() if len(ds)}",
        'parts = {name: ds for name, ds in data.splits.get("val", {}).items() if len(ds)}',
        "scores val under the label test",
    ),
    Bug(
        "evaluate.py",
        'train = [lr for ds in data.splits["train"].values() for lr in ds.loaded]',
        "train = [lr for p in data.splits.values() for ds in p.values() for lr in ds.loaded]",
        "baselines fitted on every split",
    ),
    Bug(
        "evaluate.py",
        "name = (state.model_state.ema_path or state.model_state.last_model_path).name",
        "name = state.model_state.last_model_path.name",
        "evaluation ignores EMA weights",
    ),
    Bug("evaluate.py", "count[s : s + m] += taper[:m]", "count[s : s + m] += 1", "overlap-add weights wrong"),
    Bug(
        "evaluate.py",
        '    if (path / "best" / "train_state.json").exists():',
        "    if False:",
        "a run is evaluated at its last checkpoint, not its best",
    ),
    Bug(
        "evaluate.py",
        "batch_size=cfg.data.batch_size, shuffle=False)",
        "batch_size=cfg.data.batch_size, shuffle=True)",
        "windows shuffled",
    ),
    Bug(
        "evaluate.py",
        "    return state, model.to(device).eval()",
        "    return state, model.to(device)",
        "evaluation in train mode",
    ),
    # baselines.py
    Bug(
        "baselines.py",
        'others = [y for who, y in self.listeners.get(group_key(lr.rec, "stimulus"), []) if who != me]',
        'others = [y for who, y in self.listeners.get(group_key(lr.rec, "stimulus"), [])]',
        "other listeners include the listener",
    ),
    Bug(
        "baselines.py",
        "return np.tile(value, (n, 1))",
        "return np.tile(self.pooled_constant, (n, 1))",
        "constant not per dataset",
    ),
    Bug(
        "baselines.py",
        "lags = sorted({round(s * data.target_rate) for s in LAG_SECONDS})",
        "lags = sorted({round(s * data.frame_rate) for s in LAG_SECONDS})",
        "lags counted in frames",
    ),
    Bug(
        "baselines.py",
        "frame = np.logaddexp.reduce(feats, axis=1)",
        "frame = feats.mean(axis=1)",
        "loudness as the mean log-mel",
    ),
    # data/datasets.py
    Bug(
        "data/datasets.py",
        "    tm, ts = _moments([r.target for r in train], len(data.channels))",
        "    tm, ts = _moments([r.target for r in everything], len(data.channels))",
        "target stats over every split",
    ),
    Bug(
        "data/datasets.py",
        "std = (ss / n - mean.square()).clamp_min(0).sqrt()",
        "std = (ss / n).clamp_min(0).sqrt()",
        "std without the mean",
    ),
    Bug(
        "data/datasets.py",
        "if f0 + fw > r.model_input.shape[0] or t0 + tw > r.target.shape[0]:",
        "if f0 + fw >= r.model_input.shape[0] or t0 + tw >= r.target.shape[0]:",
        "last window dropped",
    ),
    Bug(
        "data/datasets.py",
        "                if torch.isfinite(r.target[t0 : t0 + tw]).all():",
        "                if torch.isfinite(r.target[t0 : t0 + tw]).any():",
        "windows with gaps kept",
    ),
    Bug(
        "data/datasets.py",
        "n_t = math.ceil(limit * data.target_rate - 1e-9)",
        "n_t = math.floor(limit * data.target_rate - 1e-9)",
        "target grid one short",
    ),
    Bug(
        "data/datasets.py",
        "if abs(end - limit) > data.duration_tolerance_seconds:",
        "if end - limit > data.duration_tolerance_seconds:",
        "short signals pass the duration check",
    ),
    # data/pipeline.py
    Bug(
        "data/pipeline.py",
        "        train, everything + [d.loaded for d in dropped], cfg.data",
        "        everything, everything + [d.loaded for d in dropped], cfg.data",
        "normalisation over every split",
    ),
    Bug("data/pipeline.py", 'shuffle=split == "train",', "shuffle=True,", "val/test shuffled"),
    Bug(
        "data/pipeline.py",
        'w = [weights[i] for i in indices] if split == "train" else [1.0] * len(loaders)',
        "w = [weights[i] for i in indices]",
        "val weighted like train",
    ),
    Bug(
        "data/pipeline.py",
        "h.update(json.dumps(item + [_file_id(p) for p in files]).encode())",
        "h.update(json.dumps(item).encode())",
        "data version ignores file changes",
    ),
    Bug(
        "data/pipeline.py",
        'settings["datasets"] = [{k: v for k, v in d.items() if k != "weight"} for d in data["datasets"]]',
        'settings["datasets"] = data["datasets"]',
        "data version changes with weights",
    ),
    # data/targets.py
    Bug(
        "data/targets.py",
        "return min(float(t[-1] + np.median(np.diff(t))) for t, _ in series)",
        "return min(float(t[-1]) for t, _ in series)",
        "signal end without its last interval",
    ),
    Bug(
        "data/targets.py",
        "out.append((times + rec.offset_seconds, values))",
        "out.append((times - rec.offset_seconds, values))",
        "offset sign",
    ),
    Bug(
        "data/targets.py",
        "cols = [np.interp(grid, t, v, left=np.nan, right=np.nan) for t, v in series]",
        "cols = [np.interp(grid, t, v) for t, v in series]",
        "no NaN outside the signal",
    ),
    Bug(
        "data/targets.py",
        "steps = np.flatnonzero(np.diff(times) <= 0)",
        "steps = np.flatnonzero(np.diff(times) < 0)",
        "repeated timestamps accepted",
    ),
    # a second batch, written after the tests, on modules this work did not add tests to (their own files)
    Bug(
        "data/meta_dataloader.py",
        "avail = [w if c < n else 0.0 for w, c, n in left]",
        "avail = [w if c <= n else 0.0 for w, c, n in left]",
        "exhausted loaders stay drawable",
    ),
    Bug(
        "data/meta_dataloader.py",
        "sampler.skip(done * batch_size)",
        "sampler.skip(done)",
        "resume skips batches as samples",
    ),
    Bug(
        "data/meta_dataloader.py",
        "zip(self.dataloaders, self._weights, strict=True) if w > 0)",
        "zip(self.dataloaders, self._weights, strict=True) if w >= 0)",
        "len counts zero-weight loaders",
    ),
    Bug(
        "data/meta_dataloader.py",
        "return -(-self.n // self.world_size)",
        "return self.n // self.world_size",
        "shard length rounds down",
    ),
    Bug(
        "data/meta_dataloader.py",
        'derive_seed("sampler", self.seed, self.epoch)',
        'derive_seed("sampler", self.seed, 0)',
        "same sample order every epoch",
    ),
    Bug(
        "data/meta_dataloader.py",
        'return gen.manual_seed(derive_seed("meta", self.seed, self.epoch))',
        'return gen.manual_seed(derive_seed("meta", self.seed, 0))',
        "same mix order every epoch",
    ),
    Bug("data/splits.py", "        n_val = max(n_val, 1)", "        pass", "val may be empty"),
    Bug(
        "data/splits.py", "        if n_test >= n_val:", "        if n_test > n_val:", "tie shrinks val first"
    ),
    Bug(
        "data/splits.py",
        "k: SPLITS[2] if i < n_test else SPLITS[1] if i < n_test + n_val else SPLITS[0]",
        "k: SPLITS[1] if i < n_test else SPLITS[2] if i < n_test + n_val else SPLITS[0]",
        "val and test swapped",
    ),
    Bug(
        "state.py",
        "        for ckpt in reversed(list_checkpoints(path)):",
        "        for ckpt in list_checkpoints(path):",
        "a run directory resumes from its oldest checkpoint",
    ),
    Bug(
        "state.py",
        "best_here = ck.best_step is not None and ck.best_step == self.global_step",
        "best_here = ck.best_step is not None",
        "every written checkpoint names itself best",
    ),
    Bug(
        "state.py",
        '        torch.set_rng_state(torch.tensor(self.torch_rng_state["cpu"], dtype=torch.uint8))',
        "        pass",
        "torch RNG not restored",
    ),
]


# The fast tests

# The fast tests of a slow file, tried first; a bug they miss is tried against the whole file.
FAST = {
    "tests/test_train.py": "grad_accumulation or independent_evaluation or best_checkpoint or patience_none "
    "or plateau_drop or by_hand or last_step",
}


def run_tests(test_file: str, timeout: float) -> tuple[bool, float]:
    """True when the tests fail (the bug is caught)."""
    start = time.monotonic()
    base = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", test_file]
    tries = [[*base, "-k", FAST[test_file]], base] if test_file in FAST else [base]
    for cmd in tries:
        try:
            proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return True, time.monotonic() - start  # a hang is noticed too
        if proc.returncode != 0:
            return True, time.monotonic() - start
    return False, time.monotonic() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-k", default="", help="only bugs whose module or description contains this")
    ap.add_argument("--timeout", type=float, default=600.0)
    args = ap.parse_args()
    bugs = [b for b in BUGS if args.k in b.module or args.k in b.what]
    caught = 0
    for bug in bugs:
        path = REPO / "a2b_pipeline" / bug.module
        original = path.read_text()
        if original.count(bug.old) != 1:
            print(
                f"SKIP  {bug.module}: {bug.what} (the line to break occurs {original.count(bug.old)} times)"
            )
            continue
        try:
            path.write_text(original.replace(bug.old, bug.new))
            failed, seconds = run_tests(bug.test_file, args.timeout)
        finally:
            path.write_text(original)
        caught += failed
        verdict = "caught" if failed else "MISSED"
        print(f"{verdict}  {bug.module}: {bug.what}  [{bug.test_file}, {seconds:.0f} s]")
    print(f"{caught}/{len(bugs)} caught ({100 * caught / max(1, len(bugs)):.0f}%)")
    return 0 if caught == len(bugs) else 1


if __name__ == "__main__":
    sys.exit(main())
