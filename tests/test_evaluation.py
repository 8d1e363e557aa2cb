"""The evaluation: model and baselines on the same test data, per channel / window / recording, with
intervals; undefined numbers reported as such. Real corpora on disk, real checkpoints, the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from _util import longer_run, run_cli

from a2b_pipeline.configs import config_from_dict
from a2b_pipeline.data.pipeline import prepare_data
from a2b_pipeline.evaluation.evaluate import overlap_add, run_evaluation
from a2b_pipeline.evaluation.scoring import scores, stat
from a2b_pipeline.state import TrainState
from a2b_pipeline.train import train

RATE = 4.0  # Hz: signal files sampled on the target grid, so the loaded targets are the file's values


def _train(raw: dict, steps: int = 6) -> Path:
    raw["train"]["max_steps"] = steps
    raw["train"]["val_every_n_steps"] = steps
    raw["checkpoint"]["every_n_steps"] = steps
    return Path(train(TrainState.from_config(config_from_dict(raw))).run_dir)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run on a synthetic corpus whose clips are shared by listeners, and one without stimulus ids."""
    tmp = tmp_path_factory.mktemp("eval")
    raw = longer_run(tmp)
    raw["data"]["datasets"][0]["synthetic"].update(subjects=6, stimuli=4)
    return _train(raw)


def test_evaluate_prints_a_table_and_ends_with_the_gate_verdict(run: Path) -> None:
    from a2b_pipeline.evaluation.gate import verdict

    out = run_cli("evaluate", str(run), "--split", "test").stdout.strip().splitlines()
    report = json.loads((run / "evaluation-test.json").read_text())
    assert len(out) < 15  # a table, not the report
    header = out[2].split()
    assert header[:4] == ["channel", "model", "constant", "other_listeners"] and "better" in header
    summary = report["summary"]
    for ch in [*report["channels"], "mean"]:
        (line,) = [row for row in out if row.split()[:1] == [ch]]
        model = summary["predictors"]["model"]["recording"]["pearson"][ch]
        margin = summary["margins"]["audio_linear"]["recording"]["pearson"][ch]
        assert line.split()[1] == f"{model['value']:.3f}" and f"{margin['value']:.3f}" in line
    assert f"{summary['n_recordings']} recordings of {summary['n_subjects']} subjects" in out[0]
    assert out[-2] == f"full report: {run / 'evaluation-test.json'}"
    assert out[-1] == f"verdict: {verdict(report).line}"


def test_report_has_model_and_baselines_per_channel_level_and_dataset(run: Path) -> None:
    out = run_cli("evaluate", str(run), "--split", "test", "--json")
    report = json.loads(out.stdout)
    assert out.stderr.strip().splitlines()[-1].startswith("verdict: ")
    assert json.loads((run / "evaluation-test.json").read_text()) == report
    assert report["schema"] == "a2b.evaluation/1" and report["split"] == "test"
    assert report["metrics"]["test/pearson"] == pytest.approx(report["metrics"]["test/pearson"])  # not NaN
    assert report["datasets"] == ["a", "b"] and set(report["by_dataset"]) == {"a", "b"}
    summary = report["summary"]
    assert set(summary["predictors"]) == {"model", "constant", "other_listeners", "audio_linear"}
    assert summary["n_recordings"] == sum(b["n_recordings"] for b in report["by_dataset"].values())
    for name in ("model", "audio_linear"):
        for level in ("recording", "window"):
            for metric in ("pearson", "ccc", "mae", "mse"):
                for ch in ("eda", "hr", "mean"):
                    s = summary["predictors"][name][level][metric][ch]
                    assert s["value"] is not None and s["n"] > 0, (name, level, metric, ch)
                    assert s["ci_low"] <= s["value"] <= s["ci_high"]  # test split has >= 2 subjects
    # constant: Pearson r is undefined and said so; its errors are numbers
    const = summary["predictors"]["constant"]
    for level in ("recording", "window"):
        assert const[level]["pearson"]["eda"]["value"] is None
        assert "constant" in const[level]["pearson"]["eda"]["reason"]
        assert const[level]["mae"]["eda"]["value"] > 0
        assert summary["margins"]["constant"][level]["pearson"]["mean"]["value"] is None
        assert summary["margins"]["constant"][level]["mae"]["mean"]["value"] is not None
    # other_listeners: there in dataset a (shared clips), not in b (no stimulus ids), with the reason
    a, b = report["by_dataset"]["a"], report["by_dataset"]["b"]
    assert a["predictors"]["other_listeners"]["available"] is True
    assert a["predictors"]["other_listeners"]["recording"]["pearson"]["eda"]["value"] is not None
    assert b["predictors"]["other_listeners"]["available"] is False
    assert "stimulus" in b["predictors"]["other_listeners"]["reason"]
    assert b["margins"]["other_listeners"]["recording"]["pearson"]["eda"]["value"] is None
    # margins are model minus baseline (errors flipped): positive = the model is better
    m = a["margins"]["audio_linear"]["recording"]["mae"]["eda"]
    assert m["value"] is not None and m["ci_low"] <= m["value"] <= m["ci_high"]
    assert report["splits"]["group_by"] == "subject" and report["splits"]["dropped"] == 0


