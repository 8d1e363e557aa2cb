"""The leaderboard from run directories alone (`a2b leaderboard RUNS_DIR`): evaluated runs, CV summaries,
and runs that failed or were never evaluated, each shown as such."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import yaml
from _util import longer_run, run_cli

from a2b_pipeline.experiments import leaderboard
from a2b_pipeline.state import TrainState


def _config(tmp_path: Path, name: str, **data_split: int) -> Path:
    raw = longer_run(tmp_path)
    raw["name"] = name
    raw["train"].update({"max_steps": 2, "val_every_n_steps": 2})
    raw["checkpoint"].update({"every_n_steps": 2})
    if data_split:
        raw["data"]["split"] = data_split
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_leaderboard_cli_lists_cv_runs_and_marks_failed_and_unevaluated(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    summary = json.loads(run_cli("cv", str(_config(tmp_path, "crossval", folds=2)), "--json").stdout)
    plain = Path(run_cli("train", str(_config(tmp_path, "plain"))).stdout.strip().splitlines()[-1])
    broken = Path(run_cli("train", str(_config(tmp_path, "broken"))).stdout.strip().splitlines()[-1])
    scored = Path(run_cli("train", str(_config(tmp_path, "scored"))).stdout.strip().splitlines()[-1])
    report = json.loads(run_cli("evaluate", str(scored), "--json").stdout)
    # a checkpoint whose weights no longer match their checksum: the run can't be read back
    state = TrainState.from_checkpoint(broken)
    weights = Path(state.last_checkpoint) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)

    out = tmp_path / "board.csv"
    proc = run_cli("leaderboard", str(runs), "--csv", str(out))
    table = proc.stdout
    rows = {r["experiment"]: r for r in csv.DictReader(io.StringIO(out.read_text()))}
    assert set(rows) == {"crossval", "plain", "broken", "scored"}  # the CV's folds are inside its row

    cv = rows["crossval"]
    assert cv["kind"] == "cv (2 folds)" and cv["status"] == "evaluated"
    st = summary["stats"]["model/recording/pearson/mean"]
    assert float(cv["pearson_mean"]) == st["mean"]
    assert float(cv["pearson_mean_low"]) == st["mean"] - st["std"]
    margin = summary["stats"]["margin/audio_linear/recording/pearson/mean"]
    assert float(cv["margin_audio_linear"]) == margin["mean"]

    # an evaluated run: the report's whole-recording metric per channel with its interval, and margins
    row, model = rows["scored"], report["summary"]["predictors"]["model"]["recording"]["pearson"]
    assert row["status"] == "evaluated" and row["level"] == "recording"
    for ch in ("eda", "hr", "mean"):
        assert float(row[f"pearson_{ch}"]) == model[ch]["value"]
        assert float(row[f"pearson_{ch}_high"]) == model[ch]["ci_high"]
    margins = report["summary"]["margins"]
    assert set(margins) == {"constant", "other_listeners", "audio_linear"}
    for baseline, levels in margins.items():  # undefined ones (r of a constant) stay empty, never 0
        cell = row[f"margin_{baseline}"]
        assert (float(cell) if cell else None) == levels["recording"]["pearson"]["mean"]["value"]
    assert row["checkpoint"] == report["checkpoint"] and row["steps"] == "2"
    assert cv["config_hash"] == summary["config_hash"] and cv["model"] == "conv_gru"

    assert rows["plain"]["status"] == "not evaluated" and rows["plain"]["steps"] == "2"
    assert rows["plain"]["config_hash"] == TrainState.from_checkpoint(plain).config_hash
    assert rows["broken"]["status"] == "failed" and "model.safetensors" in rows["broken"]["note"]
    # The Markdown table says the same: every experiment, its status, the failed one in bold.
    for name in rows:
        assert f"| {name} |" in table
    assert "**failed**" in table and "**not evaluated**" in table and "better than audio_linear by" in table
    assert (
        f"{model['eda']['value']:.3f} [{model['eda']['ci_low']:.3f}, {model['eda']['ci_high']:.3f}]" in table
    )
    assert leaderboard.plot(leaderboard.rows_from_runs_dir(runs))[:8] == b"\x89PNG\r\n\x1a\n"

    # ranked by an error: lowest first; the rows without an evaluation last
    by_mae = list(
        csv.DictReader(
            io.StringIO(run_cli("leaderboard", str(runs), "--metric", "mae", "--format", "csv").stdout)
        )
    )
    evaluated = [float(r["mae_mean"]) for r in by_mae if r["status"] == "evaluated"]
    assert len(evaluated) == 2 and evaluated == sorted(evaluated)
    assert [r["status"] for r in by_mae][2:] and all(r["status"] != "evaluated" for r in by_mae[2:])

    empty = run_cli("leaderboard", str(tmp_path / "nothing"), check=False)
    assert empty.returncode == 1 and "no run directories" in empty.stderr
