"""A run's life (runs.py's table, README "A run's life") through every entry point: `a2b train`,
`a2b sweep --train`, `a2b cv`, and Dagster's training_run. The same situation gets the same answer:

start -> complete reported -> unreadable newest checkpoint skipped, named and kept aside, resumed from the
older -> nothing readable: refused, naming each -> fresh: a new run directory, the earlier untouched ->
another process holds the run: refused. Plus: another config in a run directory is refused, and a run
stopped by a non-finite loss writes the stop down; its resume says why and what to change.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from _util import tiny_config
from dagster import AssetKey, DagsterInstance, materialize

from a2b_pipeline.checkpoint.directory import list_checkpoints
from a2b_pipeline.cli import main
from a2b_pipeline.runs import STOP_FILE, UNREADABLE
from a2b_pipeline.state import TrainState

QUICK = [
    "train.max_steps=4",
    "checkpoint.every_n_steps=2",
    "train.val_every_n_steps=2",
    "train.log_every_n_steps=2",
]


def _files(run: Path) -> dict[str, str]:
    return {
        str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(run.rglob("*"))
        if p.is_file() and not p.is_symlink() and p.name != ".a2b-lock"
    }


def _corrupt(ckpt: Path) -> None:
    weights = ckpt / "model.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 0xFF
    weights.write_bytes(bytes(blob))


class Entry:
    """One way in: `launch(fresh)` -> (succeeded, what it said); `base` is the run's first directory."""

    name: str
    base: Path

    def launch(self, fresh: bool = False) -> tuple[bool, str]:
        raise NotImplementedError


class Cli(Entry):
    def __init__(self, io: tuple[Any, Any], args: Callable[[bool], list[str]], base: Path, name: str):
        (self.capsys, self.caplog), self.args, self.base, self.name = io, args, base, name

    def launch(self, fresh: bool = False) -> tuple[bool, str]:
        self.caplog.clear()
        code = main(self.args(fresh))
        out = self.capsys.readouterr()
        assert code in (0, 2), (code, out.err)
        return code == 0, out.out + out.err + self.caplog.text  # `a2b cv` says it through logging


def _cli_entry(tmp: Path, io: tuple[Any, Any]) -> Entry:
    cfg = tiny_config(tmp, ["name=life", *QUICK])
    path = tmp / "life.yaml"
    path.write_text(cfg.to_yaml())
    base = Path(cfg.checkpoint.dir).resolve() / f"life-{cfg.config_hash()}"
    return Cli(io, lambda fresh: ["train", str(path), *(["--fresh"] if fresh else [])], base, "cli")


def _sweep_entry(tmp: Path, io: tuple[Any, Any]) -> Entry:
    (tmp / "base.yaml").write_text(tiny_config(tmp, ["name=base", *QUICK]).to_yaml())
    sweep = tmp / "life.yaml"
    sweep.write_text(yaml.safe_dump({"base": "base.yaml", "grid": {"optimizer.lr": {"lr3": 0.003}}}))
    from a2b_pipeline.experiments.sweeps import load_sweep

    (exp,) = load_sweep(sweep).experiments
    base = Path(exp.config.checkpoint.dir).resolve() / f"{exp.name}-{exp.config_hash}"
    args = lambda fresh: ["sweep", str(sweep), "--train", *(["--fresh"] if fresh else [])]  # noqa: E731
    return Cli(io, args, base, "sweep")


def _cv_entry(tmp: Path, io: tuple[Any, Any]) -> Entry:
    from a2b_pipeline.runs import cv_dir

    cfg = tiny_config(tmp, ["name=life", "data.split.folds=2", *QUICK])
    path = tmp / "life.yaml"
    path.write_text(cfg.to_yaml())
    base = cv_dir(cfg).resolve() / "fold-0"
    args = lambda fresh: ["cv", str(path), "--fold", "0", *(["--fresh"] if fresh else [])]  # noqa: E731
    return Cli(io, args, base, "cv")


