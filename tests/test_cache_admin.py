"""`a2b cache`: the feature cache's size, and least-recently-used pruning that a later run rebuilds from."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
from _util import kill_after, tiny_config

from a2b_pipeline.cli import main
from a2b_pipeline.data import cache_admin, feature_cache
from a2b_pipeline.data.pipeline import prepare_data

DAY = 86400.0


def _windows(tmp_path: Path) -> tuple[list[torch.Tensor], int]:
    """Every training window of the tiny config, and how many entries the run had to build."""
    feature_cache.forget_memory()  # read the disk cache as a new process would
    feature_cache.reset_stats()
    data = prepare_data(tiny_config(tmp_path))
    built = feature_cache.STATS["features_miss"] + feature_cache.STATS["target_miss"]
    return [t for ds in data.splits["train"].values() for i in range(len(ds)) for t in ds[i]], built


def test_usage_and_lru_prune_then_a_run_rebuilds_what_was_pruned(tmp_path: Path, capsys) -> None:
    cache_dir = tiny_config(tmp_path).data.cache_dir
    first, built = _windows(tmp_path)
    found = sorted(cache_admin.entries(cache_dir), key=lambda e: str(e.path))
    assert built == len(found) > 4 and {e.section for e in found} == {"features"}
    assert main(["cache", "--cache-dir", cache_dir]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["features"] == {"entries": len(found), "bytes": sum(e.size for e in found)}

    # the first half was last used three days ago, the rest one day ago
    now, half = time.time(), len(found) // 2
    for i, e in enumerate(found):
        os.utime(e.path, (now - (3 if i < half else 1) * DAY,) * 2)
    keep = sum(e.size for e in found[half:])
    assert main(["cache", "--cache-dir", cache_dir, "--max-gb", str(keep / 1e9), "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["removed"] == half
    assert len(cache_admin.entries(cache_dir)) == len(found)  # a dry run deletes nothing

    report = cache_admin.prune(cache_dir, keep)
    assert sorted(report["removed_paths"]) == sorted(str(e.path) for e in found[:half])
    assert report["bytes_after"] == keep and not report["over_limit_in_use"]
    # entries used within keep_recent_s stay, even over the limit
    report = cache_admin.prune(cache_dir, 0, keep_recent_s=2 * DAY)
    assert report["removed"] == 0 and report["over_limit_in_use"]

    # the next run rebuilds exactly what was pruned, to the same bits, and its hits count as use
    second, rebuilt = _windows(tmp_path)
    assert rebuilt == half
    assert len(first) == len(second) and all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert all(e.used > now - 60 for e in cache_admin.entries(cache_dir))


def test_cache_max_gb_prunes_after_loading_and_keeps_what_the_run_used(tmp_path: Path, caplog) -> None:
    cache_dir = tiny_config(tmp_path).data.cache_dir
    prepare_data(tiny_config(tmp_path, ["data.n_mels=8"]))  # another setting: entries this run won't use
    others = cache_admin.entries(cache_dir)
    for e in others:
        os.utime(e.path, (time.time() - 3 * DAY,) * 2)
    capped = tiny_config(tmp_path, ["data.cache_max_gb=0.000001"])
    assert capped.config_hash() == tiny_config(tmp_path).config_hash()  # a cap changes no result
    with caplog.at_level("INFO", logger="a2b_pipeline"):
        prepare_data(capped)
    left = cache_admin.entries(cache_dir)
    # what this run used stayed (touched just now: targets are shared with the other setting), the rest went
    assert left and all(e.used > time.time() - 60 for e in left)
    gone = {e.path for e in others} - {e.path for e in left}
    assert gone and f"removed {len(gone)} least recently used entries" in caplog.text
    assert "over data.cache_max_gb=1e-06 with entries used in the last hour (kept)" in caplog.text


def test_resuming_with_a_new_cache_cap_continues_the_run_and_applies_it(
    tmp_path: Path, capsys, caplog
) -> None:
    """Settings left out of the config hash (data.cache_max_gb, checkpoint.async_write) keep the run
    directory, and the values given now win over the checkpoint's."""
    cfg_file = tmp_path / "tiny.yaml"
    cfg_file.write_text(tiny_config(tmp_path).to_yaml())
    run = str(tmp_path / "run")
    # an interrupted run (a complete one is reported as it is, without loading data)
    assert kill_after(cfg_file, Path(run), 3) == 3
    again = ["train", str(cfg_file), "--run-dir", run, "--set", "data.cache_max_gb=0.000001"]
    assert main([*again, "--set", "checkpoint.async_write=false"]) == 0
    err = capsys.readouterr().err
    assert f"resuming {Path(run).resolve()} from step 3" in err, err
    assert "over data.cache_max_gb=1e-06 with entries used in the last hour" in caplog.text
