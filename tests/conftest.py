"""Shared fixtures: small synthetic corpora of real files in tmp_path, and a tiny RunConfig over them.

`tiny_config(tmp_path, overrides)` is also importable (`from conftest import tiny_config`) for tests that
need several configs in one test.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from a2b_pipeline.configs import RunConfig, apply_overrides, config_from_dict
from a2b_pipeline.data.synthetic import write_synthetic_corpus

# small enough to write in ~0.3 s and load in ~0.5 s; 16 s recordings give 3 windows of 8 s at hop 4
SMALL = {"subjects": 4, "recordings_per_subject": 2, "seconds": 16.0}


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


@pytest.fixture(autouse=True)
def _private_feature_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Configs without data.cache_dir must not write into the user's ~/.cache/a2b."""
    monkeypatch.setenv("A2B_CACHE_DIR", str(tmp_path / "feature-cache"))


@pytest.fixture
def tiny_cfg(tmp_path: Path) -> RunConfig:
    return tiny_config(tmp_path)


@pytest.fixture
def synth_corpus(tmp_path: Path) -> Path:
    """Manifest path of a fresh synthetic corpus (4 subjects x 2 recordings x 16 s, eda + hr)."""
    return write_synthetic_corpus(tmp_path / "corpus", seed=0, **SMALL)
