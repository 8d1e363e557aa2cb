"""The trainer: it learns, resumes bit for bit after SIGKILL, stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import _tiny
import pytest
import torch
from _util import (
    final_tensors,
    kill_after,
    longer_run,
    losses_after,
    run_cli,
    start_training,
    wait_for,
    write_config,
)

from a2b_pipeline.checkpoint.directory import checkpoint_name
from a2b_pipeline.checkpoint.store import load_tensors
from a2b_pipeline.configs import config_from_dict
from a2b_pipeline.data.pipeline import make_loader, prepare_data
from a2b_pipeline.state import TrainState
from a2b_pipeline.train import train
from a2b_pipeline.training.metrics import MetricAccumulator


@pytest.mark.parametrize("num_workers", [0, 2])
def test_sigkill_then_resume_is_bit_exact(tmp_path: Path, num_workers: int) -> None:
    raw = longer_run(tmp_path)
    raw["data"]["num_workers"] = num_workers
    # Run A: uninterrupted, in its own run directory.
    cfg_a = write_config(tmp_path, raw, "a")
    run_a = Path(run_cli("train", str(cfg_a), "--run-dir", str(tmp_path / "run_a")).stdout.strip())
    state_a, weights_a, opt_a = final_tensors(run_a)
    assert state_a.status == "complete" and state_a.global_step == 40
    assert state_a.epoch >= 2, "the run must cross an epoch boundary for this test to mean anything"

    # Run B: same config, SIGKILLed once its step-15 checkpoint exists, then resumed.
    run_b = tmp_path / "run_b"
    resumed_from = kill_after(cfg_a, run_b, 15)
    assert 15 <= resumed_from < 40
    run_cli("resume", str(run_b))
    state_b, weights_b, opt_b = final_tensors(run_b)

    assert state_b.status == "complete" and state_b.global_step == 40
    assert weights_a.keys() == weights_b.keys() and opt_a.keys() == opt_b.keys()
    for k in weights_a:
        assert torch.equal(weights_a[k], weights_b[k]), f"weight {k} differs after resume"
    for k in opt_a:
        assert torch.equal(opt_a[k], opt_b[k]), f"optimizer tensor {k} differs after resume"
    assert state_b.optimizer_state.param_groups == state_a.optimizer_state.param_groups
    after_a, after_b = losses_after(state_a, resumed_from), losses_after(state_b, resumed_from)
    assert len(after_a) == 40 - resumed_from and after_a == after_b


def test_sigterm_checkpoints_and_stops(tmp_path: Path) -> None:
    raw = longer_run(tmp_path)
    raw["train"]["max_steps"] = 2000
    cfg = write_config(tmp_path, raw, "long")
    run = tmp_path / "run"
    proc = start_training(cfg, run)
    wait_for(run / checkpoint_name(5), proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err[-2000:]
    assert "stopped by signal" in err
    state = TrainState.from_checkpoint(run)
    assert state.status == "stopped" and 5 <= state.global_step < 2000
    assert load_tensors(state.last_checkpoint, "model.safetensors", state)


def test_learns_and_metric_is_real(tmp_path: Path) -> None:
    raw = longer_run(
        tmp_path,
    )
    raw["train"].update(max_steps=120, val_every_n_steps=40, log_every_n_steps=20, num_threads=None)
    raw["checkpoint"]["every_n_steps"] = None
    cfg = config_from_dict(raw)
    state = train(TrainState.from_config(cfg))
    assert state.status == "complete"
    # 4 s windows of 16 s recordings of listeners who respond to events seconds later, with responses of
    # their own (data/synthetic.py): r ~0.35 after 120 steps; chance (below) is ~0
    best = state.checkpoint_state.best_value
    assert best is not None and best >= 0.25, best
    assert (Path(state.run_dir) / "best").resolve() == state.best_checkpoint.resolve()

    # A model that outputs the training mean (zero in normalised units), or the truth shuffled
    # across windows, scores r near 0: the metric measures the fit, not the signal's shape.
    data = prepare_data(cfg)
    const, shuffled = MetricAccumulator(cfg.data.channels), MetricAccumulator(cfg.data.channels)
    ys = torch.cat([y for _, y in make_loader(data, cfg, "val")])
    g = torch.Generator().manual_seed(0)
    const.update(torch.zeros_like(ys), ys)
    shuffled.update(ys[torch.randperm(len(ys), generator=g)], ys)
    assert abs(const.compute("val")["val/pearson"]) < 0.05
    assert abs(shuffled.compute("val")["val/pearson"]) < 0.3
    assert best > abs(shuffled.compute("val")["val/pearson"]) + 0.1


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path: Path) -> None:
    raw = longer_run(tmp_path)
    raw["optimizer"] = {"name": "sgd", "lr": 1e8, "momentum": 0.0}  # diverges within a few steps
    raw["train"]["grad_clip"] = None
    raw["scheduler"] = {"name": "constant"}
    raw["checkpoint"]["every_n_steps"] = 1
    state = train(TrainState.from_config(config_from_dict(raw)))
    assert state.status == "stopped" and "non-finite" in state.message
    good = TrainState.from_checkpoint(state.run_dir)
    weights = load_tensors(good.last_checkpoint, "model.safetensors", good)
    assert all(torch.isfinite(t).all() for t in weights.values())
    assert good.global_step < state.global_step


def test_async_checkpoint_writes_equal_sync_writes(tmp_path: Path) -> None:
    """A background write saves the state of its own step, while the loop goes on changing the weights."""
    runs = {}
    for background in (True, False):
        raw = longer_run(tmp_path)
        raw["train"]["max_steps"] = 12
        raw["checkpoint"].update(every_n_steps=1, keep_last=20, async_write=background)
        cfg = config_from_dict(raw)
        runs[background] = train(TrainState.from_config(cfg, run_dir=tmp_path / f"async-{background}"))
    done, ref = runs[True], runs[False]
    assert done.status == ref.status == "complete"
    last = TrainState.from_checkpoint(done.run_dir)
    assert (
        done.checkpoint_state.files == last.checkpoint_state.files and len(done.checkpoint_state.files) == 3
    )
    again = train(last)  # a finished run resumed: nothing to write, and the state still names its files
    assert again.status == "complete" and again.checkpoint_state.files == last.checkpoint_state.files
    fields = ["global_step", "epoch", "samples_seen", "batches_drawn", "rng_state", "rank_rng_states"]
    fields += ["meta_dataloader_state", "metric_state", "bad_validations", "status"]
    same: dict = {
        **dict.fromkeys(fields, True),
        "optimizer_state": {"last_step", "param_groups", "scalar_state", "lr", "plateau"},
        "checkpoint_state": {"best_value", "best_step", "files"},
    }
    for step in range(1, 13):
        a = TrainState.from_checkpoint(Path(done.run_dir) / checkpoint_name(step))
        b = TrainState.from_checkpoint(Path(ref.run_dir) / checkpoint_name(step))
        assert a.model_dump(include=same) == b.model_dump(include=same), step
        assert a.metric_history == b.metric_history and a.metric_history[-1].step == step
        for name in b.checkpoint_state.files.keys() - {"metrics.jsonl"}:
            ta, tb = (
                load_tensors(a.last_checkpoint, name, a),
                load_tensors(b.last_checkpoint, name, b),
            )
            assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in tb), (step, name)


def test_failed_background_write_fails_the_run_and_resume_completes(tmp_path: Path) -> None:
    """The run directory vanishes after step 5 (replaced by a file): the write of step 8 fails in the
    background, the run fails naming that checkpoint, and once the directory is back it resumes bit-exact."""
    import shutil

    from a2b_pipeline.checkpoint.directory import CheckpointError

    raw = longer_run(tmp_path)
    raw["train"]["max_steps"] = 12
    raw["checkpoint"]["every_n_steps"] = 4
    ref = train(TrainState.from_config(config_from_dict(raw), run_dir=tmp_path / "ref"))
    run, away = tmp_path / "run", tmp_path / "run-away"

    def hook(model: torch.nn.Module, state: TrainState) -> None:
        def pull_run_dir(module: torch.nn.Module, args: object, out: object) -> None:
            if module.training and state.global_step == 5 and not away.exists():
                deadline = time.monotonic() + 60  # step 4's write (and its `last` pointer) is done first
                while not ((run / "last").is_symlink() and os.readlink(run / "last") == checkpoint_name(4)):
                    assert time.monotonic() < deadline, "step 4 was never written"
                    time.sleep(0.01)
                run.rename(away)
                run.write_text("not a directory")

        model.register_forward_hook(pull_run_dir)

    with pytest.raises(CheckpointError, match=f"{run.resolve()}/step_000000008: the checkpoint could not"):
        train(TrainState.from_config(config_from_dict(raw), run_dir=run), model_hooks=[hook])
    run.unlink()
    shutil.move(away, run)
    kept = TrainState.from_checkpoint(run)
    assert kept.global_step == 4
    state = train(kept)
    assert state.status == "complete" and state.global_step == 12
    _, got, got_opt = final_tensors(run)
    _, want, want_opt = final_tensors(Path(ref.run_dir))
    assert all(torch.equal(got[k], want[k]) for k in want) and all(
        torch.equal(got_opt[k], want_opt[k]) for k in want_opt
    )


# ---- exact behaviour (#27): tiny runs on a corpus written by the test (tests/_tiny.py) ----


def _tensors(run_dir: Path, step: int | None = None) -> dict[str, dict[str, torch.Tensor]]:
    """Every tensor file of the run's newest (or step's) checkpoint."""
    state = TrainState.from_checkpoint(run_dir if step is None else run_dir / checkpoint_name(step))
    names = sorted(set(state.checkpoint_state.files) - {"metrics.jsonl"})
    return {n: load_tensors(state.last_checkpoint, n, state) for n in names}


def test_grad_accumulation_equals_one_big_batch_including_a_short_last_group(tmp_path: Path) -> None:
    """Plain SGD, no clipping: a step accumulating k micro-batches of b is the step on one batch of k*b.
    32 train windows in batches of 4 make 8 batches: k=3 gives groups of 3, 3 and a short last 2 (one epoch),
    which must be averaged over its 2, as the batch of 8 that ends the big-batch run is."""
    base = ["data.val_fraction=0.0", "data.test_fraction=0.0", "train.max_steps=null", "train.num_epochs=1"]
    manifest = _tiny.write_corpus(tmp_path / "corpus")
    accumulated = _tiny.config(tmp_path, [*base, "data.batch_size=4", "train.grad_accum_steps=3"], manifest)
    big = _tiny.config(tmp_path, [*base, "data.batch_size=12", "train.grad_accum_steps=1"], manifest)
    w0: dict[str, torch.Tensor] = {}

    def keep_initial(model: torch.nn.Module, state: TrainState) -> None:
        w0.update({k: v.detach().clone() for k, v in model.state_dict().items()})

    a = _tiny.run(accumulated, tmp_path / "accumulated")
    b = _tiny.run(big, tmp_path / "big", [keep_initial])
    assert a.global_step == b.global_step == 3 and a.samples_seen == b.samples_seen == 32
    assert sum(a.batches_drawn.values()) == 8 and sum(b.batches_drawn.values()) == 3
    wa, wb = _tensors(a.run_dir)["model.safetensors"], _tensors(b.run_dir)["model.safetensors"]
    for k in wb:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-7, msg=k)
    # the steps moved the weights by far more than the tolerance: a wrong scale can't hide in it
    moved = max(float((wb[k] - w0[k]).abs().max()) for k in wb)
    assert moved > 1e-3
    loss_a, loss_b = _tiny.history(a, "train/loss"), _tiny.history(b, "train/loss")
    assert [s for s, _ in loss_a] == [1, 2, 3]
    assert [v for _, v in loss_a] == pytest.approx([v for _, v in loss_b], rel=1e-6)


def _hand_validation(cfg, ckpt: Path, weights: str) -> dict[str, float]:
    """The val split evaluated without the trainer's code: the checkpoint's `weights` file in a fresh model
    in eval mode, batches of data.batch_size in order, MSE per batch, pooled errors and Pearson r."""
    import numpy as np

    from a2b_pipeline.models import build_model, model_io

    state = TrainState.from_checkpoint(ckpt)
    model = build_model(cfg.model, model_io(cfg))
    model.load_state_dict(load_tensors(ckpt, weights, state))
    model.eval()
    (val,) = prepare_data(cfg).splits["val"].values()
    windows = [val[i] for i in range(len(val))]
    losses, preds, trues = [], [], []
    with torch.no_grad():
        for i in range(0, len(windows), cfg.data.batch_size):
            x = torch.stack([w[0] for w in windows[i : i + cfg.data.batch_size]])
            y = torch.stack([w[1] for w in windows[i : i + cfg.data.batch_size]])
            pred = model(x)
            losses.append(float(((pred - y) ** 2).mean()))
            preds.append(pred.double().reshape(-1).numpy())
            trues.append(y.double().reshape(-1).numpy())
    p, t = np.concatenate(preds), np.concatenate(trues)
    return {
        "val/loss": float(np.mean(losses)),
        "val/mse": float(np.mean((p - t) ** 2)),
        "val/mae": float(np.mean(np.abs(p - t))),
        "val/pearson": float(np.corrcoef(p, t)[0, 1]),
    }


def test_val_metrics_at_step_n_are_an_independent_evaluation_of_the_step_n_checkpoint(tmp_path: Path) -> None:
    """Dropout 0.5 and EMA on: validation runs the EMA weights in eval mode on the val split, and what it
    records at step N is what an evaluation of step N's checkpoint written by hand gives."""
    cfg = _tiny.config(tmp_path, ["model.dropout=0.5", "train.ema_decay=0.5", "train.max_steps=4"])
    state = _tiny.run(cfg, tmp_path / "run")
    for step in (2, 4):
        ckpt = Path(state.run_dir) / checkpoint_name(step)
        recorded = {m.name: m.value for m in state.metric_history if m.step == step}
        hand = _hand_validation(cfg, ckpt, "ema.safetensors")
        for name, value in hand.items():
            assert recorded[name] == pytest.approx(value, rel=1e-5, abs=1e-7), (step, name)
        # the test can tell: the raw weights score otherwise than their average
        raw = _hand_validation(cfg, ckpt, "model.safetensors")
        assert abs(raw["val/loss"] - hand["val/loss"]) > 1e-4


