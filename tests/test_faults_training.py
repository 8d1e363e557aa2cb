"""Faults during training: exploding gradients, CUDA out-of-memory, SIGTERM and SIGKILL at many points.

Afterwards the run resumes from its newest checkpoint that verifies, never from a half-written one, and
ends bit-identical to an uninterrupted run. The kill loop forks the test process (torch already
imported) for each attempt, so 20+ kills cost seconds, not minutes of interpreter start-up.
(NaN loss and one SIGKILL/SIGTERM through the real `a2b` process are in test_train.py.)
"""

from __future__ import annotations

import os
import random
import signal
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

# train() -> torch.use_deterministic_algorithms imports this (seconds); imported here once, so the
# forked children of the kill loop don't each pay for it
import torch._inductor.config  # noqa: F401
import yaml
from _util import tiny_config

from a2b_pipeline.checkpoint.directory import STEP_DIR, list_checkpoints
from a2b_pipeline.checkpoint.store import load_tensors
from a2b_pipeline.cli import main
from a2b_pipeline.configs import RunConfig
from a2b_pipeline.state import TrainState
from a2b_pipeline.train import train


def _tensors(ckpt: str | Path, state: TrainState) -> dict[str, torch.Tensor]:
    out = {f"model/{k}": v for k, v in load_tensors(ckpt, "model.safetensors", state).items()}
    out |= {f"optimizer/{k}": v for k, v in load_tensors(ckpt, "optimizer.safetensors", state).items()}
    return out


def _final(run_dir: Path) -> tuple[TrainState, dict[str, torch.Tensor]]:
    state = TrainState.from_checkpoint(run_dir)
    return state, _tensors(state.last_checkpoint, state)


def _assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs from the uninterrupted run"


# ---- exploding gradients ----


@pytest.mark.parametrize(
    ("optimizer", "lr"),
    [("sgd", 1e8), ("sgd", 1e30), ("adamw", 1e30)],
    ids=["sgd-1e8", "sgd-1e30", "adamw-1e30"],
)
def test_exploding_gradients_with_clipping_stay_finite_or_stop_cleanly(
    tmp_path: Path, optimizer: str, lr: float
) -> None:
    cfg = tiny_config(
        tmp_path,
        [
            f"optimizer.name={optimizer}",
            f"optimizer.lr={lr}",
            "train.grad_clip=1.0",
            "train.max_steps=10",
            "train.log_every_n_steps=5",
            "train.val_every_n_steps=5",
            "checkpoint.every_n_steps=1",
            "checkpoint.keep_last=20",
        ],
    )
    state = train(TrainState.from_config(cfg))
    assert state.status in ("complete", "stopped"), state.message
    if state.status == "stopped":
        assert "non-finite loss or gradient" in state.message and "last good checkpoint" in state.message
    else:
        assert state.global_step == 10
    # whatever happened, no checkpoint on disk holds a non-finite weight or optimizer moment
    ckpts = list_checkpoints(state.run_dir)
    assert ckpts
    for ckpt in ckpts:
        for name, t in _tensors(ckpt, TrainState.from_checkpoint(ckpt)).items():
            assert torch.isfinite(t).all(), f"{ckpt.name}: {name} is not finite"
    if state.status == "stopped":  # the run stops where the loss went bad and keeps what came before
        assert TrainState.from_checkpoint(state.run_dir).global_step < state.global_step


# ---- out of memory (simulated: a forward hook raises what CUDA raises) ----


def _oom_at(step: int) -> Callable[[torch.nn.Module, TrainState], None]:
    def hook(model: torch.nn.Module, state: TrainState) -> None:
        def forward_hook(module: torch.nn.Module, args: Any, output: Any) -> None:
            if module.training and state.global_step == step:
                raise torch.OutOfMemoryError(
                    "CUDA out of memory. Tried to allocate 20.00 GiB (simulated by test_faults_training)"
                )

        model.register_forward_hook(forward_hook)

    return hook


OOM_IN_STEP_7 = _oom_at(6)  # for the CLI, through A2B_MODEL_HOOKS


