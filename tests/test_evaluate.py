"""evaluate.py, pinned by hand on a corpus written by the test: the report scores exactly the test split's
recordings and windows, with the checkpoint's EMA weights in eval mode; baselines are fitted on the train
split; whole recordings are the windows stitched by a Hann-weighted overlap-add."""

from __future__ import annotations

import json
from pathlib import Path

import _tiny
import numpy as np
import pytest
import torch

from a2b_pipeline.checkpoint.store import load_tensors
from a2b_pipeline.data.pipeline import prepare_data
from a2b_pipeline.evaluation.evaluate import evaluate_checkpoint, evaluate_report, overlap_add, run_evaluation
from a2b_pipeline.models import build_model, model_io
from a2b_pipeline.state import TrainState


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """Four steps with dropout and EMA, whose best checkpoint is step 2's (scripted validation), not the
    last; global normalisation (train statistics); 2 test subjects."""
    tmp = tmp_path_factory.mktemp("evaluate")
    overrides = ["model.dropout=0.5", "train.ema_decay=0.5", "data.normalize=global", "train.max_steps=4"]
    overrides += ["checkpoint.metric=val/mse", "checkpoint.mode=min"]
    cfg = _tiny.config(tmp, overrides)
    state = _tiny.run(cfg, tmp / "run", [_tiny.ScriptedValidation({2: 0.0, 4: 5.0})])
    assert state.checkpoint_state.best_step == 2 and state.global_step == 4
    return Path(state.run_dir), cfg


def _hand_predictions(run: Path, cfg, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(predictions, truth) [W, Tw, C] of every window of `split`, in order: EMA weights, eval mode."""
    state = TrainState.from_checkpoint(run / "best")
    model = build_model(cfg.model, model_io(cfg))
    model.load_state_dict(load_tensors(state.last_checkpoint, "ema.safetensors", state))
    model.eval()
    (ds,) = prepare_data(cfg).splits[split].values()
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    y = torch.stack([ds[i][1] for i in range(len(ds))])
    with torch.no_grad():
        return model(x).double().numpy(), y.double().numpy()


def test_the_report_scores_exactly_the_test_split(trained: tuple[Path, object]) -> None:
    run, cfg = trained
    data = prepare_data(cfg)
    ev = run_evaluation(run, "test", n_boot=50)
    test_ids = [r.recording_id for r in data.recordings["test"]["tiny"]]
    assert len(test_ids) == 2 and [e.rec.recording_id for e in ev.recordings] == test_ids
    assert not set(test_ids) & {r.recording_id for s in ("train", "val") for r in data.recordings[s]["tiny"]}
    report = ev.report
    assert report["split"] == "test" and report["datasets"] == ["tiny"]
    assert report["global_step"] == 2  # a run directory is evaluated at its best checkpoint
    assert report["summary"]["n_recordings"] == 2 and report["summary"]["n_subjects"] == 2
    assert report["summary"]["n_windows"] == len(data.splits["test"]["tiny"]) == 8
    assert all(k.startswith("test/") for k in report["metrics"])
    # the model's windows are the checkpoint's EMA weights in eval mode on the test windows, the truth is
    # the test windows' targets
    pred, true = _hand_predictions(run, cfg, "test")
    np.testing.assert_allclose(np.concatenate([e.windows["model"] for e in ev.recordings]), pred, rtol=1e-6)
    np.testing.assert_allclose(np.concatenate([e.true_windows() for e in ev.recordings]), true, atol=1e-6)
    assert report["metrics"]["test/mse"] == pytest.approx(float(((pred - true) ** 2).mean()), rel=1e-6)
    assert report["metrics"]["test/mae"] == pytest.approx(float(np.abs(pred - true).mean()), rel=1e-6)
    r = np.corrcoef(pred.reshape(-1), true.reshape(-1))[0, 1]
    assert report["metrics"]["test/pearson"] == pytest.approx(r, rel=1e-5)
    # evaluate_checkpoint: the same pooled numbers, under the split's own name
    val = evaluate_checkpoint(run, "val")
    pred_v, true_v = _hand_predictions(run, cfg, "val")
    assert val["val/mse"] == pytest.approx(float(((pred_v - true_v) ** 2).mean()), rel=1e-6)
    assert evaluate_checkpoint(run, "test")["test/mse"] == pytest.approx(report["metrics"]["test/mse"])


def test_baselines_are_fitted_on_the_train_split(trained: tuple[Path, object]) -> None:
    """Global normalisation uses train statistics: the train targets' normalised mean, the constant
    baseline, is 0 (the other splits' recordings would move it)."""
    run, cfg = trained
    data = prepare_data(cfg)
    ev = run_evaluation(run, "test", n_boot=20)
    train = [lr.target.double().numpy() for lr in data.splits["train"]["tiny"].loaded]
    mean, std = (np.array(v) for v in (data.norm.target_mean, data.norm.target_std))
    hand = np.concatenate([(t - mean) / std for t in train]).mean(0)
    assert abs(hand[0]) < 1e-6
    for e in ev.recordings:
        np.testing.assert_allclose(e.series["constant"][:, 0], hand[0], atol=1e-6)
        # every baseline's windows are its series cut where the model's windows are
        for name in ("constant", "audio_linear"):
            want = np.stack([e.series[name][s : s + e.window_len] for s in e.starts])
            np.testing.assert_allclose(e.windows[name], want)


def test_report_file_is_the_report_of_its_split(trained: tuple[Path, object]) -> None:
    run, _ = trained
    report = evaluate_report(run, "val")
    assert report["split"] == "val" and all(k.startswith("val/") for k in report["metrics"])
    assert json.loads((run / "evaluation-val.json").read_text()) == report


def test_overlap_add_is_the_hann_weighted_mean_of_the_covering_windows() -> None:
    rng = np.random.default_rng(0)
    windows, starts, n = rng.normal(size=(3, 8, 2)), [0, 4, 6], 16
    taper = 0.5 - 0.5 * np.cos(2 * np.pi * (np.arange(8) + 0.5) / 8) + 1e-3
    total, weight = np.zeros((n, 2)), np.zeros(n)
    for w, s in zip(windows, starts, strict=True):
        total[s : s + 8] += w * taper[:, None]
        weight[s : s + 8] += taper
    got = overlap_add(windows, starts, n)
    np.testing.assert_allclose(got[:14], total[:14] / weight[:14, None])
    assert np.isnan(got[14:]).all()  # no window covers the last two samples