def _stop_scenario(mode: str) -> tuple[dict[int, float], int, int]:
    """Scripted constant predictions (tests/_tiny.py: MSE grows with |c|) whose val/mse is best at step 2,
    ties it at step 4 (a tie is no improvement), and is worse elsewhere: (values, best step, stop step)."""
    if mode == "min":
        values = {1: 2.0, 2: 0.0, 3: 1.0, 4: 0.0, 5: 3.0, 6: 3.0, 7: 3.0, 8: 3.0}
    else:
        values = {1: 1.0, 2: 3.0, 3: 2.0, 4: 3.0, 5: 0.0, 6: 0.0, 7: 0.0, 8: 0.0}
    # patience 2: validations 3 and 4 don't improve on step 2 and are tolerated; 5 is the third: stop there
    return values, 2, 5


@pytest.mark.parametrize("mode", ["min", "max"])
def test_best_checkpoint_and_early_stopping_follow_the_metric(tmp_path: Path, mode: str) -> None:
    values, best_step, stop_step = _stop_scenario(mode)
    cfg = _tiny.config(
        tmp_path,
        [
            "checkpoint.metric=val/mse",
            f"checkpoint.mode={mode}",
            "checkpoint.every_n_steps=null",
            "checkpoint.keep_last=1",
            "train.val_every_n_steps=1",
            "train.early_stopping_patience=2",
            "train.max_steps=8",
        ],
    )
    state = _tiny.run(cfg, tmp_path / "run", [_tiny.ScriptedValidation(values)])
    hist = _tiny.history(state, "val/mse")
    assert [s for s, _ in hist] == list(range(1, stop_step + 1))
    by_step = dict(hist)
    assert by_step[2] == by_step[4], "the scripted tie"
    # best_step is the arg-best of the validation history (the first of equal values)
    pick = min if mode == "min" else max
    assert state.checkpoint_state.best_step == pick(hist, key=lambda sv: sv[1])[0] == best_step
    assert state.checkpoint_state.best_value == by_step[best_step]
    run = Path(state.run_dir)
    assert (run / "best").resolve() == (run / checkpoint_name(best_step)).resolve()
    assert state.best_checkpoint.resolve() == (run / checkpoint_name(best_step)).resolve()
    best_file = run / checkpoint_name(best_step) / "model.safetensors"
    assert state.model_state.best_model_path.resolve() == best_file.resolve()
    assert TrainState.from_checkpoint(run / "best").global_step == best_step  # kept though keep_last is 1
    # the run stops at the (patience + 1)-th validation in a row without improvement, as README says
    assert state.status == "complete" and state.global_step == stop_step
    assert "early stopping" in state.message and state.bad_validations == 3