def test_out_of_memory_is_named_and_resume_completes_bit_exact(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    overrides = ["train.max_steps=12", "checkpoint.every_n_steps=4", "train.val_every_n_steps=8"]
    ref = train(TrainState.from_config(tiny_config(tmp_path, overrides), run_dir=tmp_path / "ref"))
    assert ref.status == "complete"
    cfg_file = tmp_path / "oom.yaml"
    cfg_file.write_text(tiny_config(tmp_path, overrides).to_yaml())
    run = tmp_path / "oom"

    # in step 7: steps 1-6 are done, checkpoint step 4 is the newest
    monkeypatch.setenv("A2B_MODEL_HOOKS", f"{__name__}:OOM_IN_STEP_7")
    code = main(["train", str(cfg_file), "--run-dir", str(run)])
    monkeypatch.delenv("A2B_MODEL_HOOKS")
    err = capsys.readouterr().err
    assert code == 1, err
    assert "Traceback" not in err
    assert "error: out of memory on cpu in step 7 (data.batch_size=4" in err, err
    newest = run.resolve() / "step_000000004"
    assert f"the newest checkpoint {newest} is kept: `a2b resume {run.resolve()}` continues" in err, err
    assert "CUDA out of memory. Tried to allocate 20.00 GiB" in err
    kept = TrainState.from_checkpoint(run)
    assert kept.global_step == 4 and kept.last_checkpoint == newest

    # the library raises the same type (a Dagster op or a notebook can catch it), with the same message
    with pytest.raises(torch.OutOfMemoryError, match="out of memory on cpu in step 7"):
        train(TrainState.from_checkpoint(run), model_hooks=[OOM_IN_STEP_7])
    assert TrainState.from_checkpoint(run).global_step == 4  # nothing half-done was saved

    assert main(["resume", str(run)]) == 0
    state, got = _final(run)
    assert state.status == "complete" and state.global_step == 12
    _assert_identical(got, _final(Path(ref.run_dir))[1])


# ---- SIGKILL and SIGTERM at random points, in a loop ----


def _train_in_child(run_dir: Path, cfg: RunConfig) -> int:
    """Fork; the child trains (resuming from run_dir when it has a checkpoint) and exits: 0 complete,
    3 stopped, 70 on an exception. Returns the child's pid."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return pid
    code = 70
    try:
        if list_checkpoints(run_dir):
            state = TrainState.from_checkpoint(run_dir)
        else:
            state = TrainState.from_config(cfg, run_dir=run_dir)
        state = train(state)
        code = {"complete": 0, "stopped": 3}.get(state.status, 71)
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _exit_code(pid: int, block: bool) -> int | None:
    done, status = os.waitpid(pid, 0 if block else os.WNOHANG)
    if not done:
        return None
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def _newest_step(run_dir: Path) -> int:
    ckpts = list_checkpoints(run_dir)
    return int(STEP_DIR.match(ckpts[-1].name).group(1)) if ckpts else -1


def _tmp_dirs(run_dir: Path) -> set[str]:
    try:
        return {n for n in os.listdir(run_dir) if n.startswith((".tmp-", ".old-"))}
    except FileNotFoundError:
        return set()


def _wait(pid: int, ready: Callable[[], bool], what: str, timeout: float = 60.0) -> bool:
    """Poll (0.5 ms) until ready(); False if the child exited first."""
    deadline = time.monotonic() + timeout
    while not ready():
        if _exit_code(pid, block=False) is not None:
            return False
        assert time.monotonic() < deadline, f"child {pid}: no {what} in {timeout} s"
        time.sleep(0.0005)
    return True


def _wait_capped(pid: int, run_dir: Path, seconds: float, max_step: int) -> bool:
    """Wait `seconds`, or less once checkpoint `max_step` exists: a random moment that doesn't let the
    run get far, so the kill plan fits in the run on a fast machine too. False if the child exited."""
    deadline = time.monotonic() + seconds
    return _wait(pid, lambda: time.monotonic() > deadline or _newest_step(run_dir) >= max_step, "moment")


def _check_run_dir(run_dir: Path, not_before: int) -> TrainState | None:
    """What a crash may leave: the newest committed checkpoint loads and verifies, it is never a
    temporary directory, every committed checkpoint verifies, and the pointers point at committed ones."""
    ckpts = list_checkpoints(run_dir)
    if not ckpts:
        assert not_before < 0, "a committed checkpoint disappeared"
        return None
    state = TrainState.from_checkpoint(run_dir)
    loaded = state.last_checkpoint
    assert STEP_DIR.match(loaded.name) and loaded.parent == run_dir.resolve(), loaded
    assert loaded == ckpts[-1].resolve(), "the newest committed checkpoint must be the one resumed"
    assert state.global_step >= not_before
    _tensors(loaded, state)  # checksums verified, safetensors parsed
    for ckpt in ckpts:
        TrainState.from_checkpoint(ckpt)
    for pointer in ("last", "best"):
        link = run_dir / pointer
        if link.is_symlink():
            assert (link.resolve() / "train_state.json").is_file(), f"{pointer} -> a missing checkpoint"
    return state


def test_sigkill_and_sigterm_at_random_points_then_resume_is_bit_exact(tmp_path: Path) -> None:
    cfg = tiny_config(
        tmp_path,
        [
            "train.max_steps=80",
            "train.log_every_n_steps=5",
            "train.val_every_n_steps=10",
            "checkpoint.every_n_steps=1",  # a checkpoint every step: many kills land inside a write
            "checkpoint.keep_last=2",
        ],
    )
    reference, run = tmp_path / "reference", tmp_path / "killed"
    assert _exit_code(_train_in_child(reference, cfg), block=True) == 0

    rng = random.Random(20240611)
    plan = ["sigkill-in-write"] * 8 + ["sigkill-after-step"] * 8 + ["sigkill-anytime"] * 4 + ["sigterm"] * 4
    rng.shuffle(plan)
    outcomes: list[str] = []
    step = -1
    for kind in plan:
        before, tmps_before = _newest_step(run), _tmp_dirs(run)
        pid = _train_in_child(run, cfg)
        if kind == "sigkill-anytime":  # start-up (data, restore) or any point of a step
            alive = _wait_capped(pid, run, rng.uniform(0.0, 0.5), before + 3)
        elif kind == "sigkill-in-write":  # a checkpoint being written: its temporary directory exists
            alive = _wait(pid, lambda old=tmps_before: bool(_tmp_dirs(run) - old), "checkpoint write")
            time.sleep(rng.uniform(0.0, 0.002))
        else:  # some time after the child committed its first checkpoint
            alive = _wait(pid, lambda old=before: _newest_step(run) > old, "new checkpoint")
            alive = alive and _wait_capped(pid, run, rng.uniform(0.0, 0.15), before + 3)
        assert alive, f"the run ended before the {len(outcomes) + 1}th kill ({kind}); raise max_steps"
        os.kill(pid, signal.SIGTERM if kind == "sigterm" else signal.SIGKILL)
        code = _exit_code(pid, block=True)
        left_tmp = bool(_tmp_dirs(run) - tmps_before)
        state = _check_run_dir(run, not_before=max(step, before))
        if kind == "sigterm":  # a clean stop: the step ends, a checkpoint is written, status stopped
            assert code == 3, code
            assert state is not None and state.status == "stopped" and "stopped by signal 15" in state.message
            assert not left_tmp
        else:
            assert code == -signal.SIGKILL, code
        step = state.global_step if state else -1
        outcomes.append(f"{kind}:{'tmp' if left_tmp else 'ok'}:{step}")

    kills = [o for o in outcomes if o.startswith("sigkill")]
    assert len(kills) >= 20
    assert sum(":tmp:" in o for o in kills) >= 3, (
        f"too few kills landed inside a checkpoint write: {outcomes}"
    )
    assert 0 < step < 80, outcomes

    # one last resume finishes the run: bit-identical to the uninterrupted one, and tidy
    assert _exit_code(_train_in_child(run, cfg), block=True) == 0
    state, got = _final(run)
    ref_state, want = _final(reference)
    assert state.status == "complete" and state.global_step == 80
    _assert_identical(got, want)
    assert state.optimizer_state.param_groups == ref_state.optimizer_state.param_groups
    assert state.epoch == ref_state.epoch and state.samples_seen == ref_state.samples_seen
    ref_losses = [(m.step, m.value) for m in ref_state.metric_history if m.name == "train/loss"]
    assert [(m.step, m.value) for m in state.metric_history if m.name == "train/loss"] == ref_losses
    assert _tmp_dirs(run) == set(), "temporary directories of killed writes are cleaned up"
    with open(tmp_path / "outcomes.yaml", "w") as f:  # for a human reading a failure
        yaml.safe_dump(outcomes, f)
