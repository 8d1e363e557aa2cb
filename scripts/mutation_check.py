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
        "training/engine.py",
        "self.shadow[k].lerp_(v, 1.0 - self.decay)",
        "self.shadow[k].lerp_(v, self.decay)",
        "EMA weight swapped",
    ),
    Bug(
        "training/engine.py",
        "    model.eval()\n    acc = MetricAccumulator",
        "    acc = MetricAccumulator",
        "validation in train mode",
    ),
    Bug(
        "training/engine.py",
        "@torch.no_grad()\ndef evaluate_loader",
        "def evaluate_loader",
        "validation with autograd",
    ),
    Bug(
        "training/engine.py",
        "            model.load_state_dict(backup)",
        "            pass",
        "EMA swap never undone",
    ),
    Bug(
        "training/engine.py",
        "    if missing or extra or shapes:",
        "    if missing or extra:",
        "misshapen weights accepted",
    ),
    # schedule.py
    Bug(
        "training/schedule.py",
        "math.ceil(batches_per_epoch * t.num_epochs / t.grad_accum_steps)",
        "batches_per_epoch * t.num_epochs // t.grad_accum_steps",
        "planned steps drop the short group",
    ),
    Bug(
        "training/schedule.py",
        "return start + (base - start) * (step + 1) / warm",
        "return start + (base - start) * step / warm",
        "warmup off by one",
    ),
    Bug(
        "training/schedule.py",
        "frozen = rule.until_step is None or step < rule.until_step",
        "frozen = rule.until_step is None or step <= rule.until_step",
        "unfreeze a step late",
    ),
    Bug("training/schedule.py", "return base * plateau_scale", "return base", "plateau scale ignored"),
    Bug(
        "training/schedule.py",
        "return max(1, math.ceil(batches_per_epoch / cfg.train.grad_accum_steps))",
        "return max(1, batches_per_epoch)",
        "epoch validation ignores accumulation",
    ),
    # checkpoint/checkpointer.py
    Bug(
        "checkpoint/checkpointer.py",
        "            self.ema.shadow = checked_weights(",
        "            _ = checked_weights(",
        "EMA shadow not restored",
    ),
    Bug(
        "checkpoint/checkpointer.py",
        "        self.plateau.update(state.optimizer_state.plateau)",
        "        pass",
        "plateau state not restored",
    ),
    Bug(
        "checkpoint/checkpointer.py",
        "            rngs[self.rank].restore()",
        "            pass",
        "RNG not restored",
    ),
    Bug(
        "checkpoint/checkpointer.py",
        "            self.scaler.load_state_dict(state.optimizer_state.scaler)",
        "            pass",
        "GradScaler not restored",
    ),
    Bug(
        "checkpoint/checkpointer.py",
        "    if best:\n        set_pointer",
        "    if True:\n        set_pointer",
        "best pointer moved by every save",
    ),
    Bug(
        "checkpoint/checkpointer.py",
        "        self.loader.load_state_dict(state.meta_dataloader_state.loader_state_dict())",
        "        pass",
        "loader position not restored",
    ),
    Bug(
        "checkpoint/checkpointer.py",
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
        "training/metrics.py",
        'return F.l1_loss(pred, true, reduction="none").mean((0, 1))',
        'return F.l1_loss(pred, true, reduction="none").sum((0, 1))',
        "l1 summed",
    ),
    Bug(
        "training/metrics.py",
        "cw = cw / cw.sum() * n_channels",
        "cw = cw / cw.sum()",
        "channel weights not rescaled",
    ),
    Bug(
        "training/metrics.py",
        "vp, vt = s[2] / n - mp**2, s[3] / n - mt**2",
        "vp, vt = s[2] / n - mp**2, s[3] / n - mp**2",
        "pooled variance of the wrong mean",
    ),
    Bug(
        "training/metrics.py",
        'out[f"{prefix}/{name}"] = float(per.mean())',
        'out[f"{prefix}/{name}"] = float(per[0])',
        "mean over channels is the first",
    ),
    Bug(
        "training/metrics.py",
        "return 2 * cov / (pv + tv + (pm - tm).square() + EPS)",
        "return 2 * cov / (pv + tv + EPS)",
        "CCC without the mean term",
    ),
    # scoring.py
    Bug(
        "evaluation/scoring.py",
        "(base[level][m] - model[level][m])\n                        if m in LOWER_IS_BETTER",
        "(model[level][m] - base[level][m])\n                        if m in LOWER_IS_BETTER",
        "error margin sign flipped",
    ),
    Bug(
        "evaluation/scoring.py",
        "np.percentile(meds, [2.5, 97.5])",
        "np.percentile(meds, [5, 95])",
        "90% interval as 95%",
    ),
    Bug(
        "evaluation/scoring.py",
        'out: dict[str, Any] = {"value": float(np.median(vals))',
        'out: dict[str, Any] = {"value": float(np.mean(vals))',
        "mean for median",
    ),
    Bug(
        "evaluation/scoring.py", "    if len(ids) >= 2:", "    if len(ids) >= 1:", "interval from one subject"
    ),
    Bug(
        "evaluation/scoring.py",
        '"mse": (err * err).mean(-2)}',
        '"mse": np.sqrt((err * err).mean(-2))}',
        "RMSE as MSE",
    ),
    # evaluate.py
    Bug(
        "evaluation/evaluate.py",
        "parts = {name: ds for name, ds in data.splits.get(split, {}).items() if len(ds)}",
        'parts = {name: ds for name, ds in data.splits.get("val", {}).items() if len(ds)}',
        "scores val under the label test",
    ),
    Bug(
        "evaluation/evaluate.py",
        'train = [lr for ds in data.splits["train"].values() for lr in ds.loaded]',
        "train = [lr for p in data.splits.values() for ds in p.values() for lr in ds.loaded]",
        "baselines fitted on every split",
    ),
    Bug(
        "evaluation/evaluate.py",
        "name = (state.model_state.ema_path or state.model_state.last_model_path).name",
        "name = state.model_state.last_model_path.name",
        "evaluation ignores EMA weights",
    ),
    Bug(
        "evaluation/evaluate.py",
        "count[s : s + m] += taper[:m]",
        "count[s : s + m] += 1",
        "overlap-add weights wrong",
    ),
    Bug(
        "evaluation/evaluate.py",
        '    if (path / "best" / STATE_FILE).exists():',
        "    if False:",
        "a run is evaluated at its last checkpoint, not its best",
    ),
    Bug(
        "evaluation/evaluate.py",
        "batch_size=cfg.data.batch_size, shuffle=False)",
        "batch_size=cfg.data.batch_size, shuffle=True)",
        "windows shuffled",
    ),
    Bug(
        "evaluation/evaluate.py",
        "    return state, model.to(device).eval()",
        "    return state, model.to(device)",
        "evaluation in train mode",
    ),
    # baselines.py
    Bug(
        "evaluation/baselines.py",
        'others = [y for who, y in self.listeners.get(group_key(lr.rec, "stimulus"), []) if who != me]',
        'others = [y for who, y in self.listeners.get(group_key(lr.rec, "stimulus"), [])]',
        "other listeners include the listener",
    ),
    Bug(
        "evaluation/baselines.py",
        "return np.tile(value, (n, 1))",
        "return np.tile(self.pooled_constant, (n, 1))",
        "constant not per dataset",
    ),
    Bug(
        "evaluation/baselines.py",
        "lags = sorted({round(s * data.target_rate) for s in LAG_SECONDS})",
        "lags = sorted({round(s * data.frame_rate) for s in LAG_SECONDS})",
        "lags counted in frames",
    ),
    Bug(
        "evaluation/baselines.py",
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
        "        times = times + rec.offset_seconds",
        "        times = times - rec.offset_seconds",
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
        "checkpoint/store.py",
        "    for ckpt in reversed(list_checkpoints(path)):",
        "    for ckpt in list_checkpoints(path):",
        "a run directory resumes from its oldest checkpoint",
    ),
    Bug(
        "checkpoint/store.py",
        "best_here = ck.best_step is not None and ck.best_step == state.global_step",
        "best_here = ck.best_step is not None",
        "every written checkpoint names itself best",
    ),
    Bug(
        "state.py",
        '        torch.set_rng_state(torch.tensor(self.torch_rng_state["cpu"], dtype=torch.uint8))',
        "        pass",
        "torch RNG not restored",
    ),
    # data/features.py
    Bug(
        "data/features.py",
        "return 2595.0 * torch.log10(1.0 + f / 700.0)",
        "return 2595.0 * torch.log(1.0 + f / 700.0)",
        "mel with ln",
    ),
    Bug(
        "data/features.py",
        "return 700.0 * (10.0 ** (m / 2595.0) - 1.0)",
        "return 700.0 * (10.0 ** (m / 2595.0))",
        "inverse mel without -1",
    ),
    Bug("data/features.py", "n_mels + 2)", "n_mels + 1)", "one edge short"),
    Bug("data/features.py", "fb = fb * (2.0 / (hi - lo))", "fb = fb * (1.0 / (hi - lo))", "half area"),
    Bug(
        "data/features.py",
        "torch.clamp(torch.minimum(up, down), min=0.0)",
        "torch.clamp(torch.maximum(up, down), min=0.0)",
        "triangles as max",
    ),
    Bug(
        "data/features.py",
        "def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float = 20.0)",
        "def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float = 0.0)",
        "f_min default 0",
    ),
    Bug(
        "data/features.py",
        "return max(0, math.ceil(n_samples * frame_rate / sample_rate - 1e-9))",
        "return max(0, math.floor(n_samples * frame_rate / sample_rate))",
        "frames floored",
    ),
    Bug(
        "data/features.py",
        "n_fft = 1 << max(8, math.ceil(math.log2(2 * hop)))",
        "n_fft = 1 << max(8, math.ceil(math.log2(hop)))",
        "n_fft of one hop",
    ),
    Bug(
        "data/features.py",
        'mode = "reflect" if wave.shape[-1] > half else "constant"',
        'mode = "constant"',
        "zero padding always",
    ),
    Bug(
        "data/features.py",
        "starts = torch.round(torch.arange(t, dtype=torch.float64) * hop).long()",
        "starts = (torch.arange(t, dtype=torch.float64) * hop).long()",
        "starts truncated",
    ),
    Bug(
        "data/features.py",
        "window = torch.hann_window(n_fft, periodic=True)",
        "window = torch.hann_window(n_fft, periodic=False)",
        "symmetric window",
    ),
    Bug(
        "data/features.py",
        "window = torch.hann_window(n_fft, periodic=True)",
        "window = torch.ones(n_fft)",
        "no window",
    ),
    Bug(
        "data/features.py",
        "frames = framed[i : min(i + 4096, t)]",
        "frames = framed[i : i + 4096]",
        "extra frames at the end",
    ),
    Bug(
        "data/features.py",
        "chunks.append((spec.real.square() + spec.imag.square()) @ fb)",
        "chunks.append(spec.abs() @ fb)",
        "magnitude not power",
    ),
    Bug("data/features.py", "return torch.log(mel + LOG_EPS)", "return torch.log10(mel + LOG_EPS)", "log10"),
    Bug("data/features.py", "(half, half), mode=mode)", "(0, n_fft), mode=mode)", "frames not centred"),
    Bug(
        "data/features.py",
        "framed = padded.unfold(0, n_fft, int(hop)) if hop == int(hop) else None",
        "framed = padded.unfold(0, n_fft, round(hop))",
        "strided view for a fractional hop",
    ),
    # models/layers.py
    Bug(
        "models/layers.py",
        "F.adaptive_avg_pool1d(h.transpose(1, 2), out_steps)",
        "F.adaptive_max_pool1d(h.transpose(1, 2), out_steps)",
        "max pooling",
    ),
    Bug(
        "models/layers.py",
        "nn.Conv1d(n_mels if i == 0 else channels, channels, 5, padding=2), nn.GELU()",
        "nn.Conv1d(n_mels if i == 0 else channels, channels, 3, padding=1), nn.GELU()",
        "kernel 3",
    ),
    Bug(
        "models/layers.py", "channels, 5, padding=2), nn.GELU()", "channels, 5, padding=2), nn.ReLU()", "ReLU"
    ),
    Bug("models/layers.py", "for i in range(layers):", "for i in range(layers - 1):", "one conv short"),
    Bug(
        "models/layers.py",
        "self.net = nn.Sequential(*blocks, nn.Dropout(dropout))",
        "self.net = nn.Sequential(*blocks)",
        "dropout dropped",
    ),
    # models/tcn.py
    Bug(
        "models/tcn.py",
        "self.pad = (kernel - 1) * dilation",
        "self.pad = (kernel - 1) * dilation // 2",
        "not causal-padded",
    ),
    Bug(
        "models/tcn.py",
        "h = self.drop(F.gelu(self.conv1(F.pad(x, (self.pad, 0)))))",
        "h = self.drop(F.gelu(self.conv1(F.pad(x, (0, self.pad)))))",
        "padded on the right: acausal",
    ),
    Bug("models/tcn.py", "return x + h", "return h", "no residual"),
    Bug(
        "models/tcn.py",
        "TemporalBlock(cfg.channels, cfg.kernel_size, 2**i, cfg.dropout)",
        "TemporalBlock(cfg.channels, cfg.kernel_size, 2 ** (i + 1), cfg.dropout)",
        "dilations from 2",
    ),
    Bug(
        "models/tcn.py",
        "TemporalBlock(cfg.channels, cfg.kernel_size, 2**i, cfg.dropout)",
        "TemporalBlock(cfg.channels, cfg.kernel_size, 2**i, 0.0)",
        "dropout ignored",
    ),
    Bug("models/tcn.py", "for i in range(cfg.levels)", "for i in range(cfg.levels - 1)", "one level short"),
    Bug(
        "models/tcn.py",
        "h = self.drop(F.gelu(self.conv2(F.pad(h, (self.pad, 0)))))",
        "h = self.drop(F.gelu(self.conv2(F.pad(x, (self.pad, 0)))))",
        "second conv on the input",
    ),
    # models/conv_gru.py
    Bug(
        "models/conv_gru.py",
        "cfg.conv_channels, cfg.hidden, cfg.layers, batch_first=True",
        "cfg.conv_channels, cfg.hidden, 1, batch_first=True",
        "layers ignored",
    ),
    Bug(
        "models/conv_gru.py",
        "ConvFrontEnd(io.n_mels, cfg.conv_channels, 2, cfg.dropout)",
        "ConvFrontEnd(io.n_mels, cfg.conv_channels, 2)",
        "dropout ignored",
    ),
    Bug(
        "models/conv_gru.py",
        "h = to_target_rate(self.frontend(x), self.out_steps)\n        h, _ = self.gru(h)\n"
        "        return self.head(h)",
        "h, _ = self.gru(self.frontend(x))\n        return self.head(to_target_rate(h, self.out_steps))",
        "GRU at the frame rate",
    ),
    Bug(
        "models/conv_gru.py",
        "batch_first=True, bidirectional=cfg.bidirectional",
        "batch_first=True, bidirectional=True",
        "always bidirectional",
    ),
    # models/transformer.py
    Bug("models/transformer.py", "h = self.encoder(h + pos[:t])", "h = self.encoder(h)", "no positions"),
    Bug(
        "models/transformer.py",
        "pe[:, 0::2] = torch.sin(pos * div)",
        "pe[:, 0::2] = torch.cos(pos * div)",
        "cos for sin",
    ),
    Bug("models/transformer.py", "(-math.log(10000.0) / d)", "(-math.log(1000.0) / d)", "base 1000"),
    Bug("models/transformer.py", "norm_first=True,", "norm_first=False,", "post-norm"),
    Bug("models/transformer.py", "cfg.d_model * cfg.ff_mult,", "cfg.d_model * 2,", "ff_mult ignored"),
    Bug(
        "models/transformer.py", "kernel_size=4, stride=4)", "kernel_size=4, stride=2)", "overlapping patches"
    ),
    Bug(
        "models/transformer.py",
        "h = self.encoder(h + pos[:t])",
        "h = self.encoder(h + pos[1 : t + 1])",
        "positions shifted by one",
    ),
    Bug(
        "models/transformer.py",
        "cfg.dropout,\n            activation",
        "0.0,\n            activation",
        "dropout ignored",
    ),
    # models/pretrained_encoder.py
    Bug(
        "models/pretrained_encoder.py",
        "self.encoder.requires_grad_(False)",
        "self.gru.requires_grad_(False)",
        "head frozen instead",
    ),
    Bug("models/pretrained_encoder.py", "if cfg.freeze_encoder:", "if True:", "always frozen"),
    Bug(
        "models/pretrained_encoder.py", "if missing or unexpected:", "if missing:", "unexpected keys accepted"
    ),
    Bug(
        "models/pretrained_encoder.py",
        "load_state_dict(load_file(str(path)), strict=False)",
        "load_state_dict(self.encoder.state_dict(), strict=False)",
        "weights never loaded",
    ),
    Bug(
        "models/pretrained_encoder.py",
        "self.gru = nn.GRU(cfg.encoder_channels, cfg.hidden, batch_first=True)",
        "self.gru = nn.GRU(cfg.encoder_channels, cfg.encoder_channels, batch_first=True)\n"
        "        cfg = cfg.model_copy(update={'hidden': cfg.encoder_channels})",
        "hidden ignored",
    ),
    # models/__init__.py
    Bug(
        "models/__init__.py",
        "in_frames=round(d.window_seconds * d.frame_rate)",
        "in_frames=int(d.window_seconds * d.frame_rate)",
        "frames truncated",
        "tests/test_models.py",
    ),
    Bug(
        "models/__init__.py",
        "out_steps=round(d.window_seconds * d.target_rate)",
        "out_steps=round(d.window_seconds * d.frame_rate)",
        "steps at the frame rate",
        "tests/test_models.py",
    ),
    Bug(
        "configs.py",
        'architecture = "a2b_pipeline.models.tcn:TCN"',
        'architecture = "a2b_pipeline.models.conv_gru:ConvGRU"',
        "tcn builds a conv_gru",
        "tests/test_models.py",
    ),
    Bug(
        "models/__init__.py",
        "channels=len(d.channels),",
        "channels=1,",
        "one channel",
        "tests/test_models.py",
    ),
    # checkpoint/directory.py
    Bug(
        "checkpoint/directory.py",
        'return f"step_{step:09d}"',
        'return f"step_{step:08d}"',
        "step names of 8 digits",
    ),
    Bug("checkpoint/directory.py", "and (p / STATE_FILE).exists()]", "]", "uncommitted checkpoints listed"),
    Bug(
        "checkpoint/directory.py",
        "return sorted(found, key=lambda p: p.name)",
        "return found",
        "listing unsorted",
    ),
    Bug(
        "checkpoint/directory.py",
        "    if real.parent != run:",
        "    if not str(real).startswith(str(run.parent)):",
        "symlinks to sibling runs accepted",
    ),
    Bug(
        "checkpoint/directory.py",
        "    if not stat.S_ISREG(mode):",
        "    if stat.S_ISDIR(mode):",
        "symlinked listed files accepted",
    ),
    Bug(
        "checkpoint/directory.py",
        "        raise CheckpointError(str(e)) from None",
        "        raise",
        "refusals escape as another error",
    ),
    Bug(
        "checkpoint/directory.py",
        "        if ckpt.is_symlink():  # not a checkpoint",
        "        if False:  # not a checkpoint",
        "symlinked checkpoint pruned",
    ),
    Bug(
        "checkpoint/directory.py",
        "        write_synced(tmp / STATE_FILE, state_json(files))",
        "        write_synced(tmp / STATE_FILE, state_json({}))",
        "state lists no digests",
    ),
    Bug(
        "checkpoint/directory.py",
        "            verify_file(tmp / name, digest)  # the copy",
        "            pass  # the copy",
        "copies not verified",
    ),
    Bug(
        "checkpoint/directory.py",
        "            shutil.rmtree(old, ignore_errors=True)\n        else:",
        "        else:",
        "old checkpoint left beside",
    ),
    Bug(
        "checkpoint/directory.py",
        "        shutil.rmtree(tmp, ignore_errors=True)\n        raise",
        "        raise",
        "temporary left after a failed write",
    ),
    Bug(
        "checkpoint/directory.py",
        "    os.symlink(target.name, tmp)",
        "    os.symlink(target, tmp)",
        "absolute pointer",
    ),
    Bug(
        "checkpoint/directory.py",
        "for ckpt in list_checkpoints(run_dir)[:-keep_last]:",
        "for ckpt in list_checkpoints(run_dir)[: -keep_last - 1]:",
        "keeps one too many",
    ),
    Bug(
        "checkpoint/directory.py",
        "        if ckpt.resolve() not in keep:",
        "        if True:",
        "protected pruned",
    ),
    Bug("checkpoint/directory.py", '*Path(run_dir).glob(".pruned-step_*")]', "]", "pruned debris left"),
    Bug(
        "checkpoint/directory.py",
        "            h.update(view[:n])",
        "            h.update(buf)",
        "digest of the whole buffer",
    ),
    Bug(
        "checkpoint/directory.py",
        '    algo = algo or "sha256"',
        '    algo = algo or "xxh3_128"',
        "bare digests as xxh3",
    ),
    Bug(
        "checkpoint/directory.py",
        "    if algo not in DIGEST_ALGOS:",
        "    if algo not in DIGEST_ALGOS and False:",
        "unknown digest accepted",
    ),
    Bug(
        "checkpoint/directory.py",
        '    if got.rpartition(":")[2] != want:',
        '    if got.rpartition(":")[2][:8] != want[:8]:',
        "digest prefix compared",
    ),
    Bug(
        "checkpoint/directory.py",
        '    if expected is None:\n        raise CheckpointError(f"{file}: not listed',
        '    if False:\n        raise CheckpointError(f"{file}: not listed',
        "unlisted tensors loaded",
    ),
    Bug(
        "checkpoint/directory.py",
        "    verify_file(file, expected)\n    try:",
        "    try:",
        "tensors loaded unverified",
    ),
    Bug(
        "checkpoint/directory.py",
        "                total += n * dt.itemsize",
        "                total += n",
        "tensor bytes as elements",
    ),
    Bug(
        "checkpoint/directory.py",
        "                dtype = dtype or dt",
        "                dtype = dt",
        "dtype of the last tensor",
    ),
    Bug(
        "checkpoint/directory.py",
        "            files[name] = digest_bytes(blob)",
        '            files[name] = digest_bytes(blob, "sha256")',
        "blob digests by another algorithm",
    ),
    # data/recording.py
    Bug(
        "data/recording.py",
        'row = f" row {self.row}" if self.row is not None else ""',
        'row = f" row {self.row}" if self.row else ""',
        "row 0 dropped",
    ),
    Bug(
        "data/recording.py",
        'src = f" of {self.source}" if self.source else ""',
        'src = ""',
        "source not named",
    ),
    Bug(
        "data/recording.py",
        "        self.path = redact_text(str(path))\n        self.reason",
        "        self.path = str(path)\n        self.reason",
        "error path not redacted",
    ),
    Bug(
        "data/recording.py",
        "        self.reason = redact_text(str(reason))\n        self.row = rec",
        "        self.reason = str(reason)\n        self.row = rec",
        "error reason not redacted",
    ),
    Bug(
        "data/recording.py",
        'where = redact_text(rec.where()) + ": " if rec else ""',
        'where = rec.where() + ": " if rec else ""',
        "locator not redacted",
    ),
    Bug(
        "data/recording.py",
        "        self.reason = redact_text(str(self.reason))",
        "        pass",
        "skip reason not redacted",
    ),
    Bug(
        "data/recording.py",
        'time_column: str | None = "time"',
        "time_column: str | None = None",
        "time column default",
    ),
    Bug("data/recording.py", "self.row = rec.row if rec else None", "self.row = None", "error row dropped"),
    # progress.py
    Bug(
        "training/progress.py",
        'return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"',
        'return f"{s // 3600}:{s // 60:02d}:{s % 60:02d}"',
        "minutes not modulo",
    ),
    Bug("training/progress.py", "s = int(round(seconds))", "s = int(seconds)", "clock truncates"),
    Bug(
        "training/progress.py",
        "return max(0.0, float(os.environ.get",
        "return abs(float(os.environ.get",
        "negative interval mirrored",
    ),
    Bug(
        "training/progress.py",
        "if self.lines and (now - self.last_t >= self.every_s or self.step >= self.total):",
        "if self.lines and now - self.last_t >= self.every_s:",
        "no line at the end",
    ),
    Bug(
        "training/progress.py",
        "rate = done / elapsed if elapsed > 0 else 0.0",
        "rate = self.step / elapsed if elapsed > 0 else 0.0",
        "rate counts resumed steps",
    ),
    Bug(
        "training/progress.py",
        'parts.append(f"ETA {_clock((self.total - self.step) / rate)}")',
        'parts.append(f"ETA {_clock(self.total / rate)}")',
        "ETA of the whole run",
    ),
    Bug(
        "training/progress.py",
        "self.lines = enabled and not show_bar",
        "self.lines = not show_bar",
        "every rank logs",
    ),
    Bug("training/progress.py", "            self.last_t = now\n", "", "interval never restarts"),
    Bug(
        "training/progress.py",
        "        if loss is not None:\n            self.loss",
        "        if True:\n            self.loss",
        "loss cleared by other postfixes",
    ),
    # distributed.py
    Bug(
        "training/distributed.py",
        "dist.all_reduce(t, op=dist.ReduceOp.MAX)",
        "dist.all_reduce(t, op=dist.ReduceOp.MIN)",
        "flag needs every rank",
    ),
    Bug(
        "training/distributed.py",
        "    if len(set(everyone)) != 1:",
        "    if len(set(everyone)) > 2:",
        "desync not noticed",
    ),
    Bug(
        "training/distributed.py",
        'int(os.environ.get("LOCAL_RANK", "0"))',
        "dist.get_rank()",
        "local rank as global",
    ),
    Bug("training/distributed.py", "        h.update(k.encode())\n", "", "digest without names"),
    Bug(
        "training/distributed.py",
        "            raise KeyboardInterrupt  # a second Ctrl-C",
        "            pass  # a second Ctrl-C",
        "second Ctrl-C ignored",
    ),
    Bug(
        "training/distributed.py",
        "if self.requested is not None and signum == signal.SIGINT:",
        "if signum == signal.SIGINT:",
        "first Ctrl-C kills",
    ),
    Bug(
        "training/distributed.py",
        "            signal.signal(sig, handler)\n",
        "            pass\n",
        "handlers not restored",
    ),
    Bug(
        "training/distributed.py",
        "for sig in (signal.SIGTERM, signal.SIGINT):",
        "for sig in (signal.SIGINT,):",
        "SIGTERM ignored",
    ),
    # tracking.py
    Bug(
        "training/tracking.py",
        'if os.environ.get("WANDB_DISABLED", "").strip().lower() in ("1", "true", "yes"):',
        'if os.environ.get("WANDB_DISABLED", ""):',
        "WANDB_DISABLED=false disables",
    ),
    Bug(
        "training/tracking.py",
        'env = os.environ.get("WANDB_MODE", "").strip().lower()',
        'env = os.environ.get("WANDB_MODE", "")',
        "mode not normalised",
    ),
    Bug(
        "training/tracking.py",
        'env = {"dryrun": "offline", "run": "online"}.get(env, env)',
        "",
        "legacy spellings refused",
    ),
    Bug(
        "training/tracking.py",
        "        return cfg.tracking.wandb_mode",
        '        return "offline"',
        "config mode ignored",
    ),
    Bug(
        "training/tracking.py",
        'if rank != 0 or self.mode == "disabled":',
        'if self.mode == "disabled":',
        "every rank tracks",
    ),
    Bug(
        "training/tracking.py",
        "self.run_id = run_id or uuid.uuid4().hex[:12]",
        "self.run_id = uuid.uuid4().hex[:12]",
        "resume gets a new run id",
    ),
    Bug(
        "training/tracking.py",
        'name=t.run_name or f"{cfg.name}-{cfg.config_hash()}"',
        "name=t.run_name",
        "runs unnamed",
    ),
    Bug("training/tracking.py", "            tags=t.tags,\n", "", "tags dropped"),
    Bug(
        "training/tracking.py",
        'self.run_path = f"{entity}/{t.project}/{self.run_id}"',
        'self.run_path = f"{t.project}/{self.run_id}"',
        "run path without entity",
    ),
    Bug("training/tracking.py", "            self.run = None\n", "", "finished run kept"),
    # predict.py
    Bug(
        "evaluation/predict.py",
        "            s = k * d.hop_seconds\n",
        "            s = k * d.window_seconds\n",
        "windows a window apart, not a hop",
    ),
    Bug(
        "evaluation/predict.py",
        "        if starts[-1][1] + tw < n_t:",
        "        if starts[-1][1] + tw < n_t - 1:",
        "end window off by one",
    ),
    Bug(
        "evaluation/predict.py",
        "            t0 = n_t - tw\n",
        "            t0 = n_t - tw - 1\n",
        "end window one early",
    ),
    Bug(
        "evaluation/predict.py",
        "        return y * std + mean",
        "        return (y - mean) / std",
        "normalised again, not undone",
    ),
    Bug(
        "evaluation/predict.py",
        'return "signal" if mode in ("global", "none") else "z"',
        'return "z"',
        "global runs in z-scores",
    ),
    Bug(
        "evaluation/predict.py",
        '        if mode == "subject" and self.subject is not None:',
        '        if mode == "subject":',
        "subject runs need a subject",
    ),
    Bug(
        "evaluation/predict.py",
        "n_t = max(1, math.ceil(seconds * d.target_rate - 1e-9))",
        "n_t = max(1, int(seconds * d.target_rate))",
        "last partial target dropped",
    ),
    Bug(
        "evaluation/predict.py",
        "x = torch.cat([x, torch.zeros(fw - x.shape[0], x.shape[1])])",
        "x = torch.cat([x, x[-1:].expand(fw - x.shape[0], -1)])",
        "short file padded with its last frame",
    ),
    Bug(
        "evaluation/predict.py",
        "x = self.norm.normalize_features(feats_in.float()).float()",
        "x = feats_in.float()",
        "features not normalised",
    ),
    Bug("evaluation/predict.py", "max(n_t, tw))[:n_t]", "max(n_t, tw))", "rows beyond the audio"),
    Bug(
        "evaluation/predict.py",
        "loud_db = torch.logsumexp(feats.double(), dim=1).numpy() * 10.0 / math.log(10.0)",
        "loud_db = feats.double().mean(1).numpy() * 10.0 / math.log(10.0)",
        "loudness as mean log-mel",
    ),
    Bug(
        "evaluation/predict.py",
        'names = [c if self.units == "signal" else f"{c}_z" for c in d.channels]',
        "names = list(d.channels)",
        "z-scores unlabelled",
    ),
    Bug(
        "evaluation/predict.py",
        "t = np.arange(len(y)) / d.target_rate\n        lines",
        "t = np.arange(len(y)) / d.frame_rate\n        lines",
        "time at the frame rate",
    ),
    Bug("evaluation/predict.py", '"rows": len(y),', '"rows": len(y) - 1,', "rows miscounted"),
    Bug(
        "evaluation/predict.py",
        'found = sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)',
        'found = sorted(p for p in item.glob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)',
        "subfolders not searched",
    ),
    Bug(
        "evaluation/predict.py",
        "p.suffix.lower() in AUDIO_SUFFIXES)",
        "p.suffix in AUDIO_SUFFIXES)",
        "upper-case suffixes skipped",
    ),
    Bug(
        "evaluation/predict.py",
        'out += [(p, str(p.relative_to(item).with_suffix(""))) for p in found]',
        "out += [(p, p.stem) for p in found]",
        "stems collide across subfolders",
    ),
    Bug(
        "evaluation/predict.py",
        "results.append(Predicted(path, error=f\"{path}: {reason.removeprefix(f'{path}: ')}\"))",
        'results.append(Predicted(path, error=f"{path}: {reason}"))',
        "file named twice",
    ),
    Bug(
        "evaluation/predict.py",
        "if saved is not None:\n        return saved",
        "if False:\n        return saved",
        "statistics always recomputed",
    ),
    # data/feature_cache.py
    Bug(
        "data/feature_cache.py",
        'return root / kind / key[:2] / f"{key}.a2bc"',
        'return root / key[:2] / f"{key}.a2bc"',
        "kinds share a folder",
    ),
    Bug(
        "data/feature_cache.py",
        'if not isinstance(header, dict) or header.get("key") != key:',
        "if not isinstance(header, dict):",
        "entry of another key accepted",
    ),
    Bug(
        "data/feature_cache.py",
        'ok = xxhash.xxh3_128_hexdigest(payload) == header["xxh3_128"]',
        "ok = True",
        "checksum not checked",
    ),
    Bug(
        "data/feature_cache.py",
        'ok = hashlib.sha256(payload).hexdigest() == header.get("sha256")',
        "ok = True",
        "legacy checksum not checked",
    ),
    Bug(
        "data/feature_cache.py",
        "    if off != len(payload):",
        "    if off > len(payload):",
        "trailing payload accepted",
    ),
    Bug("data/feature_cache.py", "            off += n\n", "", "arrays read from offset 0"),
    Bug("data/feature_cache.py", '            _count("corrupt")\n', "", "corrupt entries not counted"),
    Bug(
        "data/feature_cache.py",
        "        except (CorruptEntry, OSError):",
        "        except OSError:",
        "corrupt entry raised, not rebuilt",
    ),
    Bug(
        "data/feature_cache.py",
        'in ("0", "off", "false", "no")',
        'in ("0", "false")',
        "A2B_FEATURE_CACHE=off ignored",
    ),
    Bug(
        "data/feature_cache.py",
        "    if not _disabled():\n        try:",
        "    if True:\n        try:",
        "disabled cache still read",
    ),
    Bug(
        "data/feature_cache.py",
        '"audio": content_hash(local), **settings}',
        '"audio": local, **settings}',
        "key by path, not content",
    ),
    Bug(
        "data/feature_cache.py",
        '{"v": FEATURE_CODE_VERSION, "code": code_version(code),',
        '{"v": FEATURE_CODE_VERSION,',
        "features not keyed by code",
    ),
    Bug(
        "data/feature_cache.py",
        'settings = {"sample_rate": data.sample_rate, "n_mels": data.n_mels, "frame_rate": data.frame_rate}',
        'settings = {"sample_rate": data.sample_rate, "n_mels": data.n_mels}',
        "frame rate not in the key",
    ),
    Bug(
        "data/feature_cache.py",
        '            "offset": rec.offset_seconds,\n',
        "",
        "offset not in the target key",
    ),
    Bug(
        "data/feature_cache.py",
        '            "target_rate": data.target_rate,\n',
        "",
        "target rate not in the key",
    ),
    Bug(
        "data/feature_cache.py",
        "parts[ch] = [content_hash(local), src.column, src.time_column, src.rate]",
        "parts[ch] = [content_hash(local), src.column]",
        "signal layout not in the key",
    ),
    Bug(
        "data/feature_cache.py",
        "raise BadRecordingError(rec, back.get(e.path, e.path), e.reason) from None",
        "raise",
        "target error names the local path",
    ),
    Bug(
        "data/feature_cache.py",
        "path = rec.audio_path if e.path == local else e.path",
        "path = e.path",
        "audio error names the local path",
    ),
    Bug(
        "data/feature_cache.py",
        '{"target": tgt.detach().cpu().numpy().astype(np.float32)}',
        '{"target": tgt.detach().cpu().numpy()}',
        "target stored as float64",
    ),
    Bug(
        "data/feature_cache.py",
        "        return target[:n]",
        "        return target",
        "extend returns a longer target",
    ),
    Bug(
        "data/feature_cache.py",
        'float("nan"), dtype=target.dtype)',
        "0.0, dtype=target.dtype)",
        "zero padded",
    ),
    Bug(
        "data/feature_cache.py",
        "settled = time.time() - st.st_mtime_ns / 1e9 > 2.0",
        "settled = True",
        "racy stat memo",
    ),
    Bug(
        "data/feature_cache.py",
        "blob = json.dumps(settings, sort_keys=True,",
        "blob = json.dumps(settings, sort_keys=False,",
        "key depends on order",
    ),
    Bug(
        "data/feature_cache.py",
        "        if alive is not None and key in _ALIVE_META:",
        "        if False:",
        "song decoded per listener",
    ),
    Bug(
        "data/feature_cache.py",
        '        _ALIVE_META[key] = int(meta["n_samples"])',
        "        _ALIVE_META[key] = 0",
        "shared tensor's sample count lost",
    ),
    # configs.py
    Bug(
        "configs.py",
        "if self.val_fraction + self.test_fraction >= 1.0:",
        "if self.val_fraction + self.test_fraction > 1.0:",
        "fractions summing to 1 accepted",
    ),
    Bug(
        "configs.py",
        "        if len(set(names)) != len(names):",
        "        if False:",
        "duplicate dataset names accepted",
    ),
    Bug(
        "configs.py",
        "if sum(d.weight for d in self.datasets) <= 0:",
        "if sum(d.weight for d in self.datasets) < 0:",
        "all-zero weights accepted",
    ),
    Bug(
        "configs.py",
        "            if len(m.weights) != len(self.datasets):",
        "            if len(m.weights) < len(self.datasets):",
        "extra schedule weights accepted",
    ),
    Bug(
        "configs.py",
        "        if steps != sorted(steps):",
        "        if steps != sorted(set(steps)):",
        "equal milestone steps refused",
    ),
    Bug(
        "configs.py",
        "        if len(set(self.channels)) != len(self.channels):",
        "        if False:",
        "duplicate channels accepted",
    ),
    Bug(
        "configs.py",
        "if round(w * self.target_rate) < 1:",
        "if w * self.target_rate < 1:",
        "target check not rounded",
    ),
    Bug(
        "configs.py",
        "if self.frame_rate > self.sample_rate / 2:",
        "if self.frame_rate >= self.sample_rate / 2:",
        "Nyquist frame rate refused",
    ),
    Bug(
        "configs.py",
        "finest = 1.0 / max(self.frame_rate, self.target_rate)",
        "finest = 1.0 / self.frame_rate",
        "hop grid ignores the target rate",
    ),
    Bug(
        "configs.py",
        "        if per_batch > 2**28:",
        "        if per_batch >= 2**28:",
        "batch limit off by one",
    ),
    Bug(
        "configs.py",
        "            if step >= m.step:",
        "            if step > m.step:",
        "milestone a step late",
    ),
    Bug(
        "configs.py",
        "if self.fold is not None and (self.folds is None or self.fold >= self.folds):",
        "if self.fold is not None and self.folds is not None and self.fold > self.folds:",
        "fold out of range accepted",
    ),
    Bug(
        "configs.py",
        "        if self.max_steps is None and self.num_epochs is None:",
        "        if False:",
        "endless run accepted",
    ),
    Bug("configs.py", '        if not v.startswith("val/"):', "        if not v:", "train metric accepted"),
    Bug(
        "configs.py",
        "        if cw is not None and len(cw) != len(self.data.channels):",
        "        if False:",
        "channel weights unchecked",
    ),
    Bug(
        "configs.py",
        'NOT_HASHED: dict[str, Any] = {"checkpoint": {"async_write"}, "data": {"cache_max_gb"}}',
        'NOT_HASHED: dict[str, Any] = {"checkpoint": {"async_write"}}',
        "cache size in the hash",
    ),
    Bug("configs.py", '    "data.url_schemes",\n)', ")", "new default setting changes old hashes"),
    Bug(
        "configs.py",
        "        return hashlib.sha256(blob.encode()).hexdigest()[:16]",
        "        return hashlib.sha256(blob.encode()).hexdigest()[:12]",
        "hash length",
    ),
    Bug(
        "configs.py",
        'blob = json.dumps(dump, sort_keys=True, separators=(",", ":"))\n        return',
        'blob = json.dumps(dump, separators=(",", ":"))\n        return',
        "hash not canonical",
    ),
    Bug(
        "configs.py",
        "                update={name: getattr(getattr(source, section), name) for name in names}",
        "                update={}",
        "newest run settings ignored",
    ),
    Bug("configs.py", '            msg = "unknown key (typo?)"', "            pass", "typo message lost"),
    Bug(
        "configs.py",
        '        key, value = item.split("=", 1)',
        '        key, _, value = item.rpartition("=")',
        "split at the last =",
    ),
    Bug(
        "configs.py",
        "    if not -len(node) <= idx < len(node):",
        "    if not -len(node) <= idx <= len(node):",
        "index one past the end",
    ),
    Bug(
        "configs.py",
        "            if not isinstance(node, dict | list):",
        "            if False:",
        "scalar walked into",
    ),
    Bug("configs.py", "        if seen > limit:", "        if seen > limit + 1:", "alias limit off by one"),
    Bug("configs.py", "            stack.extend(node.keys())\n", "", "keys not counted"),
    Bug(
        "configs.py",
        "            blob = f.read(MAX_CONFIG_BYTES + 1)",
        "            blob = f.read(MAX_CONFIG_BYTES)",
        "big configs truncated",
    ),
    Bug(
        "configs.py",
        '        return blob.decode("utf-8-sig")',
        '        return blob.decode("utf-8")',
        "BOM kept",
    ),
    Bug(
        "configs.py",
        "    if not raw and empty_ok:",
        "    if not raw:",
        "empty file read as a config anywhere",
    ),
    Bug(
        "configs.py",
        'if ds.manifest and "://" not in ds.manifest and not Path(ds.manifest).is_file():',
        "if ds.manifest and not Path(ds.manifest).is_file():",
        "URL manifests checked on disk",
    ),
    Bug(
        "configs.py",
        "    while not existing.exists() and existing != existing.parent:",
        "    while not existing.is_dir() and existing != existing.parent:",
        "file in the run path passes",
    ),
    Bug(
        "configs.py",
        "            if value is not None:\n                setattr(model, name, fn(value))",
        "            setattr(model, name, fn(value) if value else value)",
        "empty paths unmapped",
    ),
    Bug(
        "configs.py",
        "    grad_clip: PositiveFloat | None = 1.0",
        "    grad_clip: PositiveFloat | None = None",
        "clipping off by default",
    ),
    Bug(
        "configs.py", "    keep_last: PositiveInt = 2", "    keep_last: PositiveInt = 1", "keep_last default"
    ),
    Bug("configs.py", '    metric: str = "val/pearson"', '    metric: str = "val/loss"', "metric default"),
    Bug(
        "configs.py",
        '    normalize: Literal["global", "subject", "none"] = "subject"',
        '    normalize: Literal["global", "subject", "none"] = "global"',
        "normalize default",
    ),
    # rundir_lock.py
    Bug(
        "checkpoint/lock.py",
        'return int(os.environ.get("RANK", "0")) == 0',
        'return int(os.environ.get("LOCAL_RANK", "0")) == 0',
        "every node's rank 0 locks",
    ),
    Bug(
        "checkpoint/lock.py",
        "            _HELD[key] = (fd, depth + 1)",
        "            _HELD[key] = (fd, depth)",
        "nested exit releases",
    ),
    Bug("checkpoint/lock.py", "            if depth > 1:", "            if depth > 0:", "never released"),
    Bug(
        "checkpoint/lock.py",
        "        if fresh:\n            clean_debris(path)",
        "        if True:\n            clean_debris(path)",
        "nested take cleans under a live writer",
    ),
    Bug(
        "checkpoint/lock.py",
        "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n    except BlockingIOError:\n        owner",
        "fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)\n    except BlockingIOError:\n        owner",
        "shared lock",
    ),
    Bug(
        "checkpoint/lock.py",
        '    info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}',
        '    info = {"pid": os.getppid(), "host": socket.gethostname(), "since": time.time()}',
        "owner is the parent",
    ),
    Bug("checkpoint/lock.py", "    os.ftruncate(fd, 0)\n", "", "owner appended, not replaced"),
    Bug(
        "checkpoint/lock.py",
        "            if not target.exists() and (entry / STATE_FILE).exists():",
        "            if not target.exists():",
        "uncommitted old step restored",
    ),
    Bug(
        "checkpoint/lock.py",
        "                os.replace(entry, target)  # the crash",
        "                shutil.rmtree(entry)  # the crash",
        "half-done rewrite deleted",
    ),
    Bug(
        "checkpoint/lock.py",
        'elif not name.startswith((".tmp-step_", ".pruned-step_")) and not (',
        'elif not name.startswith((".tmp-step_",)) and not (',
        "pruned debris kept",
    ),
    Bug(
        "checkpoint/lock.py",
        '            name.startswith(".") and name.endswith(".tmp")',
        '            name.endswith(".tmp")',
        "user .tmp files deleted",
    ),
    Bug(
        "checkpoint/lock.py",
        "        if entry.is_dir() and not entry.is_symlink():\n"
        "            shutil.rmtree(entry, ignore_errors",
        "        if entry.is_dir():\n            shutil.rmtree(entry, ignore_errors",
        "debris symlink followed",
    ),
    Bug(
        "checkpoint/lock.py",
        "        if entry.name != LOCK_FILE:\n            remove_inside",
        "        if True:\n            remove_inside",
        "lock file emptied",
    ),
    Bug(
        "checkpoint/lock.py",
        "    if os.path.realpath(run_dir) not in _HELD:\n        raise",
        "    if False:\n        raise",
        "emptied unheld",
    ),
    Bug("checkpoint/lock.py", "    _HELD.clear()\n", "", "forked child keeps the hold"),
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


def check_lines(bugs: list[Bug]) -> int:
    """Each bug's line must occur exactly once in its module, and its test file must exist: after a refactor,
    this says which bug lines to update."""
    bad = 0
    for bug in bugs:
        path = REPO / "a2b_pipeline" / bug.module
        count = path.read_text().count(bug.old) if path.is_file() else -1
        if count != 1 or not (REPO / bug.test_file).is_file():
            bad += 1
            where = "no such module" if count < 0 else f"occurs {count} times"
            print(f"STALE  {bug.module}: {bug.what} ({where}; tests {bug.test_file})")
    print(f"{len(bugs) - bad}/{len(bugs)} bug lines match")
    return 0 if bad == 0 else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-k", default="", help="only bugs whose module or description contains this")
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument(
        "--check", action="store_true", help="only check that each bug's line occurs once (no tests)"
    )
    args = ap.parse_args()
    bugs = [b for b in BUGS if args.k in b.module or args.k in b.what]
    if args.check:
        return check_lines(bugs)
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
