"""A corpus type is one module: a made-up layout, defined by a module written in the test (no file of the
package edited), is validated in configs, listed, fingerprinted and trained on; installed as a plugin (an
entry point in the `a2b_pipeline.corpora` group), the CLI finds it too."""

from __future__ import annotations

import csv
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from _util import SMALL, tiny_config

from a2b_pipeline.configs import ConfigError, config_from_dict
from a2b_pipeline.data import corpora
from a2b_pipeline.data.corpora import list_recordings, source_of
from a2b_pipeline.data.synthetic import write_synthetic_corpus
from a2b_pipeline.state import TrainState
from a2b_pipeline.train import train

REPO = Path(__file__).resolve().parents[1]

# The whole corpus type: <root>/<subject>/<clip>.wav, its biosignals in <clip>.csv beside it (time in
# seconds of the audio, one column per channel).
FOLDERS_MODULE = '''
"""Folders of clips: <root>/<subject>/<clip>.wav with <clip>.csv beside it."""

from pathlib import Path

from a2b_pipeline.data.corpora import CorpusType, register
from a2b_pipeline.data.recording import Listing, Recording, SignalSource


def list_folders(ds, data):
    listing = Listing()
    for wav in sorted(Path(ds.root).glob("*/*.wav")):
        signal = str(wav.with_suffix(".csv"))
        listing.recordings.append(
            Recording(
                dataset=ds.name,
                recording_id=f"{wav.parent.name}-{wav.stem}",
                subject_id=wav.parent.name,
                audio_path=str(wav),
                signals={ch: SignalSource(signal, ch) for ch in data.channels},
                source=ds.root,
            )
        )
    return listing


CORPUS = register(CorpusType(name="folders", sources=("root",), list_recordings=list_folders))
'''


def write_folders_corpus(root: Path, seed: int) -> int:
    """A synthetic corpus rearranged into the folders layout (signal times shifted into audio seconds)."""
    manifest = write_synthetic_corpus(root.parent / f"src-{root.name}", seed=seed, **SMALL)
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        folder = root / row["subject_id"]
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(manifest.parent / row["audio_path"], folder / f"{row['recording_id']}.wav")
        offset = float(row.get("offset_seconds") or 0.0)
        with open(manifest.parent / row["signal_path"], newline="") as f:
            table = list(csv.DictReader(f))
        with open(folder / f"{row['recording_id']}.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(table[0]))
            w.writeheader()
            w.writerows({**r, "time": f"{float(r['time']) + offset:.6f}"} for r in table)
    return len(rows)


def folders_config(tmp_path: Path, roots: list[Path]) -> dict:
    raw = tiny_config(tmp_path).model_dump(mode="json")
    raw["data"]["datasets"] = [
        {"name": f"clips{i}", "type": "folders", "root": str(root), "weight": 1.0}
        for i, root in enumerate(roots)
    ]
    return raw


@pytest.fixture
def folders_type(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Import the module from a file outside the package (registering the type for this test only)."""
    monkeypatch.setattr(corpora, "_REGISTERED", dict(corpora._REGISTERED))
    path = tmp_path / "plugin" / "folders_corpus.py"
    path.parent.mkdir()
    path.write_text(FOLDERS_MODULE)
    spec = importlib.util.spec_from_file_location("folders_corpus", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.CORPUS


def test_an_unknown_type_is_a_config_error(tmp_path):
    raw = folders_config(tmp_path, [tmp_path / "clips"])
    with pytest.raises(ConfigError, match="unknown dataset type 'folders'; known: hku956, manifest"):
        config_from_dict(raw, "folders.yaml")


def test_a_corpus_type_added_by_one_module_lists_and_trains(tmp_path, folders_type):
    roots = [tmp_path / "clips0", tmp_path / "clips1"]
    counts = [write_folders_corpus(root, seed) for seed, root in enumerate(roots, 1)]
    assert "folders" in corpora.names() and corpora.get("folders") is folders_type

    raw = folders_config(tmp_path, roots)
    raw["data"]["datasets"][1].pop("root")
    with pytest.raises(ConfigError, match="dataset 'clips1' of type 'folders' needs `root`"):
        config_from_dict(raw, "folders.yaml")

    cfg = config_from_dict(folders_config(tmp_path, roots), "folders.yaml")
    for ds, root, n in zip(cfg.data.datasets, roots, counts, strict=True):
        listing = list_recordings(ds, cfg.data)
        assert len(listing.recordings) == n == SMALL["subjects"] * SMALL["recordings_per_subject"]
        assert {r.dataset for r in listing.recordings} == {ds.name}
        assert source_of(ds) == str(root)  # what the corpus sensor fingerprints

    state = train(TrainState.from_config(cfg, run_dir=tmp_path / "run"))
    assert state.status == "complete" and state.global_step == cfg.train.max_steps
    losses = [m.value for m in state.metric_history if m.name == "train/loss"]
    assert losses and all(v == v for v in losses)  # finite (NaN != NaN)
    assert any(m.name.startswith("val/") for m in state.metric_history)


def test_an_installed_plugin_is_found_by_the_cli(tmp_path):
    """A distribution that names the module in the entry point group: `a2b validate` accepts the type."""
    site = tmp_path / "site"
    (site / "folders_corpus-1.0.dist-info").mkdir(parents=True)
    (site / "folders_corpus.py").write_text(FOLDERS_MODULE)
    (site / "folders_corpus-1.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: folders-corpus\nVersion: 1.0\n"
    )
    (site / "folders_corpus-1.0.dist-info" / "entry_points.txt").write_text(
        "[a2b_pipeline.corpora]\nfolders = folders_corpus\n"
    )
    config = tmp_path / "folders.yaml"
    config.write_text(yaml.safe_dump(folders_config(tmp_path, [tmp_path / "clips"])))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-m", "a2b_pipeline.cli", "validate", str(config)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "type: folders" in proc.stdout
    without = {**os.environ}
    proc = subprocess.run(
        [sys.executable, "-m", "a2b_pipeline.cli", "validate", str(config)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=without,
        timeout=120,
    )
    assert proc.returncode == 2 and "unknown dataset type 'folders'" in proc.stderr
