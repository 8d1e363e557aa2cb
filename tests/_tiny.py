"""Small fixtures of our own for the tests that pin exact behaviour (#27): a tiny manifest corpus written in
the test (wav + csv + manifest.csv, nothing from the synthetic generator, so its signal model can change),
a config over it that trains in well under a second per step on one CPU thread, and model hooks (the
`train(..., model_hooks=...)` API) that script the validation predictions or record RNG draws."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
from torch import nn

from a2b_pipeline.configs import RunConfig, apply_overrides, config_from_dict
from a2b_pipeline.state import TrainState

SAMPLE_RATE = 8000
TARGET_RATE = 4.0
# 8 s recordings, 2 s windows every 2 s: 4 windows per recording
SECONDS = 8.0


def write_corpus(
    root: Path,
    subjects: int = 8,
    recordings: int = 1,
    seconds: float = SECONDS,
    seed: int = 0,
    channels: Sequence[str] = ("eda",),
    stimuli: int | None = None,
) -> Path:
    """A manifest corpus: noise audio under a slow loudness envelope, and per channel a signal on the
    TARGET_RATE grid that follows the envelope, plus a per-subject baseline and noise. Returns the manifest.
    `stimuli`: recordings play clip (subject + recording) mod stimuli, with a stimulus_id column."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_audio, n_sig = int(seconds * SAMPLE_RATE), int(seconds * TARGET_RATE)
    t_audio, t_sig = np.arange(n_audio) / SAMPLE_RATE, np.arange(n_sig) / TARGET_RATE
    header = "recording_id,subject_id,audio_path,signal_path" + (",stimulus_id" if stimuli else "")
    rows = [header]
    for s in range(subjects):
        for r in range(recordings):
            clip = (s + r) % stimuli if stimuli else s * recordings + r
            phase = 2 * np.pi * clip / 7

            def env(t: np.ndarray, phase: float = phase) -> np.ndarray:
                return 0.6 + 0.4 * np.sin(2 * np.pi * t / 3.0 + phase)

            name = f"s{s}_r{r}"
            audio = f"clip{clip}.wav" if stimuli else f"{name}.wav"
            if not (root / audio).exists():
                wave = 0.2 * env(t_audio) * np.random.default_rng(clip).standard_normal(n_audio)
                sf.write(root / audio, wave.astype("float32"), SAMPLE_RATE)
            cols = {
                ch: 2.0 + s + (1 + i) * env(t_sig) + 0.1 * rng.standard_normal(n_sig)
                for i, ch in enumerate(channels)
            }
            lines = ["time," + ",".join(channels)]
            lines += [
                f"{t:.4f}," + ",".join(f"{cols[ch][j]:.6f}" for ch in channels) for j, t in enumerate(t_sig)
            ]
            (root / f"{name}.csv").write_text("\n".join(lines) + "\n")
            row = f"{name},p{s},{audio},{name}.csv" + (f",clip{clip}" if stimuli else "")
            rows.append(row)
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root / "manifest.csv"


def config(tmp_path: Path, overrides: Sequence[str] = (), manifest: Path | None = None) -> RunConfig:
    """A conv_gru of a few hundred weights on `write_corpus` (8 subjects: 4 train, 2 val, 2 test), plain SGD
    without clipping, a constant learning rate, one CPU thread, validation and a checkpoint every 2 steps."""
    manifest = manifest or write_corpus(tmp_path / "corpus")
    raw: dict[str, Any] = {
        "name": "pin",
        "seed": 0,
        "data": {
            "datasets": [{"name": "tiny", "type": "manifest", "manifest": str(manifest)}],
            "channels": ["eda"],
            "sample_rate": SAMPLE_RATE,
            "n_mels": 8,
            "frame_rate": 25.0,
            "target_rate": TARGET_RATE,
            "window_seconds": 2.0,
            "hop_seconds": 2.0,
            "batch_size": 2,
            "val_fraction": 0.25,
            "test_fraction": 0.25,
            "cache_dir": str(tmp_path / "cache"),
        },
        "model": {"name": "conv_gru", "conv_channels": 4, "hidden": 4, "dropout": 0.0},
        "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.0},
        "scheduler": {"name": "constant"},
        "train": {
            "max_steps": 6,
            "num_epochs": None,
            "device": "cpu",
            "num_threads": 1,
            "grad_clip": None,
            "log_every_n_steps": 1,
            "val_every_n_steps": 2,
            "progress_bar": False,
        },
        "checkpoint": {"dir": str(tmp_path / "runs"), "every_n_steps": 2, "keep_last": 50},
        "tracking": {"wandb_mode": "disabled"},
    }
    return config_from_dict(apply_overrides(raw, list(overrides)), "tests/_tiny.py")


def run(cfg: RunConfig, run_dir: Path, hooks: Sequence[Any] = ()) -> TrainState:
    from a2b_pipeline.train import train

    return train(TrainState.from_config(cfg, run_dir=run_dir), model_hooks=hooks)


class ScriptedValidation:
    """A model hook: in eval mode (validation) the model predicts the constant `values[step]` everywhere,
    so the validation metrics of each step are known in advance (MSE of a constant c is the mean of
    (y - c)^2: it grows with |c - mean(y)|). Training steps are untouched."""

    def __init__(self, values: dict[int, float]):
        self.values = values

    def __call__(self, model: nn.Module, state: TrainState) -> None:
        def scripted(module: nn.Module, args: Any, out: torch.Tensor) -> torch.Tensor | None:
            if module.training:
                return None
            return torch.full_like(out, self.values[state.global_step])

        model.register_forward_hook(scripted)


class RngDraws:
    """A model hook: every training forward draws once from python's, numpy's and torch's global generators
    (as an augmentation would) and records the draws by step."""

    def __init__(self) -> None:
        self.draws: dict[int, list[tuple[float, float, float]]] = {}

    def __call__(self, model: nn.Module, state: TrainState) -> None:
        def draw(module: nn.Module, args: Any) -> None:
            if module.training:
                got = (random.random(), float(np.random.rand()), float(torch.rand(())))
                self.draws.setdefault(state.global_step, []).append(got)

        model.register_forward_pre_hook(draw)


def history(state: TrainState, name: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in state.metric_history if m.name == name]