def test_margins_pair_the_model_with_each_baseline_on_the_same_recordings(run: Path) -> None:
    ev = run_evaluation(run, "test", n_boot=50)
    a = [e for e in ev.recordings if e.rec.dataset == "a"]
    diffs = []
    for e in a:
        model, base = e.values("model", like="audio_linear"), e.values("audio_linear")
        diffs.append(model["recording"]["pearson"][0] - base["recording"]["pearson"][0])
    got = ev.report["by_dataset"]["a"]["margins"]["audio_linear"]["recording"]["pearson"]["eda"]["value"]
    assert got == pytest.approx(float(np.median(diffs)))
    # whole-recording values are the metric of the stitched series, not an average of windows
    e = a[0]
    ok = np.isfinite(e.true).all(1)
    r = np.corrcoef(e.series["model"][ok, 0], e.true[ok, 0])[0, 1]
    assert e.values("model")["recording"]["pearson"][0] == pytest.approx(r)
    png = ev.plot(2, "t")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def _tiny_corpus(root: Path, values: dict[str, np.ndarray], seconds: float = 8.0) -> Path:
    """One clip heard by every subject; subject -> signal values on the 4 Hz grid."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    sf.write(root / "song.wav", (0.1 * rng.standard_normal(int(seconds * 16000))).astype("float32"), 16000)
    rows = ["recording_id,subject_id,audio_path,signal_path,stimulus_id"]
    for subject, v in values.items():
        t = np.arange(len(v)) / RATE
        lines = ["time,eda"] + [f"{a:.4f},{b:.6f}" for a, b in zip(t, v, strict=True)]
        (root / f"{subject}.csv").write_text("\n".join(lines) + "\n")
        rows.append(f"{subject}_song,{subject},song.wav,{subject}.csv,song")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root / "manifest.csv"


def test_other_listeners_is_the_mean_of_the_other_listeners(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    n = int(8 * RATE) + 1
    values = {f"p{i}": rng.normal(5.0 + i, 1.0, n) for i in range(5)}
    manifest = _tiny_corpus(tmp_path / "corpus", values)
    raw = longer_run(tmp_path)
    raw["data"]["datasets"] = [{"name": "tiny", "type": "manifest", "manifest": str(manifest)}]
    raw["data"].update(
        channels=["eda"], normalize="none", target_rate=RATE, val_fraction=0.2, test_fraction=0.2
    )
    run = _train(raw, steps=2)
    ev = run_evaluation(run, "test", n_boot=20)
    assert ev.recordings
    for e in ev.recordings:
        others = [v for s, v in values.items() if s != e.rec.subject_id]
        hand = np.mean(others, axis=0)
        got = e.series["other_listeners"][:, 0]
        ok = np.isfinite(e.true[:, 0])
        assert ok.sum() > 10
        np.testing.assert_allclose(got[ok], hand[: len(got)][ok], rtol=0, atol=1e-4)
        np.testing.assert_allclose(e.true[ok, 0], values[e.rec.subject_id][: len(got)][ok], atol=1e-4)
    # constant: the mean of the train listeners' values over the audio's 8 s (the grid's 32 samples)
    data = prepare_data(TrainState.from_checkpoint(run).config)
    train_ids = [r.subject_id for r in data.recordings["train"]["tiny"]]
    assert len(train_ids) == 3 and not set(train_ids) & {e.rec.subject_id for e in ev.recordings}
    hand = np.concatenate([values[s][: int(8 * RATE)] for s in train_ids]).mean()
    for e in ev.recordings:
        c = e.series["constant"][np.isfinite(e.true[:, 0]), 0]
        np.testing.assert_allclose(c, hand, atol=1e-4)


def test_scores_mark_undefined_pearson_and_stats_say_why() -> None:
    t = np.linspace(0, 1, 50)[:, None]
    s = scores(np.full_like(t, 0.3), t)
    assert np.isnan(s["pearson"][0]) and s["mae"][0] > 0
    out = stat(np.array([np.nan, np.nan]), ["a", "b"], "the prediction is constant")
    assert out == {
        "value": None,
        "ci_low": None,
        "ci_high": None,
        "n": 0,
        "reason": "the prediction is constant",
    }
    one = stat(np.array([0.5, 0.7]), ["a", "a"], "x")
    assert one["value"] == pytest.approx(0.6) and one["ci_low"] is None  # one subject: no interval
    series = overlap_add(np.array([[[1.0], [1.0]], [[3.0], [3.0]]]), [0, 1], 4)
    np.testing.assert_allclose(series[:3, 0], [1.0, 2.0, 3.0])
    assert np.isnan(series[3, 0])


def test_bootstrap_medians_are_the_medians_of_the_resampled_subjects() -> None:
    """The vectorised resampling gives exactly np.median of each resample's recordings (a subject drawn
    twice brings its recordings twice)."""
    from a2b_pipeline.evaluation.scoring import _resampled_medians

    rng = np.random.default_rng(1)
    for _ in range(100):
        n = int(rng.integers(1, 12))
        vals = rng.normal(size=n)
        subject = np.unique(rng.integers(0, int(rng.integers(1, 5)), n), return_inverse=True)[1]
        draws = rng.integers(0, subject.max() + 1, size=(20, subject.max() + 1))
        want = [np.median(np.concatenate([vals[subject == i] for i in row])) for row in draws]
        np.testing.assert_allclose(_resampled_medians(vals, subject, draws), want)


def test_gate_warns_when_a_margin_interval_reaches_zero_and_errors_on_broken_metrics(run: Path) -> None:
    import copy

    from a2b_pipeline.evaluation.gate import verdict

    report = json.loads((run / "evaluation-test.json").read_text())
    margins = report["summary"]["margins"]
    for name in ("audio_linear", "other_listeners"):  # the model reliably ahead of both
        margins[name]["recording"]["pearson"]["mean"].update(value=0.2, ci_low=0.1, ci_high=0.3)
    ok = verdict(report)
    assert ok.status == "ok" and ok.best_baseline in ("audio_linear", "other_listeners")
    assert ok.line.startswith(
        f"ok: model better than {ok.best_baseline}, the best baseline, by 0.200 [0.100, 0.300]"
    )
    margins["other_listeners"]["recording"]["pearson"]["mean"].update(value=0.05, ci_low=0.0, ci_high=0.1)
    warn = verdict(report)  # the best baseline is the one with the smallest margin; its interval reaches 0
    assert warn.status == "warn" and warn.best_baseline == "other_listeners"
    assert (
        "not reliably better than other_listeners, the best baseline: better than it by 0.050 [0.000, 0.100]"
        in (warn.line)
    )
    assert set(warn.margins) == {"audio_linear", "other_listeners"}
    broken = copy.deepcopy(report)
    broken["metrics"]["test/pearson"] = float("nan")
    assert verdict(broken).status == "error" and "test/pearson" in verdict(broken).line
    broken = copy.deepcopy(report)
    broken["summary"]["predictors"]["model"]["recording"]["pearson"]["mean"]["value"] = None
    assert verdict(broken).status == "error"
