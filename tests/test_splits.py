"""Grouped splits (data.split.group_by) on real corpora: what must not leak is in exactly one split."""

from __future__ import annotations

from pathlib import Path

import pytest
from _util import REPO, longer_run

from a2b_pipeline.configs import config_from_dict, load_config
from a2b_pipeline.data.pipeline import prepare_data
from a2b_pipeline.data.recording import Recording
from a2b_pipeline.data.splits import SPLITS, group_key, split_grouped, stimulus_id
from a2b_pipeline.data.synthetic import write_synthetic_corpus


def _shared_stimuli_config(tmp_path: Path, group_by: str) -> dict:
    raw = longer_run(tmp_path)
    raw["data"]["datasets"] = [
        {
            "name": "a",
            "type": "synthetic",
            "root": str(tmp_path / "corpus_stim"),
            "synthetic": {"subjects": 8, "recordings_per_subject": 3, "seconds": 8, "seed": 1, "stimuli": 8},
        }
    ]
    raw["data"]["split"] = {"group_by": group_by}
    return raw


def _groups(parts: dict[str, list[Recording]], kind: str) -> dict[str, set]:
    return {s: {group_key(r, kind) for r in parts[s]} for s in SPLITS}


def _disjoint(groups: dict[str, set]) -> bool:
    return not (
        groups["train"] & groups["val"] or groups["train"] & groups["test"] or groups["val"] & groups["test"]
    )


def test_synthetic_corpus_shares_stimuli_across_subjects(tmp_path: Path) -> None:
    manifest = write_synthetic_corpus(
        tmp_path / "c", subjects=4, recordings_per_subject=2, seconds=4, seed=0, stimuli=3
    )
    rows = [line.split(",") for line in manifest.read_text().splitlines()]
    assert rows[0][-1] == "stimulus_id"
    by_stim: dict[str, set[str]] = {}
    for row in rows[1:]:
        assert row[2] == f"audio/{row[5]}.wav"  # listeners of one stimulus hear the same file
        by_stim.setdefault(row[5], set()).add(row[1])
    assert len(by_stim) == 3 and all(len(subjects) >= 2 for subjects in by_stim.values())


def test_subject_and_stimulus_split_shares_no_subject_and_no_stimulus(tmp_path: Path) -> None:
    cfg = config_from_dict(_shared_stimuli_config(tmp_path, "subject_and_stimulus"))
    data = prepare_data(cfg)
    parts = {s: data.recordings[s]["a"] for s in SPLITS}
    assert all(parts[s] for s in SPLITS)
    assert _disjoint(_groups(parts, "subject")) and _disjoint(_groups(parts, "stimulus"))
    # every recording is in one split or counted as dropped, with the reason
    kept = sum(len(v) for v in parts.values())
    assert data.dropped and kept + len(data.dropped) == 24
    summary = data.split_summary()
    assert summary["group_by"] == "subject_and_stimulus" and summary["dropped"] == len(data.dropped)
    assert summary["dropped_by_dataset"] == {"a": len(data.dropped)}
    assert sum(summary["recordings"].values()) == kept
    assert "stimulus 'stim_" in summary["dropped_recordings"][0]["reason"]


def test_stimulus_split_keeps_stimuli_apart_and_drops_nothing(tmp_path: Path) -> None:
    cfg = config_from_dict(_shared_stimuli_config(tmp_path, "stimulus"))
    data = prepare_data(cfg)
    parts = {s: data.recordings[s]["a"] for s in SPLITS}
    assert _disjoint(_groups(parts, "stimulus")) and not data.dropped
    assert not _disjoint(_groups(parts, "subject"))  # listeners do cross splits under this grouping
    # a subject split of the same corpus puts one stimulus in several splits: the leak this prevents
    subj = prepare_data(config_from_dict(_shared_stimuli_config(tmp_path, "subject")))
    by_subject = {s: subj.recordings[s]["a"] for s in SPLITS}
    assert _disjoint(_groups(by_subject, "subject")) and not _disjoint(_groups(by_subject, "stimulus"))


