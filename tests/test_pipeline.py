"""data/pipeline.py: normalisation statistics come from the train split only (by hand, and unmoved when a
test recording changes); loaders read train shuffled and val/test in order, weighing every val dataset 1."""

from __future__ import annotations

import csv
from pathlib import Path

import _tiny
import numpy as np
import pytest
import torch

from a2b_pipeline.data.pipeline import make_loader, prepare_data


def _signal(manifest: Path, recording_id: str) -> np.ndarray:
    rows = list(csv.DictReader(manifest.open()))
    path = manifest.parent / next(r["signal_path"] for r in rows if r["recording_id"] == recording_id)
    return np.loadtxt(path, delimiter=",", skiprows=1)[:, 1]


def test_global_statistics_are_the_train_recordings_by_hand(tmp_path: Path) -> None:
    manifest = _tiny.write_corpus(tmp_path / "corpus")
    cfg = _tiny.config(tmp_path, ["data.normalize=global"], manifest)
    data = prepare_data(cfg)
    train = data.recordings["train"]["tiny"]
    assert len(train) == 4
    values = np.concatenate([_signal(manifest, r.recording_id) for r in train])
    assert data.norm.target_mean == pytest.approx([values.mean()], rel=1e-5)
    assert data.norm.target_std == pytest.approx([values.std()], rel=1e-4)
    frames = torch.cat([lr.features for lr in data.splits["train"]["tiny"].loaded]).double()
    np.testing.assert_allclose(data.norm.feature_mean, frames.mean(0).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(data.norm.feature_std, frames.std(0, unbiased=False).numpy(), rtol=1e-4)
    # what a train window holds: the file's values in train units
    x, y = data.splits["train"]["tiny"][0]
    want = (_signal(manifest, train[0].recording_id)[:8] - values.mean()) / values.std()
    np.testing.assert_allclose(y[:, 0].numpy(), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", ["global", "subject"])
def test_statistics_do_not_move_when_a_test_recording_changes(tmp_path: Path, mode: str) -> None:
    manifest = _tiny.write_corpus(tmp_path / "corpus")
    cfg = _tiny.config(tmp_path, [f"data.normalize={mode}"], manifest)
    before = prepare_data(cfg)
    (changed,) = before.recordings["test"]["tiny"][:1]
    path = manifest.parent / f"{changed.recording_id}.csv"
    table = np.loadtxt(path, delimiter=",", skiprows=1)
    table[:, 1] = 100.0 + 10.0 * table[:, 1]
    np.savetxt(path, table, delimiter=",", header="time,eda", comments="", fmt="%.6f")
    after = prepare_data(cfg)
    assert after.recordings == before.recordings
    assert after.norm.feature_mean == before.norm.feature_mean
    assert after.norm.target_mean == before.norm.target_mean
    assert after.norm.target_std == before.norm.target_std
    key = f"tiny/{changed.subject_id}"
    for subject, stats in before.norm.subjects.items():  # subject mode: only that listener's own
        assert (after.norm.subjects[subject] == stats) == (subject != key), subject
    for split in ("train", "val"):
        ds_a, ds_b = before.splits[split]["tiny"], after.splits[split]["tiny"]
        assert all(torch.equal(ds_a[i][1], ds_b[i][1]) for i in range(len(ds_a)))


def test_loaders_shuffle_train_only_and_weigh_val_datasets_equally(tmp_path: Path) -> None:
    cfg = _tiny.config(tmp_path, ["data.datasets.0.weight=3.0"])
    data = prepare_data(cfg)
    for split in ("val", "test"):
        loader = make_loader(data, cfg, split)
        assert loader.weights == [1.0] and loader.split == split
        ds = data.splits[split]["tiny"]
        ys = torch.cat([y for _, y in loader])
        assert torch.equal(ys, torch.stack([ds[i][1] for i in range(len(ds))]))
    train = make_loader(data, cfg, "train")
    assert train.weights == [3.0] and train.split == "train"
    ds = data.splits["train"]["tiny"]
    ys = torch.cat([y for _, y in train])
    in_order = torch.stack([ds[i][1] for i in range(len(ds))])
    assert ys.shape == in_order.shape and not torch.equal(ys, in_order)
    assert torch.equal(ys, torch.cat([y for _, y in make_loader(data, cfg, "train")]))  # seeded
    with pytest.raises(KeyError, match="unknown split"):
        make_loader(data, cfg, "validation")


def test_data_version_follows_files_and_data_settings_not_weights(tmp_path: Path) -> None:
    from a2b_pipeline.data.pipeline import load_norm_stats, save_norm_stats

    manifest = _tiny.write_corpus(tmp_path / "corpus")
    cfg = _tiny.config(tmp_path, [], manifest)
    data = prepare_data(cfg)
    same = prepare_data(_tiny.config(tmp_path, ["data.datasets.0.weight=5", "data.batch_size=3"], manifest))
    assert same.data_version == data.data_version
    assert (
        prepare_data(_tiny.config(tmp_path, ["data.hop_seconds=1"], manifest)).data_version
        != data.data_version
    )
    assert prepare_data(_tiny.config(tmp_path, ["seed=1"], manifest)).data_version != data.data_version
    csv_file = manifest.parent / "s0_r0.csv"
    csv_file.write_text(csv_file.read_text() + "8.0000,1.0\n")
    assert prepare_data(cfg).data_version != data.data_version
    # the statistics saved beside a run are read back for the same data version only
    save_norm_stats(data, tmp_path / "run")
    assert load_norm_stats(tmp_path / "run", data.data_version) == data.norm
    assert load_norm_stats(tmp_path / "run", "other") is None