class Dagster(Entry):
    name = "dagster"

    def __init__(self, tmp: Path):
        from a2b_pipeline.defs.assets import ASSETS, experiments
        from a2b_pipeline.defs.resources import ExperimentStore, TrainDevice, WandbTracking

        configs = tmp / "configs"
        configs.mkdir()
        (configs / "life.yaml").write_text(tiny_config(tmp, ["name=life", *QUICK]).to_yaml())
        self.assets = ASSETS
        self.resources = {
            "store": ExperimentStore(data_root=str(tmp / "data"), configs_dir=str(configs)),
            "tracking": WandbTracking(mode="disabled"),
            "compute": TrainDevice(device="cpu"),
        }
        self.instance = DagsterInstance.ephemeral()
        self.instance.add_dynamic_partitions(experiments.name, ["life"])
        data = ["corpus_manifest", "dataset_splits", "meta_loader_spec"]
        assert self._materialize(data, {}).success
        from a2b_pipeline.defs.common import load_experiment

        exp = load_experiment(
            "life", self.resources["store"], self.resources["tracking"], self.resources["compute"]
        )
        from a2b_pipeline.defs.common import upstream_record

        class _Ctx:
            instance = self.instance
            partition_key = "life"

        self.base = exp.run_dir(upstream_record(_Ctx, "dataset_splits")["data_version"]).resolve()

    def _materialize(self, assets: list[str], run_config: dict, tags: dict | None = None) -> Any:
        return materialize(
            [*self.assets],
            tags=tags,
            instance=self.instance,
            resources=self.resources,
            partition_key="life",
            selection=[AssetKey(a) for a in assets],
            run_config=run_config,
            raise_on_error=False,
        )

    def launch(self, fresh: bool = False, tags: dict | None = None) -> tuple[bool, str]:
        config = {"ops": {"training_run": {"config": {"fresh": fresh}}}}
        res = self._materialize(["training_run"], config, tags)
        said = [
            e.user_message for e in self.instance.all_logs(res.run_id)
        ]  # the run's log, as the UI shows it
        failures = [str(e.step_failure_data.error.message) for e in res.all_events if e.is_step_failure]
        return res.success, "\n".join(said + failures)


ENTRIES = {
    "cli": _cli_entry,
    "sweep": _sweep_entry,
    "cv": _cv_entry,
    "dagster": lambda tmp, capsys: Dagster(tmp),
}


