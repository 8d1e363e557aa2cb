"""Shared test helpers: the tiny config on small synthetic corpora (and a longer run of it), running the
CLI, Dagster servers."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import yaml

from a2b_pipeline.checkpoint.directory import STATE_FILE, checkpoint_name
from a2b_pipeline.checkpoint.store import load_tensors
from a2b_pipeline.configs import RunConfig, apply_overrides, config_from_dict
from a2b_pipeline.state import (
    DataLoaderState,
    MetaDataLoaderState,
    MetricRecord,
    MetricState,
    RNGState,
    TrainState,
)

REPO = Path(__file__).resolve().parents[1]
A2B = [sys.executable, "-m", "a2b_pipeline.cli"]


# small enough to write in ~0.3 s and load in ~0.5 s; 16 s recordings give 3 windows of 8 s at hop 4
SMALL = {"subjects": 4, "recordings_per_subject": 2, "seconds": 16.0}
# the experiment chain, upstream first (tests/test_dagster.py, tests/test_terminal.py)
ASSET_NAMES = [
    "corpus_manifest",
    "dataset_splits",
    "meta_loader_spec",
    "training_run",
    "best_checkpoint",
    "evaluation",
]


def tiny_config(tmp_path: Path, overrides: list[str] | None = None) -> RunConfig:
    """Two synthetic datasets (generated on first use under tmp_path), a tiny conv_gru, a few CPU steps,
    checkpoints under tmp_path/runs, feature cache under tmp_path/cache, wandb disabled.
    `overrides`: dotted `key=value` strings."""
    raw = {
        "name": "tiny",
        "seed": 0,
        "data": {
            "datasets": [
                {
                    "name": "synA",
                    "type": "synthetic",
                    "root": str(tmp_path / "synA"),
                    "synthetic": {**SMALL, "seed": 1},
                },
                {
                    "name": "synB",
                    "type": "synthetic",
                    "root": str(tmp_path / "synB"),
                    "synthetic": {**SMALL, "seed": 2},
                    "weight": 0.5,
                },
            ],
            "channels": ["eda", "hr"],
            "batch_size": 4,
            "n_mels": 16,
            "cache_dir": str(tmp_path / "cache"),  # never the user's ~/.cache
        },
        "model": {"name": "conv_gru", "conv_channels": 8, "hidden": 8, "dropout": 0.0},
        "scheduler": {"name": "constant"},
        "train": {
            "max_steps": 6,
            "num_epochs": None,
            "device": "cpu",
            "num_threads": 1,
            "log_every_n_steps": 2,
            "val_every_n_steps": 3,
            "progress_bar": False,
        },
        "checkpoint": {"dir": str(tmp_path / "runs")},
        "tracking": {"wandb_mode": "disabled"},
    }
    return config_from_dict(apply_overrides(raw, overrides or []), "tiny_config")


def finished_tiny_run(tmp: Path) -> Path:
    """A finished tiny run under tmp/template with checkpoints at steps 2, 4 and 6 (and its norm_stats.json):
    the template the checkpoint-hardening tests copy and edit."""
    from a2b_pipeline.train import train

    cfg = tiny_config(tmp, ["train.max_steps=6", "checkpoint.every_n_steps=2", "checkpoint.keep_last=3"])
    state = train(TrainState.from_config(cfg, run_dir=tmp / "template"))
    assert state.status == "complete", state.message
    return Path(state.run_dir)


def longer_run(tmp_path: Path) -> dict[str, Any]:
    """`tiny_config` made longer, as a dict to edit (the resume and strategy tests): corpora `a` and `b` of
    different sizes weighed 2:1, 4 s windows, a wider model, 40 steps of a warmed-up cosine schedule,
    validation every 10 steps, a checkpoint every 5, on the default device."""
    return tiny_config(tmp_path, _longer(tmp_path)).model_dump(mode="json")


def _longer(tmp_path: Path) -> list[str]:
    return [
        "data.datasets.0.name=a",
        f"data.datasets.0.root={tmp_path / 'corpus_a'}",
        "data.datasets.0.weight=2.0",
        "data.datasets.1.name=b",
        f"data.datasets.1.root={tmp_path / 'corpus_b'}",
        "data.datasets.1.weight=1.0",
        "data.datasets.1.synthetic.subjects=3",
        "data.window_seconds=4",
        "data.hop_seconds=2",
        "data.val_fraction=0.25",
        "data.test_fraction=0.25",
        "model.conv_channels=16",
        "model.hidden=16",
        "model.dropout=0.1",
        "optimizer.lr=0.003",
        "scheduler.name=cosine",
        "scheduler.warmup_steps=5",
        "train.max_steps=40",
        "train.device=auto",
        "train.log_every_n_steps=1",
        "train.val_every_n_steps=10",
        "checkpoint.every_n_steps=5",
        "checkpoint.keep_last=3",
    ]


def write_config(tmp_path: Path, raw: dict[str, Any], name: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def run_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*A2B, *args], capture_output=True, text=True, cwd=REPO, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"a2b {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc


def wait_for(path: Path, proc: subprocess.Popen[str], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not (path / STATE_FILE).exists():
        if proc.poll() is not None:
            err = proc.stderr.read() if proc.stderr else ""
            raise AssertionError(
                f"training ended (code {proc.returncode}) before {path} appeared:\n{err[-3000:]}"
            )
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear in {timeout} s")
        time.sleep(0.01)


def final_tensors(run_dir: Path) -> tuple[TrainState, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    state = TrainState.from_checkpoint(run_dir)
    ckpt = state.last_checkpoint
    return (
        state,
        load_tensors(ckpt, "model.safetensors", state),
        load_tensors(ckpt, "optimizer.safetensors", state),
    )


def losses_after(state: TrainState, step: int) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in state.metric_history if m.name == "train/loss" and m.step > step]


def start_training(config: Path, run_dir: Path) -> subprocess.Popen[str]:
    """`a2b train CONFIG --run-dir RUN_DIR` in a child process."""
    return subprocess.Popen(
        [*A2B, "train", str(config), "--run-dir", str(run_dir)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def kill_after(config: Path, run_dir: Path, step: int) -> int:
    """Train, SIGKILL once the step's checkpoint exists; returns the step a resume starts from."""
    import signal

    proc = start_training(config, run_dir)
    try:
        wait_for(run_dir / f"step_{step:09d}", proc)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    return TrainState.from_checkpoint(run_dir).global_step


