"""Sweeps: a YAML file expanding to many experiments with stable names and config hashes (`a2b sweep`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from _util import REPO, longer_run, run_cli

from a2b_pipeline.configs import ConfigError, apply_overrides, config_from_dict, load_config
from a2b_pipeline.experiments.sweeps import load_sweep, sweep_experiments, sweep_files
from a2b_pipeline.state import TrainState


def _write(path: Path, doc: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _two_by_two(tmp_path: Path, base: str | dict = "../base.yaml") -> Path:
    _write(tmp_path / "configs" / "base.yaml", longer_run(tmp_path))
    return _write(
        tmp_path / "configs" / "sweeps" / "lr_bs.yaml",
        {"base": base, "grid": {"optimizer.lr": [0.001, 0.003], "data.batch_size": [4, 8]}},
    )


def test_grid_2x2_expands_to_four_named_experiments_with_their_own_hashes(tmp_path: Path) -> None:
    sweep = load_sweep(_two_by_two(tmp_path))
    names = [e.name for e in sweep.experiments]
    assert names == [
        "lr_bs.lr-0.001+batch_size-4",
        "lr_bs.lr-0.001+batch_size-8",
        "lr_bs.lr-0.003+batch_size-4",
        "lr_bs.lr-0.003+batch_size-8",
    ]
    # Each config is the base with exactly its overrides (and its own name), nothing else.
    base = longer_run(tmp_path)
    for e in sweep.experiments:
        lr, bs = e.overrides["optimizer.lr"], e.overrides["data.batch_size"]
        expected = config_from_dict(
            apply_overrides(json.loads(json.dumps(base)), [f"optimizer.lr={lr}", f"data.batch_size={bs}"])
        ).model_copy(update={"name": e.name})
        assert e.config == expected
        assert e.config_hash == expected.config_hash()
    assert len({e.config_hash for e in sweep.experiments}) == 4


def test_names_are_stable_when_the_base_or_the_value_order_changes(tmp_path: Path) -> None:
    first = {e.name: e.config_hash for e in load_sweep(_two_by_two(tmp_path)).experiments}
    # Reordered values, and an edited base: the same names; the hashes follow the content.
    raw = longer_run(tmp_path)
    raw["train"]["max_steps"] = 99
    _write(tmp_path / "configs" / "base.yaml", raw)
    _write(
        tmp_path / "configs" / "sweeps" / "lr_bs.yaml",
        {"base": "../base.yaml", "grid": {"optimizer.lr": [0.003, 0.001], "data.batch_size": [8, 4]}},
    )
    second = {e.name: e.config_hash for e in load_sweep(tmp_path / "configs/sweeps/lr_bs.yaml").experiments}
    assert set(second) == set(first)
    assert all(second[n] != first[n] for n in first)


def test_inline_base_labelled_axes_and_variants(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "s.yaml",
        {
            "name": "strat",
            "base": longer_run(tmp_path),
            "set": {"train.max_steps": 3},
            "grid": {
                "model": {"gru": {"name": "conv_gru", "hidden": 8}, "tcn": {"name": "tcn", "channels": 8}}
            },
            "variants": [
                {"name": "mse", "set": {"train.loss.terms": [{"name": "mse"}]}},
                {"set": {"train.loss.terms": [{"name": "ccc"}], "data.datasets.1.weight": 2.0}},
            ],
        },
    )
    exps = load_sweep(path).experiments
    assert [e.name for e in exps] == [
        "strat.mse+gru",
        "strat.mse+tcn",
        "strat.ccc+weight-2.0+gru",
        "strat.ccc+weight-2.0+tcn",
    ]
    by = {e.name: e.config for e in exps}
    assert by["strat.mse+tcn"].model.name == "tcn" and by["strat.mse+tcn"].model.channels == 8
    assert by["strat.ccc+weight-2.0+gru"].data.datasets[1].weight == 2.0
    assert by["strat.ccc+weight-2.0+gru"].train.loss.terms[0].name == "ccc"
    assert all(c.train.max_steps == 3 for c in by.values())


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"base": "../base.yaml"}, "needs `grid` or `variants`"),
        ({"base": "../base.yaml", "grid": {"optimizer.lr": [0.001]}, "sweep": 1}, "sweep: unknown key"),
        ({"base": "../nope.yaml", "grid": {"optimizer.lr": [0.001]}}, "base config not found"),
        ({"base": "../base.yaml", "grid": {"optimizer.lr": [-1.0]}}, "experiment bad.lr--1.0"),
        ({"base": "../base.yaml", "grid": {"model.hiden": [3]}}, "model.conv_gru.hiden: unknown key"),
        (
            {"base": "../base.yaml", "grid": {"optimizer.lr": [0.001], "scheduler.min_lr_ratio": [0.001]}},
            None,
        ),
        (
            {
                "base": "../base.yaml",
                "variants": [{"set": {"optimizer.lr": 0.1}}, {"set": {"optimizer.lr": 0.1}}],
            },
            "two experiments are both named 'bad.lr-0.1'",
        ),
    ],
)
def test_bad_sweeps_fail_naming_the_file_and_field(tmp_path: Path, doc: dict, message: str | None) -> None:
    _write(tmp_path / "configs" / "base.yaml", longer_run(tmp_path))
    path = _write(tmp_path / "configs" / "sweeps" / "bad.yaml", doc)
    if message is None:  # the control: a valid sweep loads
        assert len(load_sweep(path).experiments) == 1
        return
    with pytest.raises(ConfigError) as err:
        load_sweep(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_shipped_sweeps_expand_to_valid_distinct_experiments() -> None:
    exps = sweep_experiments(REPO / "configs")
    files = {p.stem for p in sweep_files(REPO / "configs")}
    assert {"architectures", "strategy"} <= files
    assert {e.name for e in exps.values() if e.sweep == "architectures"} == {
        "architectures.conv_gru",
        "architectures.tcn",
        "architectures.transformer",
    }
    strategy = [e for e in exps.values() if e.sweep == "strategy"]
    assert len(strategy) == 6
    assert {e.config.train.loss.terms[0].name for e in strategy} == {"mse", "ccc"}
    assert {e.config.data.datasets[1].weight for e in strategy} == {1.0, 3.0}
    assert len({e.config_hash for e in exps.values()}) == len(exps)
    # An experiment's config is the demo config with its overrides: same data, same training length.
    demo = load_config(REPO / "configs" / "demo.yaml")
    for e in exps.values():
        assert e.config.data.channels == demo.data.channels
        assert e.config.train.max_steps == demo.train.max_steps


def test_cli_lists_writes_and_trains_a_sweep_resumably(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "sweeps" / "lrs.yaml",
        {
            "base": longer_run(tmp_path),
            "set": {"train.max_steps": 4, "train.val_every_n_steps": 2, "checkpoint.every_n_steps": 2},
            "grid": {"optimizer.lr": [0.001, 0.01]},
        },
    )
    listed = json.loads(run_cli("sweep", str(path), "--json").stdout)
    names = [e["name"] for e in listed["experiments"]]
    assert names == ["lrs.lr-0.001", "lrs.lr-0.01"]
    table = run_cli("sweep", str(path)).stdout
    for e in listed["experiments"]:
        assert f"{e['name']}" in table and e["config_hash"] in table

    out = tmp_path / "expanded"
    run_cli("sweep", str(path), "--write-configs", str(out))
    for e in listed["experiments"]:
        assert load_config(out / f"{e['name']}.yaml").config_hash() == e["config_hash"]

    first = run_cli("sweep", str(path), "--train", "--only", "lrs.lr-0.01")
    lines = [ln.split("\t") for ln in first.stdout.splitlines() if "\t" in ln]
    assert [(n, s) for n, s, _ in lines] == [("lrs.lr-0.01", "complete")]
    state = TrainState.from_checkpoint(Path(lines[0][2]))
    assert state.config.optimizer.lr == 0.01 and state.global_step == 4
    assert Path(lines[0][2]).name == f"lrs.lr-0.01-{listed['experiments'][1]['config_hash']}"
    # Again, for the whole sweep: the finished run is reported as it is (nothing trained), the other trained.
    second = run_cli("sweep", str(path), "--train")
    assert f"{lines[0][2]} is complete (step 4" in second.stderr, second.stderr
    done = [ln.split("\t")[:2] for ln in second.stdout.splitlines() if "\t" in ln]
    assert done == [["lrs.lr-0.001", "complete"], ["lrs.lr-0.01", "complete"]]
    bad = run_cli("sweep", str(path), "--only", "lrs.nope", check=False)
    assert bad.returncode == 2 and "no experiment lrs.nope" in bad.stderr
