"""The command line's light commands (`a2b corpus`, `a2b cache`, `a2b sweep` listing a sweep) run, in a
process of their own, without importing torch: `python -X importtime` names every module the process
imports. A command that validates a model (`a2b validate`) does import it: the check can fail."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from _util import A2B, REPO, tiny_config
from corpus_fixtures import write_pmemo2019_fixture


def _a2b(*args: str, cwd: Path = REPO) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run `a2b ARGS` with -X importtime; the result and the top-level packages the process imported."""
    r = subprocess.run(
        [A2B[0], "-X", "importtime", *A2B[1:], *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )
    imported = {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in r.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    return r, imported


def _out(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def test_corpus_runs_without_torch(tmp_path: Path) -> None:
    info = write_pmemo2019_fixture(tmp_path / "pmemo")
    r, imported = _a2b("corpus", str(info.root), "--type", "pmemo2019", "--json")
    summary = json.loads(_out(r))
    assert summary["type"] == "pmemo2019" and summary["recordings"] == info.recordings
    assert "a2b_pipeline" in imported and "numpy" in imported  # the list is real: it names what ran
    assert "torch" not in imported and "dagster" not in imported


def test_cache_runs_without_torch(tmp_path: Path) -> None:
    r, imported = _a2b("cache", "--cache-dir", str(tmp_path / "cache"))
    assert isinstance(json.loads(_out(r)), dict)
    assert "torch" not in imported and "dagster" not in imported


def test_sweep_listing_runs_without_torch(tmp_path: Path) -> None:
    (tmp_path / "tiny.yaml").write_text(tiny_config(tmp_path).to_yaml())
    sweep = tmp_path / "lr.yaml"
    sweep.write_text("base: tiny.yaml\ngrid:\n  optimizer.lr: [0.001, 0.01]\n")
    r, imported = _a2b("sweep", str(sweep), "--json")
    listed = json.loads(_out(r))
    assert len(listed["experiments"]) == 2
    assert [e["overrides"] for e in listed["experiments"]] == [
        {"optimizer.lr": 0.001},
        {"optimizer.lr": 0.01},
    ]
    assert "torch" not in imported and "dagster" not in imported


def test_validate_imports_torch(tmp_path: Path) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text(tiny_config(tmp_path).to_yaml())
    r, imported = _a2b("validate", str(config))
    assert "# config hash: " in _out(r)
    assert "torch" in imported  # it builds the model on the meta device (training/preflight.py)
