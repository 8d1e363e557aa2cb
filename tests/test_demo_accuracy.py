"""The demo's accuracy, deterministically: on the synthetic listeners (data/synthetic.py), the demo config's
default model, trained with the demo's seed, against its baselines on whole recordings. It checks numbers,
and times nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from a2b_pipeline.configs import config_from_dict
from a2b_pipeline.evaluation.evaluate import run_evaluation
from a2b_pipeline.state import TrainState
from a2b_pipeline.train import train

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("demo_accuracy")
    raw = yaml.safe_load((REPO / "configs/demo.yaml").read_text())
    for ds in raw["data"]["datasets"]:  # the demo's corpora, generated here from the same settings
        ds["root"] = str(tmp / ds["name"])
    raw["checkpoint"]["dir"] = str(tmp / "runs")
    raw["tracking"]["wandb_mode"] = "disabled"
    state = train(TrainState.from_config(config_from_dict(raw)))
    assert state.status == "complete", state.message
    return run_evaluation(state.run_dir, "test").report


def _r_and_margin(report: dict[str, Any], baseline: str) -> tuple[dict[str, float], dict[str, Any]]:
    summary = report["summary"]
    r = {name: p["recording"]["pearson"]["mean"]["value"] for name, p in summary["predictors"].items()}
    return r, summary["margins"][baseline]["recording"]["pearson"]["mean"]


@pytest.mark.slow
def test_demo_model_beats_audio_linear_and_listeners_agree_only_partly(demo_report) -> None:
    r, margin = _r_and_margin(demo_report, "audio_linear")
    assert r["model"] > r["audio_linear"], (r, margin)
    # better than a linear response to loudness, reliably: the bootstrap interval over subjects lies above 0
    assert margin["value"] > 0 and margin["ci_low"] is not None and margin["ci_low"] > 0, (r, margin)
    # the listeners of a clip agree, but only partly (responses differ between people), as on real corpora
    assert 0.0 < r["other_listeners"] < 0.7, r


@pytest.mark.slow
def test_demo_model_beats_other_listeners(demo_report) -> None:
    r, margin = _r_and_margin(demo_report, "other_listeners")
    assert r["model"] > r["other_listeners"], (r, margin)
    # better than the mean of the other listeners of the same clip, reliably: the interval lies above 0
    assert margin["value"] > 0 and margin["ci_low"] is not None and margin["ci_low"] > 0, (r, margin)