def dagster_env(**extra: str) -> dict[str, str]:
    """This environment without A2B_/DAGSTER_ settings, plus `extra`."""
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("A2B_", "DAGSTER_"))}
    env.update(extra)
    return env


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(command: str, port: int, env: dict[str, str], log_path: Path, timeout: float = 90.0):
    """Run a Dagster server (`dagster-webserver` or `dagster dev`, without -h: its default bind is under
    test) from the repo root until /server_info answers; stop its whole process group afterwards."""
    import os
    import signal
    import urllib.request

    exe = str(Path(sys.executable).parent / command.split()[0])
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [exe, *command.split()[1:], "-w", "workspace.yaml", "-p", str(port)],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=5) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                assert proc.poll() is None, log_path.read_text()[-3000:]
                assert time.monotonic() < deadline, (
                    f"{command} did not come up:\n{log_path.read_text()[-3000:]}"
                )
                time.sleep(0.5)
            yield proc
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def listening_sockets() -> list[tuple[str, int, str]]:
    """(local address, port, inode) of every LISTEN TCP socket, from /proc/net/tcp{,6} (no traffic)."""
    import socket

    found = []
    for name in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if parts[3] != "0A":  # 0A: LISTEN
                continue
            addr, port = parts[1].split(":")
            raw = bytes.fromhex(addr)
            if name == "tcp":
                ip = socket.inet_ntop(socket.AF_INET, raw[::-1])
            else:  # four little-endian 32-bit words
                ip = socket.inet_ntop(
                    socket.AF_INET6, b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
                )
            found.append((ip, int(port, 16), parts[9]))
    return found


@contextlib.contextmanager
def http_server(answer: Callable[[str], tuple[int, bytes]]) -> Iterator[int]:
    """A real HTTP server on 127.0.0.1 (a free port, yielded) answering GET and HEAD of each path with
    `answer(path)` -> (status, body); stopped on exit."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, body = answer(self.path)
            if status >= 400:
                self.send_error(status)
                return
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command == "GET":
                self.wfile.write(body)

        do_HEAD = do_GET

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def sample_state(tmp_path: Path) -> TrainState:
    """A TrainState with every part filled in (no training): for schema and checkpoint-file tests."""
    cfg = config_from_dict(
        {
            "data": {"datasets": [{"name": "a", "type": "synthetic", "root": str(tmp_path)}]},
            "checkpoint": {"dir": str(tmp_path / "runs")},
        }
    )
    s = TrainState.from_config(cfg)
    s.rng_state = RNGState.capture(seed=0)
    s.model_state.model_dtype = torch.bfloat16
    s.model_state.num_parameters, s.model_state.input_shape = 10, (400, 32)
    s.optimizer_state.param_groups = [{"lr": 0.1, "betas": [0.9, 0.99], "params": [0]}]
    s.optimizer_state.scalar_state = {"0": {"step": 3}}
    s.meta_dataloader_state = MetaDataLoaderState(
        split="train",
        sampling_weights=[0.3],
        dataloader_states=[
            DataLoaderState(last_batch_idx=0, dataset="synthetic", split="train", name="a", num_batches=9)
        ],
        epoch=2,
        seed=5,
        generator_state=list(range(16)),
    )
    s.metric_history = [
        MetricRecord(name="train/loss", value=0.5, step=1),
        MetricRecord(name="val/pearson", value=0.9, step=2),
    ]
    s.metric_state = MetricState(metrics={"train/loss": 0.5, "val/pearson": 0.9})
    s.global_step, s.epoch = 7, 2
    return s


def write_step(s: TrainState, step: int) -> Path:
    """Write `s` as checkpoint `step` of its run directory, with a 3-value weight tensor of `step`s."""
    s.global_step = step
    path = Path(s.run_dir) / checkpoint_name(step)
    s.to_checkpoint(path, {"model.safetensors": {"w": torch.full((3,), float(step))}})
    return path
