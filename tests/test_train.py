"""The trainer: it learns, resumes bit for bit after SIGKILL, stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

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

from a2b_pipeline.configs import config_from_dict
from a2b_pipeline.data.pipeline import make_loader, prepare_data
from a2b_pipeline.metrics import MetricAccumulator
from a2b_pipeline.state import TrainState, checkpoint_name, load_tensors
from a2b_pipeline.train import train


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

    from a2b_pipeline.state import CheckpointError

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
