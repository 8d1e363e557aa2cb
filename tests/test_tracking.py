"""wandb: offline by default (no network), and a resumed TrainState continues the same run id."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from _util import longer_run

from a2b_pipeline.configs import config_from_dict
from a2b_pipeline.state import TrainState
from a2b_pipeline.train import train
from a2b_pipeline.training.tracking import Tracker, wandb_mode


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


@pytest.mark.parametrize(
    ("env", "want"),
    [
        ({}, "offline"),  # the config's
        ({"WANDB_MODE": " Disabled "}, "disabled"),
        ({"WANDB_MODE": "online"}, "online"),
        ({"WANDB_MODE": "dryrun"}, "offline"),  # wandb's legacy spellings
        ({"WANDB_MODE": "run"}, "online"),
        ({"WANDB_MODE": "online", "WANDB_DISABLED": "true"}, "disabled"),
        ({"WANDB_DISABLED": "yes"}, "disabled"),
        ({"WANDB_DISABLED": "false"}, "offline"),
    ],
)
def test_environment_wins_over_the_config(
    tmp_path: Path, monkeypatch, env: dict[str, str], want: str
) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_DISABLED", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    cfg = config_from_dict({**longer_run(tmp_path), "tracking": {"wandb_mode": "offline"}})
    assert wandb_mode(cfg) == want


def test_unknown_environment_mode_is_an_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "quiet")
    monkeypatch.delenv("WANDB_DISABLED", raising=False)
    cfg = config_from_dict(longer_run(tmp_path))
    with pytest.raises(
        ValueError, match=r"WANDB_MODE='quiet': expected one of \('online', 'offline', 'disabled'\)"
    ):
        wandb_mode(cfg)


def test_disabled_or_other_ranks_never_import_wandb(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_DISABLED", raising=False)
    monkeypatch.setitem(sys.modules, "wandb", None)  # importing it would fail
    off = Tracker(
        config_from_dict({**longer_run(tmp_path), "tracking": {"wandb_mode": "disabled"}}), "d", "abc"
    )
    other = Tracker(
        config_from_dict({**longer_run(tmp_path), "tracking": {"wandb_mode": "offline"}}), "d", None, 1
    )
    for t in (off, other):
        t.log({"a": 1.0}, 3)
        t.finish()
        assert t.run is None and t.run_path is None
    assert off.run_id == "abc" and off.mode == "disabled" and other.run_id is None and other.mode == "offline"


def test_offline_run_is_named_and_tagged_from_the_config(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_DISABLED", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "")
    raw = longer_run(tmp_path)
    raw["tracking"] = {"project": "p", "tags": ["x"]}
    cfg = config_from_dict(raw)
    fresh = Tracker(cfg, str(tmp_path), None)
    try:
        assert len(fresh.run_id) == 12 and int(fresh.run_id, 16) >= 0
        assert fresh.run.name == f"{cfg.name}-{cfg.config_hash()}" and list(fresh.run.tags) == ["x"]
        assert fresh.run_path == f"offline/p/{fresh.run_id}" and fresh.run.id == fresh.run_id
        assert fresh.run.config["name"] == cfg.name
        fresh.log({"train/loss": 1.5}, 7)
    finally:
        fresh.finish()
    assert fresh.run is None
    again = Tracker(cfg, str(tmp_path), "given0000000")
    again.finish()
    assert again.run_id == "given0000000" and again.run_path == "offline/p/given0000000"
