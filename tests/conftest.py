"""Shared fixtures: small synthetic corpora of real files in tmp_path, and a tiny RunConfig over them.

The config itself is `_util.tiny_config(tmp_path, overrides)`, for tests that need several configs.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Nothing is downloaded in tests, and no model in the user's Hugging Face cache is found: the hub client
# reads these once, when first imported.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="a2b-tests-hf-")

import pytest
from _util import SMALL, tiny_config

from a2b_pipeline.configs import RunConfig
from a2b_pipeline.data.synthetic import write_synthetic_corpus


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
