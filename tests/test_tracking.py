"""wandb: offline by default (no network), and a resumed TrainState continues the same run id."""

from __future__ import annotations

from pathlib import Path

from _util import longer_run

from a2b_pipeline.configs import config_from_dict
from a2b_pipeline.state import TrainState
from a2b_pipeline.train import train


def test_offline_run_and_resume_keep_one_wandb_id(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "")  # no credentials, no network: offline must not need them
    raw = longer_run(tmp_path)
    raw["tracking"] = {"project": "a2b-test"}  # the default mode: offline
    raw["train"].update(max_steps=6, val_every_n_steps=3)
    raw["checkpoint"]["every_n_steps"] = 3
    cfg = config_from_dict(raw)
    assert cfg.tracking.wandb_mode == "offline"
    first = train(TrainState.from_config(cfg))
    assert first.status == "complete" and first.wandb_run_id
    assert first.wandb_run_path.endswith(f"/a2b-test/{first.wandb_run_id}")

    again = train(TrainState.from_checkpoint(Path(first.run_dir) / "step_000000003"))
    assert again.wandb_run_id == first.wandb_run_id
    offline = sorted((Path(first.run_dir) / "wandb").glob("offline-run-*"))
    assert len(offline) == 2 and all(first.wandb_run_id in p.name for p in offline)
