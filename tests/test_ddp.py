"""Multi-process training with torchrun (gloo on CPU): identical replicas, one writer, resumable."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from _util import REPO, longer_run, run_cli, write_config

from a2b_pipeline.state import TrainState


def torchrun(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "a2b_pipeline.cli",
        *args,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def test_torchrun_two_ranks_gloo(tmp_path: Path) -> None:
    raw = longer_run(tmp_path)
    raw["train"].update(max_steps=12, val_every_n_steps=6)
    raw["checkpoint"].update(every_n_steps=6, keep_last=5)
    cfg = write_config(tmp_path, raw, "ddp")
    run = tmp_path / "run"
    proc = torchrun("train", str(cfg), "--run-dir", str(run))

    digests = dict(re.findall(r"rank (\d) of 2: final weights sha256 ([0-9a-f]{64})", proc.stderr))
    assert set(digests) == {"0", "1"} and digests["0"] == digests["1"]
    state = TrainState.from_checkpoint(run)
    assert state.world_size == 2 and state.global_step == 12 and state.status == "complete"
    assert (
        len(state.rank_rng_states) == 1
        and state.rng_state.torch_rng_state != state.rank_rng_states[0].torch_rng_state
    )
    # rank 0 alone wrote (and held the run directory): one set of checkpoints, no second writer's leftovers
    assert sorted(p.name for p in run.iterdir() if not p.name.startswith("step_")) == [
        ".a2b-lock",
        "best",
        "last",
        "norm_stats.json",
    ]

    # a single process evaluates the DDP checkpoint
    metrics = json.loads(run_cli("evaluate", str(run), "--split", "val", "--json").stdout)["metrics"]
    assert metrics["val/pearson"] == metrics["val/pearson"]  # finite, not NaN

    # resuming a complete run with the same world size is a no-op that still succeeds
    torchrun("resume", str(run))
    assert TrainState.from_checkpoint(run).global_step == 12

    # a world-size mismatch is refused with a clear message
    single = run_cli("resume", str(run), check=False)
    assert single.returncode == 1 and "world size 2" in single.stderr
