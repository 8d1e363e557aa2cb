"""`a2b train configs/hku956+pmemo2019.yaml` on fixture corpora in the published layouts, end to end; the
MetaDataLoader draws from both corpora in the configured proportion."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from corpus_fixtures import write_hku956_fixture, write_pmemo2019_fixture

from a2b_pipeline.configs import apply_overrides, config_from_dict
from a2b_pipeline.data.pipeline import make_loader, prepare_data
from a2b_pipeline.state import TrainState

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "hku956+pmemo2019.yaml"


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("mixed")
    write_pmemo2019_fixture(base / "PMEmo2019", songs=3, subjects=4, seconds=10.0, sample_rate=22050)
    write_hku956_fixture(
        base / "HKU956", participants=3, songs_per_participant=3, seconds=10.0, sample_rate=22050
    )
    return {"hku": base / "HKU956", "pmemo": base / "PMEmo2019", "base": base}


def overrides(roots: dict[str, Path], tmp_path: Path) -> list[str]:
    return [
        f"data.datasets.0.root={roots['hku']}",
        f"data.datasets.1.root={roots['pmemo']}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.window_seconds=4",
        "data.hop_seconds=1",
        "data.n_mels=16",
        "data.batch_size=2",
        "data.num_workers=0",
        "data.val_fraction=0.25",
        "data.test_fraction=0.25",
        "model.conv_channels=8",
        "model.hidden=8",
        "model.layers=1",
        "train.max_steps=8",
        "train.val_every_n_steps=4",
        "train.log_every_n_steps=1",
        "train.device=cpu",
        "train.num_threads=1",
        "train.progress_bar=false",
        "scheduler.warmup_steps=0",
        "checkpoint.every_n_steps=4",
        f"checkpoint.dir={tmp_path / 'runs'}",
        "tracking.wandb_mode=disabled",
    ]


def test_a2b_train_on_the_mixed_config(roots, tmp_path):
    sets = [arg for o in overrides(roots, tmp_path) for arg in ("--set", o)]
    proc = subprocess.run(
        [sys.executable, "-m", "a2b_pipeline.cli", "train", str(CONFIG), *sets],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = Path(proc.stdout.strip().splitlines()[-1])
    state = TrainState.from_checkpoint(run_dir)
    assert state.status == "complete" and state.global_step == 8
    assert [d.name for d in state.config.data.datasets] == ["hku956", "pmemo2019"]
    losses = [m.value for m in state.metric_history if m.name == "train/loss"]
    assert len(losses) == 8 and all(v == v for v in losses)  # finite (NaN != NaN)
    assert any(m.name.startswith("val/") for m in state.metric_history)


def test_meta_loader_draws_both_corpora_in_the_configured_proportion(roots, tmp_path):
    raw = apply_overrides(yaml.safe_load(CONFIG.read_text()), overrides(roots, tmp_path))
    cfg = config_from_dict(raw, str(CONFIG))
    assert cfg.data.weights_at(0) == [2.0, 1.0]
    prepared = prepare_data(cfg)
    loader = make_loader(prepared, cfg, "train")
    assert loader.dataset_names == ["hku956", "pmemo2019"]
    sizes = [len(dl) for dl in loader.dataloaders]
    assert min(sizes) >= 3
    contested = [0, 0]  # draws made while both corpora still had batches left in the epoch
    for epoch in range(40):
        loader.set_epoch(epoch)
        left = list(sizes)
        for _batch in loader:
            i = loader.last_loader
            if all(left):
                contested[i] += 1
            left[i] -= 1
        assert left == [0, 0]  # an epoch reads both corpora to the end
    share = contested[0] / sum(contested)
    assert share == pytest.approx(2 / 3, abs=0.08), contested