def _hold_in_another_process(run: Path) -> subprocess.Popen[str]:
    code = textwrap.dedent(
        f"""
        import sys, time
        from a2b_pipeline.checkpoint.lock import hold_run_dir
        with hold_run_dir({str(run)!r}):
            print("held", flush=True)
            time.sleep(120)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


@pytest.mark.parametrize("entry_name", list(ENTRIES))
def test_every_row_of_the_lifecycle_table_through_each_entry_point(entry_name, tmp_path, capsys, caplog):
    caplog.set_level(logging.INFO, logger="a2b_pipeline")
    entry = ENTRIES[entry_name](tmp_path, (capsys, caplog))
    base = entry.base

    # nothing there: a new run
    ok, said = entry.launch()
    assert ok, said
    assert [p.name for p in list_checkpoints(base)] == ["step_000000002", "step_000000004"]
    assert TrainState.from_checkpoint(base).status == "complete"

    # a complete run: reported as it is, nothing trained or written
    done = _files(base)
    ok, said = entry.launch()
    assert ok and "is complete (step 4" in said and "nothing trained" in said, said
    assert _files(base) == done

    # an unreadable newest checkpoint: named, kept aside (never trained over), resumed from the older one
    _corrupt(base / "step_000000004")
    ok, said = entry.launch()
    assert ok, said
    assert f"checkpoint {base / 'step_000000004'} does not verify" in said, said
    assert f"kept as {base / (UNREADABLE + 'step_000000004')}" in said, said
    assert "resuming" in said and "from step 2" in said, said
    assert (base / f"{UNREADABLE}step_000000004" / "model.safetensors").is_file()
    assert TrainState.from_checkpoint(base).status == "complete"

    # nothing readable: refused, naming each checkpoint; nothing changes
    for ckpt in list_checkpoints(base):
        _corrupt(ckpt)
    before = _files(base)
    ok, said = entry.launch()
    assert not ok and "no checkpoint here can be read" in said, said
    assert all(str(c) in said for c in list_checkpoints(base)), said
    assert f"{base}.attempt-2" in said  # where a fresh launch would go
    assert _files(base) == before

    # fresh: a new run directory beside it; the earlier one stays as it was
    ok, said = entry.launch(fresh=True)
    assert ok, said
    fresh = Path(f"{base}.attempt-2")
    assert TrainState.from_checkpoint(fresh).status == "complete"
    assert _files(base) == before

    # another process works there: refused, naming it; nothing changes
    holder = _hold_in_another_process(base)
    try:
        ok, said = entry.launch(fresh=True)
    finally:
        holder.kill()
        holder.wait()
    assert not ok and "is in use by pid" in said and str(base) in said, said
    assert not Path(f"{base}.attempt-3").exists()


def test_a_run_directory_of_another_config_is_refused_naming_both(tmp_path, capsys):
    a = tiny_config(tmp_path, ["name=a", *QUICK])
    b = tiny_config(tmp_path, ["name=a", *QUICK, "optimizer.lr=0.01"])
    (tmp_path / "a.yaml").write_text(a.to_yaml())
    (tmp_path / "b.yaml").write_text(b.to_yaml())
    run = tmp_path / "run"
    assert main(["train", str(tmp_path / "a.yaml"), "--run-dir", str(run)]) == 0
    before = _files(run)
    code = main(["train", str(tmp_path / "b.yaml"), "--run-dir", str(run)])
    err = capsys.readouterr().err
    assert code == 2 and a.config_hash() in err and b.config_hash() in err, err
    assert _files(run) == before


# ---- a stop by a non-finite loss: written down, and its resume says why ----


def _nan_from(step: int) -> Callable[[torch.nn.Module, TrainState], None]:
    def hook(model: torch.nn.Module, state: TrainState) -> None:
        def forward_hook(module: torch.nn.Module, args: Any, output: Any) -> Any:
            if module.training and state.global_step >= step:
                return output * float("nan")
            return output

        model.register_forward_hook(forward_hook)

    return hook


NAN_FROM_STEP_3 = _nan_from(2)  # steps 1-2 are good, step 3 is not (A2B_MODEL_HOOKS names it)


def test_a_non_finite_stop_is_written_down_and_its_resume_says_why(tmp_path, capsys, monkeypatch):
    cfg = tiny_config(tmp_path, ["name=nan", *QUICK])
    path = tmp_path / "nan.yaml"
    path.write_text(cfg.to_yaml())
    run = tmp_path / "run"
    monkeypatch.setenv("A2B_MODEL_HOOKS", f"{__name__}:NAN_FROM_STEP_3")
    code = main(["train", str(path), "--run-dir", str(run)])
    monkeypatch.delenv("A2B_MODEL_HOOKS")
    err = capsys.readouterr().err
    assert code == 3 and "non-finite loss" in err, err
    # on disk: the stop (why and where), beside the last good checkpoint, which is not rewritten
    stop = TrainState.from_json((run / STOP_FILE).read_text())
    assert (
        stop.status == "stopped"
        and stop.stop_reason == "non_finite_loss"
        and "lower the learning rate" in stop.message
    )
    good = TrainState.from_checkpoint(run)
    assert good.global_step == 2 and good.status == "in_progress"
    from a2b_pipeline.experiments.leaderboard import row_from_run_dir

    row = row_from_run_dir(run)  # the leaderboard says it too
    assert row.status == "stopped" and "non-finite loss" in row.note, row

    code = main(["resume", str(run)])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "this run stopped at step 4 (non_finite_loss)" in err and "change what caused it first" in err, err
    assert TrainState.from_checkpoint(run).status == "complete"
    assert not (run / STOP_FILE).exists()  # the run went on past it


def test_a_non_finite_stop_under_dagster_fails_saying_why_and_what_to_change(tmp_path, monkeypatch):
    entry = Dagster(tmp_path)
    monkeypatch.setenv("A2B_MODEL_HOOKS", f"{__name__}:NAN_FROM_STEP_3")  # read by runs.py under Dagster too
    ok, said = entry.launch()
    assert not ok
    assert "training stopped at step 4 (non_finite_loss)" in said and "lower the learning rate" in said, said
    assert "change what caused the stop first" in said, said
    assert (entry.base / STOP_FILE).is_file()


def test_a_retried_fresh_launch_continues_its_own_new_directory(tmp_path):
    """Dagster re-executes a failed run (run retries, a dead container) with the same config: `fresh: true`
    again. The retry continues the directory its launch started, not yet another one."""
    entry = Dagster(tmp_path)
    assert entry.launch()[0]
    first = {"dagster/root_run_id": "launch-1", "dagster/parent_run_id": "launch-1"}
    ok, said = entry.launch(fresh=True, tags=first)
    assert ok and f"training in {entry.base}.attempt-2" in said, said
    ok, said = entry.launch(fresh=True, tags=first)  # its retry
    assert ok and f"{entry.base}.attempt-2 is complete" in said, said
    ok, said = entry.launch(fresh=True, tags={"dagster/root_run_id": "launch-2"})  # a new fresh launch
    assert ok and f"training in {entry.base}.attempt-3" in said, said
