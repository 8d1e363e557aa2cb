"""The registries (a2b_pipeline/plugins.py): a corpus type is one module, and so is a model.

A made-up layout, defined by a module written in the test (no file of the package edited), is validated in
configs, listed, fingerprinted and trained on; installed as a plugin (an entry point in the
`a2b_pipeline.corpora` group), the CLI finds it too. A corpus type with options of its own
(tests/plugins/picked_corpus.py) and a model with its own config class (tests/plugins/frame_mean_model.py),
each one module, are validated by their own classes, prepared and trained on.
"""

from __future__ import annotations

import csv
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml
from _util import SMALL, tiny_config
from safetensors import safe_open

from a2b_pipeline import plugins
from a2b_pipeline.configs import ConfigError, config_from_dict
from a2b_pipeline.data import corpora
from a2b_pipeline.data.corpora import list_recordings, source_of
from a2b_pipeline.data.synthetic import write_synthetic_corpus
from a2b_pipeline.state import TrainState
from a2b_pipeline.train import train

REPO = Path(__file__).resolve().parents[1]
PLUGINS = Path(__file__).resolve().parent / "plugins"

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
    path = tmp_path / "plugin" / "folders_corpus.py"
    path.parent.mkdir()
    path.write_text(FOLDERS_MODULE)
    return load_plugin(path, monkeypatch).CORPUS


def load_plugin(path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """Import a module from a file outside the package; what it registers is registered for this test only."""
    for registry in (plugins.CORPUS_TYPES, plugins.MODELS):
        monkeypatch.setattr(registry, "_registered", dict(registry._registered))
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, path.stem, module)  # pydantic resolves the module's annotations there
    spec.loader.exec_module(module)
    return module


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
    env = _installed(tmp_path / "site", "folders_corpus", FOLDERS_MODULE, "[a2b_pipeline.corpora]\nfolders")
    config = tmp_path / "folders.yaml"
    config.write_text(yaml.safe_dump(folders_config(tmp_path, [tmp_path / "clips"])))
    proc = _validate(config, env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "type: folders" in proc.stdout
    proc = _validate(config, {**os.environ})  # without the plugin's distribution
    assert proc.returncode == 2 and "unknown dataset type 'folders'" in proc.stderr


def test_an_installed_model_plugin_is_found_by_the_cli(tmp_path):
    source = (PLUGINS / "frame_mean_model.py").read_text()
    env = _installed(tmp_path / "site", "frame_mean_model", source, "[a2b_pipeline.models]\nframe_mean")
    raw = tiny_config(tmp_path).model_dump(mode="json")
    raw["model"] = {"name": "frame_mean", "hidden": 5}
    config = tmp_path / "frame_mean.yaml"
    config.write_text(yaml.safe_dump(raw))
    proc = _validate(config, env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "name: frame_mean" in proc.stdout and "hidden: 5" in proc.stdout
    proc = _validate(config, {**os.environ})
    assert proc.returncode == 2 and "unknown model 'frame_mean'" in proc.stderr


def _installed(site: Path, module: str, source: str, entry: str) -> dict[str, str]:
    """An installed distribution holding `module` and naming it in an entry point (`[group]\\nname`);
    returns the environment that sees it."""
    info = site / f"{module}-1.0.dist-info"
    info.mkdir(parents=True)
    (site / f"{module}.py").write_text(source)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"{entry} = {module}\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}


def _validate(config: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "a2b_pipeline.cli", "validate", str(config)]
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env, timeout=120)


# ---- a corpus type with options of its own, and a model with its own config class: one module each ----


def picked_config(tmp_path: Path, manifest: Path, **options) -> dict:
    raw = tiny_config(tmp_path).model_dump(mode="json")
    raw["data"]["datasets"][0] = {"name": "picked", "type": "picked", "manifest": str(manifest), **options}
    return raw


def test_a_corpus_type_with_its_own_options_validates_them_and_trains(tmp_path, monkeypatch):
    picked = load_plugin(PLUGINS / "picked_corpus.py", monkeypatch)
    manifest = write_synthetic_corpus(tmp_path / "src", seed=3, **SMALL)
    subjects = ["s01", "s02", "s03"]
    cfg = config_from_dict(picked_config(tmp_path, manifest, subjects=subjects, limit=5), "picked.yaml")
    ds = cfg.data.datasets[0]
    assert isinstance(ds, picked.PickedDataset) and (ds.subjects, ds.limit) == (subjects, 5)
    assert corpora.get("picked").options == ("subjects", "limit")
    listing = list_recordings(ds, cfg.data)
    assert len(listing.recordings) == 5 and {r.subject_id for r in listing.recordings} <= set(subjects)
    assert yaml.safe_load(cfg.to_yaml())["data"]["datasets"][0]["subjects"] == subjects  # saved with the run

    bad = [({"limit": 0}, "data.datasets.0.limit: Input should be greater than 0")]
    bad.append(({"subjects": "s01"}, "data.datasets.0.subjects: Input should be a valid list"))
    for options, message in bad:
        with pytest.raises(ConfigError, match=message):
            config_from_dict(picked_config(tmp_path, manifest, **options), "picked.yaml")
    other = picked_config(tmp_path, manifest, limit=5)
    other["data"]["datasets"][0]["type"] = "manifest"  # the option is the picked type's only
    with pytest.raises(ConfigError, match="data.datasets.0.limit: unknown key"):
        config_from_dict(other, "picked.yaml")

    state = train(TrainState.from_config(cfg, run_dir=tmp_path / "run"))
    assert state.status == "complete" and state.global_step == cfg.train.max_steps
    resumed = TrainState.from_checkpoint(state.run_dir)  # the stored config validates by its type again
    assert resumed.config.data.datasets[0] == ds


def test_a_model_with_its_own_config_class_validates_builds_and_trains(tmp_path, monkeypatch):
    model = load_plugin(PLUGINS / "frame_mean_model.py", monkeypatch)
    assert "frame_mean" in plugins.MODELS.names()
    raw = tiny_config(tmp_path).model_dump(mode="json")
    raw["model"] = {"name": "frame_mean", "hidden": 0}
    with pytest.raises(ConfigError, match="model.frame_mean.hidden: Input should be greater than 0"):
        config_from_dict(raw, "frame_mean.yaml")
    raw["model"] = {"name": "frame_mean", "hidden": 6, "dropout": 0.0}
    cfg = config_from_dict(raw, "frame_mean.yaml")
    assert isinstance(cfg.model, model.FrameMeanConfig) and cfg.model.hidden == 6

    state = train(TrainState.from_config(cfg, run_dir=tmp_path / "run"))
    assert state.status == "complete" and state.global_step == cfg.train.max_steps
    weights = safe_open(str(Path(state.model_state.last_model_path)), "pt")
    assert {k.split(".")[0] for k in weights.keys()}  # noqa: SIM118 (safe_open is no dict) == {"net"}  # the plugin's architecture was trained
    assert TrainState.from_checkpoint(state.run_dir).config.model == cfg.model