def test_patience_none_runs_to_the_end_and_best_moves_only_on_improvement(tmp_path: Path) -> None:
    values = {1: 2.0, 2: 1.0, 3: 3.0, 4: 0.0, 5: 0.0, 6: 2.5}
    scripted = ["checkpoint.metric=val/mse", "checkpoint.mode=min", "train.val_every_n_steps=1"]
    cfg = _tiny.config(tmp_path, scripted)
    state = _tiny.run(cfg, tmp_path / "run", [_tiny.ScriptedValidation(values)])
    assert state.status == "complete" and state.global_step == 6 and state.bad_validations == 2
    assert state.checkpoint_state.best_step == 4
    assert (Path(state.run_dir) / "best").resolve().name == checkpoint_name(4)


def test_resume_across_a_plateau_drop_is_bit_exact_with_ema_and_every_generator(tmp_path: Path) -> None:
    """Dropout, EMA, a plateau schedule that halves the lr at steps 6 and 10, and python/numpy/torch draws
    in every training forward (as an augmentation would make). A run interrupted after its step-8
    checkpoint (plateau: one bad validation pending) and resumed in a process whose generators moved on
    ends with the same weights, optimizer, EMA, learning rates and draws as the straight run."""
    import random

    import numpy as np

    values = {2: 0.0, 4: 2.0, 6: 2.0, 8: 2.0, 10: 2.0, 12: 2.0}
    cfg = _tiny.config(
        tmp_path,
        [
            "model.dropout=0.3",
            "train.ema_decay=0.8",
            "scheduler.name=plateau",
            "scheduler.plateau_patience=1",
            "scheduler.plateau_factor=0.5",
            "checkpoint.metric=val/mse",
            "checkpoint.mode=min",
            "train.max_steps=12",
        ],
    )
    straight_draws = _tiny.RngDraws()
    straight = _tiny.run(cfg, tmp_path / "straight", [_tiny.ScriptedValidation(values), straight_draws])
    lrs = dict(_tiny.history(straight, "train/lr"))
    assert [lrs[s] for s in (6, 7, 10, 11, 12)] == pytest.approx([0.1, 0.05, 0.05, 0.025, 0.025])

    class Interrupted(Exception):
        pass

    def interrupt_step_9(model: torch.nn.Module, state: TrainState) -> None:
        def hook(module: torch.nn.Module, args: object) -> None:
            if module.training and state.global_step == 8:
                raise Interrupted

        model.register_forward_pre_hook(hook)

    first = _tiny.RngDraws()
    with pytest.raises(Interrupted):
        _tiny.run(cfg, tmp_path / "resumed", [_tiny.ScriptedValidation(values), first, interrupt_step_9])
    kept = TrainState.from_checkpoint(tmp_path / "resumed")
    plateau = kept.optimizer_state.plateau
    assert kept.global_step == 8 and plateau["scale"] == 0.5 and plateau["bad"] == 1
    random.seed(1234), np.random.seed(1234), torch.manual_seed(1234)  # a new process: generators elsewhere
    again = _tiny.RngDraws()
    resumed = train(kept, model_hooks=[_tiny.ScriptedValidation(values), again])
    assert resumed.status == "complete" and resumed.global_step == 12

    assert {s: d for s, d in straight_draws.draws.items() if s >= 8} == again.draws
    assert dict(_tiny.history(resumed, "train/lr")) == lrs
    got, want = _tensors(tmp_path / "resumed"), _tensors(tmp_path / "straight")
    assert set(got) == set(want) == {"model.safetensors", "optimizer.safetensors", "ema.safetensors"}
    for name in want:
        for k in want[name]:
            assert torch.equal(got[name][k], want[name][k]), (name, k)
    assert resumed.optimizer_state.plateau == straight.optimizer_state.plateau
    assert _tiny.history(resumed, "val/mse") == _tiny.history(straight, "val/mse")