def test_single_listener_stimuli_follow_their_subject() -> None:
    """Without stimulus ids every recording is its own stimulus: subject_and_stimulus is a subject split."""
    recs = [Recording("d", f"p{s}_{i}", f"p{s}", "x.wav", {}) for s in range(10) for i in range(3)]
    both = split_grouped(recs, 0.2, 0.2, seed=0, group_by="subject_and_stimulus")
    by_subject = split_grouped(recs, 0.2, 0.2, seed=0, group_by="subject")
    assert not both.dropped and both.parts == by_subject.parts
    assert stimulus_id(recs[0]) == "recording:p0_0"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_crossed_design_keeps_every_split_non_empty(seed: int) -> None:
    """Every listener hears every song (the hardest case): still no leak, and test/val are not empty."""
    recs = [
        Recording("d", f"p{s}_{k}", f"p{s}", f"{k}.wav", {}, stimulus_id=f"song{k}")
        for s in range(6)
        for k in range(6)
    ]
    split = split_grouped(recs, 0.2, 0.2, seed=seed, group_by="subject_and_stimulus")
    assert all(split.parts[s] for s in SPLITS)
    assert _disjoint(_groups(split.parts, "subject")) and _disjoint(_groups(split.parts, "stimulus"))
    assert sum(len(v) for v in split.parts.values()) + len(split.dropped) == 36
    again = split_grouped(list(reversed(recs)), 0.2, 0.2, seed=seed, group_by="subject_and_stimulus")
    assert {s: {r.recording_id for r in v} for s, v in again.parts.items()} == {
        s: {r.recording_id for r in v} for s, v in split.parts.items()
    }


def test_real_corpus_configs_default_to_subject_and_stimulus() -> None:
    for name in ("pmemo2019", "hku956", "hku956+pmemo2019"):
        assert load_config(REPO / "configs" / f"{name}.yaml").data.split.group_by == "subject_and_stimulus"
    assert load_config(REPO / "configs" / "demo.yaml").data.split.group_by == "subject"


def test_split_setting_changes_the_hash_only_when_set(tmp_path: Path) -> None:
    raw = longer_run(tmp_path)
    plain = config_from_dict(raw).config_hash()
    raw["data"]["split"] = {"group_by": "subject"}  # the default, written out
    raw["data"]["datasets"][0]["synthetic"]["stimuli"] = None
    assert config_from_dict(raw).config_hash() == plain
    raw["data"]["split"] = {"group_by": "stimulus"}
    assert config_from_dict(raw).config_hash() != plain


# ---- the split by hand (#27): counts, and which ranked groups go where ----


@pytest.mark.parametrize(
    ("n", "val", "test", "want"),
    [
        (10, 0.2, 0.2, (6, 2, 2)),
        (10, 0.25, 0.15, (6, 2, 2)),  # rounded: 2.5 -> 2 (banker's), 1.5 -> 2
        (3, 0.05, 0.05, (1, 1, 1)),  # a positive fraction keeps at least one group
        (2, 0.3, 0.3, (1, 1, 0)),  # too few: train keeps one; on a tie test gives way first
        (3, 0.7, 0.2, (1, 1, 1)),  # otherwise the larger of val and test shrinks
        (1, 0.2, 0.2, (1, 0, 0)),
        (8, 0.0, 0.25, (6, 0, 2)),
        (8, 0.0, 0.0, (8, 0, 0)),
    ],
)
def test_split_counts_by_hand(n: int, val: float, test: float, want: tuple[int, int, int]) -> None:
    from a2b_pipeline.data.splits import split_counts

    assert split_counts(n, val, test) == want


def test_test_takes_the_first_ranked_subjects_val_the_next_train_the_rest() -> None:
    from a2b_pipeline.data.splits import rank

    recs = [Recording("d", f"r{s}_{i}", f"p{s}", "a.wav", {}) for s in range(10) for i in range(2)]
    order = sorted({f"p{s}" for s in range(10)}, key=lambda s: rank(7, ("d", s)))
    parts = split_grouped(recs, 0.2, 0.3, seed=7).parts
    who = {k: {r.subject_id for r in v} for k, v in parts.items()}
    assert who == {"test": set(order[:3]), "val": set(order[3:5]), "train": set(order[5:])}
    assert [r.recording_id for r in parts["train"]] == [
        r.recording_id for r in recs if r.subject_id in who["train"]
    ]
