"""GPU paths: bit-exact resume in fp32 and bf16, torch.compile, async checkpoints staged from the device, and
no host-device sync on steps that don't log.

They need a CUDA device and are skipped without one. `A2B_TEST_GPU_DEVICE=cpu` runs the ones that make sense
on a CPU (all but the sync audit), to check the tests themselves on a machine without a GPU.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from _util import final_tensors, longer_run, losses_after, run_cli, write_config

from a2b_pipeline.checkpoint.directory import checkpoint_name, list_checkpoints
from a2b_pipeline.checkpoint.store import load_tensors
from a2b_pipeline.configs import config_from_dict
from a2b_pipeline.state import TrainState
from a2b_pipeline.train import train

DEVICE = os.environ.get("A2B_TEST_GPU_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(
    DEVICE == "cuda" and not torch.cuda.is_available(),
    reason="no CUDA device here: GPU paths run where one is lent (A2B_TEST_GPU_DEVICE=cpu dry-runs them)",
)


def _config(tmp_path: Path, **train: Any) -> dict[str, Any]:
    raw = longer_run(tmp_path)
    raw["train"].update({"max_steps": 12, "device": DEVICE, "deterministic": True, **train})
    raw["checkpoint"].update(every_n_steps=4, keep_last=10)
    return raw


def _resume_from_copy(run: Path, step: int, into: Path) -> TrainState:
    """Copy one checkpoint of `run` into a fresh run directory and resume it in a new process."""
    into.mkdir()
    shutil.copytree(run / checkpoint_name(step), into / checkpoint_name(step))
    run_cli("resume", str(into))
    return TrainState.from_checkpoint(into)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_resume_on_device_is_bit_exact(tmp_path: Path, precision: str) -> None:
    cfg = write_config(tmp_path, _config(tmp_path, precision=precision), precision)
    run_a = tmp_path / "a"
    run_cli("train", str(cfg), "--run-dir", str(run_a))
    state_a, weights_a, opt_a = final_tensors(run_a)
    assert state_a.status == "complete" and state_a.model_state.model_loaded
    assert state_a.model_state.model_device.type == DEVICE

    state_b = _resume_from_copy(run_a, 8, tmp_path / "b")
    _, weights_b, opt_b = final_tensors(tmp_path / "b")
    assert state_b.global_step == 12
    for k in weights_a:
        assert torch.equal(weights_a[k], weights_b[k]), f"weight {k} differs after resume ({precision})"
    for k in opt_a:
        assert torch.equal(opt_a[k], opt_b[k]), f"optimizer tensor {k} differs after resume ({precision})"
    assert losses_after(state_a, 8) == losses_after(state_b, 8)


def test_compiled_model_saves_plain_keys_and_resumes(tmp_path: Path) -> None:
    raw = _config(tmp_path, compile=True, max_steps=6)
    raw["checkpoint"]["every_n_steps"] = 3
    cfg = write_config(tmp_path, raw, "compiled")
    run_a = tmp_path / "a"
    run_cli("train", str(cfg), "--run-dir", str(run_a))
    state_a, weights_a, _ = final_tensors(run_a)
    assert state_a.status == "complete"
    assert not [k for k in weights_a if "_orig_mod" in k or k.startswith("module.")]
    # the uncompiled model of the same config loads them as they are
    plain = TrainState.from_checkpoint(run_a).config
    from a2b_pipeline.models import build_model, model_io

    build_model(plain.model, model_io(plain)).load_state_dict(weights_a)

    state_b = _resume_from_copy(run_a, 3, tmp_path / "b")
    _, weights_b, _ = final_tensors(tmp_path / "b")
    assert state_b.status == "complete" and state_b.global_step == 6
    for k in weights_a:  # compiled kernels are deterministic for equal shapes; allow for reordered sums
        assert torch.allclose(weights_a[k], weights_b[k], rtol=1e-5, atol=1e-6), k


def test_async_checkpoints_from_device_equal_sync_ones(tmp_path: Path) -> None:
    runs = {}
    for background in (True, False):
        raw = _config(tmp_path)
        raw["checkpoint"].update(every_n_steps=1, keep_last=20, async_write=background)
        cfg = write_config(tmp_path, raw, f"async-{background}")
        runs[background] = tmp_path / f"run-{background}"
        run_cli("train", str(cfg), "--run-dir", str(runs[background]))
    steps = [TrainState.from_checkpoint(c).global_step for c in list_checkpoints(runs[True])]
    assert steps == list(range(1, 13))
    for step in steps:
        a = TrainState.from_checkpoint(runs[True] / checkpoint_name(step))
        b = TrainState.from_checkpoint(runs[False] / checkpoint_name(step))
        assert a.checkpoint_state.files == b.checkpoint_state.files, step  # the same bytes in every file
        for name in (n for n in b.checkpoint_state.files if n.endswith(".safetensors")):  # not metrics.jsonl
            ta = load_tensors(a.last_checkpoint, name, a)
            tb = load_tensors(b.last_checkpoint, name, b)
            assert all(torch.equal(ta[k], tb[k]) for k in tb), (step, name)


@pytest.mark.skipif(DEVICE != "cuda", reason="torch.cuda.set_sync_debug_mode needs CUDA")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_no_host_device_sync_on_steps_that_do_not_log(tmp_path: Path, precision: str) -> None:
    """Every synchronising CUDA call raises (`set_sync_debug_mode("error")`) during the steps that neither
    log, validate nor checkpoint; the loop must get through them."""
    log_every, total = 5, 15
    raw = _config(tmp_path, precision=precision, max_steps=total, log_every_n_steps=log_every)
    raw["train"]["val_every_n_steps"] = 10**6  # validation and checkpoints only at the end
    raw["checkpoint"]["every_n_steps"] = 10**6
    strict_steps: list[int] = []

    def hook(model: torch.nn.Module, state: TrainState) -> None:
        def set_mode(module: torch.nn.Module, args: object) -> None:
            if not module.training:
                return
            step = state.global_step + 1  # the step this forward belongs to
            quiet = step % log_every != 0 and step != total
            torch.cuda.set_sync_debug_mode("error" if quiet else "default")
            if quiet:
                strict_steps.append(step)

        model.register_forward_pre_hook(set_mode)

    try:
        state = train(
            TrainState.from_config(config_from_dict(raw), run_dir=tmp_path / "run"), model_hooks=[hook]
        )
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert state.status == "complete", state.message
    assert strict_steps == [s for s in range(1, total + 1) if s % log_every and s != total]
