"""Grouped k-fold cross-validation: folds from real corpora, `a2b cv` end to end, and the leaderboard CLI."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import yaml
from _util import longer_run, run_cli

from a2b_pipeline.configs import ConfigError, DataConfig, DatasetConfig, config_from_dict
from a2b_pipeline.data.corpora import list_recordings
from a2b_pipeline.data.pipeline import prepare_data
from a2b_pipeline.data.splits import SPLITS, fold_assignment, group_key, group_kinds, split_fold
from a2b_pipeline.experiments.cv import fold_config


def _recordings(tmp_path: Path, subjects: int = 7, stimuli: int | None = 5) -> list:
    ds = DatasetConfig(
        name="a",
        type="synthetic",
        root=str(tmp_path / "corpus"),
        synthetic={
            "subjects": subjects,
            "recordings_per_subject": 3,
            "seconds": 4,
            "seed": 3,
            "stimuli": stimuli,
        },
    )
    return list_recordings(ds, DataConfig(datasets=[ds])).recordings


@pytest.mark.parametrize("group_by", ["subject", "stimulus", "subject_and_stimulus"])
def test_folds_hold_out_each_group_once_and_never_train_on_it(tmp_path: Path, group_by: str) -> None:
    recs = _recordings(tmp_path)
    folds = 3
    tested: dict[str, list] = {kind: [] for kind in group_kinds(group_by)}
    covered = 0
    for k in range(folds):
        split = split_fold(recs, folds, k, 0.25, seed=11, group_by=group_by)
        parts = split.parts
        assert parts["test"] and parts["train"]
        for kind in group_kinds(group_by):
            groups = {s: {group_key(r, kind) for r in parts[s]} for s in SPLITS}
            # within the fold: no group in two of train / val / test
            assert not (groups["test"] & groups["train"] or groups["test"] & groups["val"])
            assert not groups["train"] & groups["val"]
            tested[kind] += sorted(groups["test"])
        # every recording is in the fold's train/val/test or dropped with a reason
        kept = sum(len(v) for v in parts.values())
        assert kept + len(split.dropped) == len(recs)
        assert all("fold" in d.reason or "split" in d.reason for d in split.dropped)
        covered += len(parts["test"])
    for kind, groups in tested.items():
        assert len(groups) == len(set(groups)), f"a {kind} is in two folds' test sets"
    if group_by != "subject_and_stimulus":  # every recording is tested exactly once
        assert covered == len(recs)
        assert len(set(tested[group_by])) == len({group_key(r, group_by) for r in recs})


def test_folds_are_deterministic_from_the_seed(tmp_path: Path) -> None:
    recs = _recordings(tmp_path, stimuli=None)
    a = fold_assignment(recs, 3, seed=1, group_by="subject")
    assert a == fold_assignment(list(recs), 3, seed=1, group_by="subject")
    assert any(fold_assignment(recs, 3, seed=s, group_by="subject") != a for s in (2, 3, 4))
    sizes = [len({group_key(r, "subject") for r, f in zip(recs, a, strict=True) if f == k}) for k in range(3)]
    assert sorted(sizes) == [2, 2, 3]  # 7 subjects dealt into 3 folds
    with pytest.raises(ValueError, match="folds=8: dataset a has only 7 subject"):
        fold_assignment(recs, 8, seed=1, group_by="subject")


def test_fold_config_and_prepare_data_use_the_fold(tmp_path: Path) -> None:
    raw = longer_run(tmp_path)
    raw["data"]["split"] = {"folds": 3}
    cfg = config_from_dict(raw)
    assert cfg.config_hash() != config_from_dict(longer_run(tmp_path)).config_hash()
    f1 = fold_config(cfg, 1)
    assert f1.data.split.fold == 1 and f1.name == "tiny.fold-1"
    with pytest.raises(ConfigError, match="fold 3 is not in 0..2"):
        fold_config(cfg, 3)
    with pytest.raises(ConfigError, match="split.fold=3 needs split.folds > 3"):
        config_from_dict({**raw, "data": {**raw["data"], "split": {"folds": 3, "fold": 3}}})
    data = prepare_data(f1)
    for name in ("a", "b"):
        listed = [r for r in data.recordings["train"][name] + data.recordings["val"][name]]
        listed += data.recordings["test"][name]
        expected = split_fold(listed, 3, 1, cfg.data.val_fraction, cfg.seed, "subject").parts["test"]
        assert {r.recording_id for r in data.recordings["test"][name]} == {r.recording_id for r in expected}


def test_a2b_cv_runs_three_folds_summarizes_and_resumes(tmp_path: Path) -> None:
    raw = longer_run(tmp_path)
    raw["data"]["split"] = {"folds": 3}
    raw["train"].update({"max_steps": 4, "val_every_n_steps": 2})
    raw["checkpoint"].update({"every_n_steps": 2})
    config = tmp_path / "cv.yaml"
    config.write_text(yaml.safe_dump(raw))
    proc = run_cli("cv", str(config), "--json")
    summary = json.loads(proc.stdout)
    cv_dir = Path(summary["dir"])
    assert summary["folds"] == 3 and summary["folds_evaluated"] == 3 and not summary["problems"]
    results = summary["fold_results"]
    assert [r["fold"] for r in results] == [0, 1, 2]
    assert [Path(r["run_dir"]) for r in results] == [cv_dir / f"fold-{k}" for k in range(3)]
    # three disjoint test sets covering every subject of both datasets
    tested = [set(r["test_groups"]["subject"]) for r in results]
    assert all(tested) and not (tested[0] & tested[1] or tested[0] & tested[2] or tested[1] & tested[2])
    assert len(set().union(*tested)) == 4 + 3
    # mean and std are those of the folds' own evaluation files
    reports = [json.loads(Path(r["report"]).read_text()) for r in results]

    def value(rep: dict, key: str) -> float:
        if key.startswith("metrics/"):
            return rep["metrics"][key.removeprefix("metrics/")]
        *path, ch = key.split("/")
        if path[0] == "margin":
            return rep["summary"]["margins"][path[1]][path[2]][path[3]][ch]["value"]
        return rep["summary"]["predictors"][path[0]][path[1]][path[2]][ch]["value"]

    for key in (
        "metrics/test/pearson",
        "model/recording/pearson/eda",
        "model/window/ccc/mean",
        "constant/recording/mae/hr",  # a baseline
        "margin/audio_linear/recording/mae/mean",  # the model's margin over a baseline
    ):
        values = [value(rep, key) for rep in reports]
        st = summary["stats"][key]
        assert st["values"] == values and st["n"] == 3
        assert st["mean"] == pytest.approx(statistics.fmean(values))
        assert st["std"] == pytest.approx(statistics.stdev(values))
    assert json.loads((cv_dir / "cv_summary.json").read_text())["stats"] == summary["stats"]

    # Again: every fold is complete, nothing is retrained, the same numbers come out.
    steps = {k: sorted(p.name for p in (cv_dir / f"fold-{k}").glob("step_*")) for k in range(3)}
    again = run_cli("cv", str(config), "--json")
    assert json.loads(again.stdout)["stats"] == summary["stats"]
    assert again.stderr.count("is complete") == 3
    assert {k: sorted(p.name for p in (cv_dir / f"fold-{k}").glob("step_*")) for k in range(3)} == steps

    one = run_cli("cv", str(config), "--fold", "1")  # one fold alone: complete, so reported as it is
    assert one.stderr.count("is complete") == 1 and "fold 1:" in one.stderr

    plain = run_cli("cv", str(tmp_path / "nofolds.yaml"), check=False)
    assert plain.returncode == 2
    (tmp_path / "nofolds.yaml").write_text(yaml.safe_dump(longer_run(tmp_path)))
    plain = run_cli("cv", str(tmp_path / "nofolds.yaml"), check=False)
    assert plain.returncode == 2 and "set data.split.folds" in plain.stderr