def test_steps_by_hand_clipped_sgd_at_the_warmup_lr_and_the_ema_recursion(tmp_path: Path) -> None:
    """Steps 1 and 2 by hand: the loader's next batch, MSE, gradients of that batch only clipped to norm
    0.01, SGD at the warm-up learning rates 0.1 * 1/4 and 0.1 * 2/4; and the EMA after each step is
    decay * EMA + (1 - decay) * weights, from the initial weights. Each step's checkpoint holds just that."""
    cfg = _tiny.config(
        tmp_path,
        [
            "train.max_steps=2",
            "train.grad_clip=0.01",
            "train.ema_decay=0.75",
            "scheduler.name=linear",
            "scheduler.warmup_steps=4",
            "checkpoint.every_n_steps=1",
        ],
    )
    w0: dict[str, torch.Tensor] = {}

    def keep_initial(model: torch.nn.Module, state: TrainState) -> None:
        w0.update({k: v.detach().clone() for k, v in model.state_dict().items()})

    state = _tiny.run(cfg, tmp_path / "run", [keep_initial])
    from a2b_pipeline.models import build_model, model_io

    batches = iter(make_loader(prepare_data(cfg), cfg, "train"))
    weights, ema = dict(w0), dict(w0)
    for step in (1, 2):
        model = build_model(cfg.model, model_io(cfg))
        model.load_state_dict(weights)
        x, y = next(batches)
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        grads = {n: p.grad for n, p in model.named_parameters()}
        norm = torch.sqrt(sum((g**2).sum() for g in grads.values()))
        assert norm > 0.01, "the clip must act for this test to mean anything"
        lr = 0.1 * step / 4
        saved = _tensors(Path(state.run_dir), step)
        for name, g in grads.items():
            want = weights[name] - lr * g * (0.01 / (norm + 1e-6))
            torch.testing.assert_close(saved["model.safetensors"][name], want, rtol=1e-5, atol=1e-7, msg=name)
        weights = saved["model.safetensors"]
        ema = {k: 0.75 * ema[k] + 0.25 * weights[k] for k in ema}
        for k, v in ema.items():
            torch.testing.assert_close(saved["ema.safetensors"][k], v, rtol=1e-5, atol=1e-7, msg=k)
        assert dict(_tiny.history(state, "train/loss"))[step] == pytest.approx(float(loss.detach()), rel=1e-6)
        assert dict(_tiny.history(state, "train/lr"))[step] == pytest.approx(lr)


def test_the_last_step_logs_validates_and_checkpoints_and_metric_state_is_the_newest(tmp_path: Path) -> None:
    """6 steps, logging and validating every 4: at 4 and at the last step, 6; checkpoints every 4 and at 6."""
    cfg = _tiny.config(
        tmp_path,
        [
            "train.max_steps=6",
            "train.log_every_n_steps=4",
            "train.val_every_n_steps=4",
            "checkpoint.every_n_steps=4",
        ],
    )
    state = _tiny.run(cfg, tmp_path / "run")
    assert [s for s, _ in _tiny.history(state, "train/loss")] == [4, 6]
    assert [s for s, _ in _tiny.history(state, "val/loss")] == [4, 6]
    assert sorted(p.name for p in Path(state.run_dir).glob("step_*")) == [
        checkpoint_name(4),
        checkpoint_name(6),
    ]
    newest = {}
    for m in state.metric_history:
        newest[m.name] = m.value
    assert state.metric_state.metrics == newest
    assert TrainState.from_checkpoint(state.run_dir).metric_state.metrics == newest
