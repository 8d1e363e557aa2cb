"""configs.py: defaults, every cross-field check at its exact boundary (with the field named), the weight
schedule, the config hash by hand, overrides, and the bounded reading of config files."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from a2b_pipeline.configs import (
    MAX_CONFIG_BYTES,
    ConfigError,
    RunConfig,
    apply_overrides,
    check_expanded_size,
    check_paths,
    config_from_dict,
    load_config,
    map_paths,
    parse_yaml,
    read_config_text,
    read_yaml_mapping,
    short_repr,
    with_run_settings,
)

BASE: dict[str, Any] = {"data": {"datasets": [{"name": "a", "manifest": "m.csv"}]}}


def _cfg(*overrides: str, raw: dict[str, Any] | None = None) -> RunConfig:
    return config_from_dict(apply_overrides(copy.deepcopy(raw or BASE), list(overrides)))


def _refused(match: str, *overrides: str, raw: dict[str, Any] | None = None) -> None:
    with pytest.raises(ConfigError, match=match):
        _cfg(*overrides, raw=raw)


def test_defaults() -> None:
    cfg = _cfg()
    d = cfg.data
    assert (d.batch_size, d.num_workers, d.sample_rate, d.n_mels) == (16, 0, 16000, 32)
    assert (d.frame_rate, d.target_rate, d.window_seconds, d.hop_seconds) == (50.0, 4.0, 8.0, 4.0)
    assert (d.normalize, d.val_fraction, d.test_fraction, d.channels) == ("subject", 0.2, 0.2, ["eda"])
    assert (d.on_bad_recording, d.duration_tolerance_seconds, d.split.group_by) == ("error", 1.0, "subject")
    assert (d.allow_outside_paths, d.url_schemes, d.datasets[0].weight, d.datasets[0].type) == (
        False,
        [],
        1.0,
        "manifest",
    )
    t, c = cfg.train, cfg.checkpoint
    assert (t.grad_clip, t.device, t.log_every_n_steps, t.deterministic, t.ema_decay) == (
        1.0,
        "auto",
        10,
        True,
        None,
    )
    assert (c.dir, c.keep_last, c.metric, c.mode, c.every_n_steps) == ("runs", 2, "val/pearson", "max", None)
    assert (cfg.name, cfg.seed, cfg.model.name, cfg.tracking.wandb_mode) == ("run", 0, "conv_gru", "offline")
    assert (cfg.optimizer.lr, cfg.scheduler.plateau_factor, cfg.scheduler.min_lr_ratio) == (1e-3, 0.5, 0.1)


def test_data_checks_at_their_boundaries() -> None:
    _cfg("data.val_fraction=0.5", "data.test_fraction=0.49")
    _refused(
        r"val_fraction \+ test_fraction must be < 1, got 0.5 \+ 0.5",
        "data.val_fraction=0.5",
        "data.test_fraction=0.5",
    )
    two = {"data": {"datasets": [{"name": "a", "manifest": "m"}, {"name": "a", "manifest": "n"}]}}
    _refused(r"dataset names must be unique, got \['a', 'a'\]", raw=two)
    _refused("all weights are zero", "data.datasets.0.weight=0")
    _refused(
        r"weight_schedule.0.weights has 2 weights for 1 datasets",
        "data.weight_schedule=[{step: 3, weights: [1, 2]}]",
    )
    _refused(
        r"weight_schedule.0.weights must be finite and not all zero",
        "data.weight_schedule=[{step: 3, weights: [0]}]",
    )
    _refused(
        r"steps must increase, got \[5, 2\]",
        "data.weight_schedule=[{step: 5, weights: [1]}, {step: 2, weights: [2]}]",
    )
    _cfg("data.weight_schedule=[{step: 2, weights: [1]}, {step: 2, weights: [2]}]")
    _refused(r"channels must be unique, got \['eda', 'eda'\]", "data.channels=[eda, eda]")
    _refused(r"data.channels: .*at least 1", "data.channels=[]")
    _refused(r"data.datasets.0.name", "data.datasets.0.name=a/b")


def test_grid_checks_at_their_boundaries() -> None:
    _cfg("data.window_seconds=0.13")  # 0.52 target samples: rounds to one
    _refused(
        r"target_rate=4 Hz gives no target sample in a window of window_seconds=0.12",
        "data.window_seconds=0.12",
    )
    _refused(
        r"frame_rate=1 gives no frame",
        "data.frame_rate=1",
        "data.target_rate=10",
        "data.window_seconds=0.4",
        "data.hop_seconds=1",
    )
    _cfg("data.sample_rate=1000", "data.frame_rate=500", "data.hop_seconds=0.5")
    _refused(
        r"frame_rate=500.5 is above half of sample_rate=1000",
        "data.sample_rate=1000",
        "data.frame_rate=500.5",
    )
    _cfg("data.hop_seconds=0.02")  # one frame at 50 fps
    _refused(r"hop_seconds=0.019 is finer than the finest grid step \(0.02 s", "data.hop_seconds=0.019")
    _refused(
        r"hop_seconds=0.049 is finer than the finest grid step \(0.05 s",
        "data.frame_rate=4",
        "data.target_rate=20",
        "data.hop_seconds=0.049",
    )
    # batch_size x frames x n_mels: 2**28 exactly is the limit
    _cfg(
        "data.batch_size=1024",
        "data.window_seconds=128",
        "data.frame_rate=64",
        "data.n_mels=32",
        "data.hop_seconds=1",
    )
    _refused(
        r"a batch of features is 2.69e\+08 values \(batch_size=1025 x 8192 frames x n_mels=32\)",
        "data.batch_size=1025",
        "data.window_seconds=128",
        "data.frame_rate=64",
        "data.n_mels=32",
        "data.hop_seconds=1",
    )


def test_weights_at_follows_the_schedule() -> None:
    two = {
        "data": {"datasets": [{"name": "a", "manifest": "m", "weight": 3}, {"name": "b", "manifest": "n"}]}
    }
    cfg = _cfg("data.weight_schedule=[{step: 10, weights: [1, 0]}, {step: 20, weights: [0, 5]}]", raw=two)
    assert [cfg.data.weights_at(s) for s in (0, 9, 10, 19, 20, 1000)] == [
        [3.0, 1.0],
        [3.0, 1.0],
        [1.0, 0.0],
        [1.0, 0.0],
        [0.0, 5.0],
        [0.0, 5.0],
    ]


def test_other_sections_checks() -> None:
    _cfg("data.split.folds=3", "data.split.fold=2")
    _refused(r"split.fold=3 needs split.folds > 3 \(got 3\)", "data.split.folds=3", "data.split.fold=3")
    _refused(r"split.fold=0 needs split.folds > 0 \(got None\)", "data.split.fold=0")
    _refused(r"data.split.folds: .*greater than or equal to 2", "data.split.folds=1")
    _refused(r"train: set max_steps or num_epochs", "train.max_steps=null", "train.num_epochs=null")
    _refused(
        r"checkpoint.metric must be a validation metric 'val/<name>', got 'train/loss'",
        "checkpoint.metric=train/loss",
    )
    _refused(
        r"d_model \(10\) must be divisible by heads \(4\)", "model={name: transformer, d_model: 10, heads: 4}"
    )
    _refused(r"channel_weights has 2 weights for 1 channels", "train.loss.channel_weights=[1, 2]")
    _cfg("train.loss.channel_weights=[1, 2]", "data.channels=[eda, hr]")
    _refused(r"model.conv_gru.dropout: .*less than 1", "model={name: conv_gru, dropout: 1.0}")
    _refused(r"train.ema_decay: .*less than 1", "train.ema_decay=1")
    _refused(r"data.datasets.0.weight", "data.datasets.0.weight=.inf")
    _refused(r"  nonsense: unknown key \(typo\?\)", "nonsense=1")


def _hand_hash(cfg: RunConfig) -> str:
    dump = cfg.model_dump(mode="json")
    del dump["checkpoint"]["async_write"], dump["data"]["cache_max_gb"]
    for key in ("split", "allow_outside_paths", "url_schemes"):
        del dump["data"][key]  # at their defaults
    for ds in dump["data"]["datasets"]:  # a type's own options; every dataset had them at their defaults
        ds.setdefault("synthetic", {"subjects": 6, "recordings_per_subject": 3, "seconds": 30.0, "seed": 0})
        ds["synthetic"].pop("stimuli", None)
        ds.setdefault("audio_dir", None)
        ds.setdefault("signal_rates", {})
    return hashlib.sha256(json.dumps(dump, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def test_config_hash_by_hand() -> None:
    cfg = _cfg()
    assert cfg.config_hash() == _hand_hash(cfg)
    assert _cfg("checkpoint.async_write=false", "data.cache_max_gb=3").config_hash() == cfg.config_hash()
    changed = {
        _cfg(o).config_hash()
        for o in (
            "optimizer.lr=0.01",
            "seed=1",
            "data.split.group_by=stimulus",
            "data.url_schemes=[s3]",
            "data.allow_outside_paths=true",
        )
    }
    assert len(changed) == 5 and cfg.config_hash() not in changed
    resumed = with_run_settings(
        cfg, _cfg("checkpoint.async_write=false", "data.cache_max_gb=3", "optimizer.lr=0.5")
    )
    assert (resumed.checkpoint.async_write, resumed.data.cache_max_gb, resumed.optimizer.lr) == (
        False,
        3.0,
        1e-3,
    )
    assert config_from_dict(yaml.safe_load(cfg.to_yaml())) == cfg


def test_a_corpus_types_options_are_its_own_and_old_dumps_still_load() -> None:
    """Every dataset once carried the synthetic and HKU956 options; a config (or a checkpoint's stored
    config) written then loads the same, and its hash (the run directory's name) is unchanged."""
    old = {"synthetic": {"subjects": 6, "recordings_per_subject": 3, "seconds": 30.0, "seed": 0}}
    old |= {"audio_dir": None, "signal_rates": {}}
    cfg = _cfg()
    raw = copy.deepcopy(BASE)
    raw["data"]["datasets"][0] |= {**old, "synthetic": {**old["synthetic"], "stimuli": None}}
    assert _cfg(raw=raw) == cfg and _cfg(raw=raw).config_hash() == cfg.config_hash() == _hand_hash(cfg)
    assert set(yaml.safe_load(cfg.to_yaml())["data"]["datasets"][0]).isdisjoint(old)  # no longer written
    hku = _cfg(*_hku(), "data.datasets.0.audio_dir=songs")
    assert (
        type(hku.data.datasets[0]).__name__ == "HKU956Dataset" and hku.data.datasets[0].audio_dir == "songs"
    )
    assert not hasattr(cfg.data.datasets[0], "audio_dir")
    _refused(
        r"data.datasets.0.signal_rates.eda: Input should be greater than 0",
        *_hku(),
        "data.datasets.0.signal_rates.eda=0",
    )
    _refused(
        r"data.datasets.0.synthetic.seed: Input should be greater",
        "data.datasets.0.type=synthetic",
        "data.datasets.0.synthetic.seed=-1",
    )


def _hku() -> tuple[str, str]:
    return "data.datasets.0.type=hku956", "data.datasets.0.root=r"


def test_overrides() -> None:
    raw = apply_overrides(
        {"a": {"l": [1, {"x": 0}, 3]}},
        [
            "a.b=1.5e-3",
            "a.c=true",
            "a.d=null",
            "a.e=[x, y]",
            "a.f=",
            "a.g=k=v",
            "a.l.1.x=5",
            "a.l.-1=9",
            "n.m.o=2",
        ],
    )
    assert raw == {
        "a": {"l": [1, {"x": 5}, 9], "b": 1.5e-3, "c": True, "d": None, "e": ["x", "y"], "f": "", "g": "k=v"},
        "n": {"m": {"o": 2}},
    }
    for item, match in [
        ("a.b", "must look like dotted.key=value"),
        ("a.l.x=1", r"a.l.x indexes a list, use a number"),
        ("a.l.3=1", r"a.l.3 is out of range \(list has 3 items\)"),
        ("a.l.-4=1", r"out of range"),
        ("a.s.t=1", r"'a.s.t': a.s is not a mapping"),
        ("a.b=[1", r"the value is not valid YAML"),
    ]:
        with pytest.raises(ConfigError, match=match):
            apply_overrides({"a": {"l": [1, 2, 3], "s": 5}}, [item])


def test_config_files_read_bounded(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_bytes(b"\xef\xbb\xbf" + yaml.safe_dump(BASE).encode())  # a BOM is fine
    assert load_config(f, ["data.n_mels=7"]).data.n_mels == 7
    assert read_config_text(f).startswith("data:")
    with pytest.raises(ConfigError, match=f"config file not found: {tmp_path / 'no.yaml'}"):
        read_config_text(tmp_path / "no.yaml")
    with pytest.raises(ConfigError, match="is a directory, not a config file"):
        read_config_text(tmp_path)
    f.write_bytes(b"a: 1\n" + b"#" * MAX_CONFIG_BYTES)
    with pytest.raises(ConfigError, match=f"larger than {MAX_CONFIG_BYTES} bytes"):
        read_config_text(f)
    f.write_bytes(b"a" * (MAX_CONFIG_BYTES - 2) + b": ")
    read_config_text(f)  # exactly the limit
    f.write_bytes(b"name: caf\xe9\n")
    with pytest.raises(ConfigError, match=r"not UTF-8 text \(byte 9: b'\\xe9'\)"):
        read_config_text(f)
    f.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping, got list"):
        load_config(f)
    f.write_text("")
    with pytest.raises(ConfigError, match="top level must be a mapping, got NoneType"):
        read_yaml_mapping(f, "sweep file")  # empty is a config only where empty_ok says so
    assert read_yaml_mapping(f, empty_ok=True) == {}
    with pytest.raises(ConfigError, match=rf"{f}: 1 invalid field\(s\)\n  data: Field required"):
        load_config(f)
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_yaml("a: [1", "src")
    level = "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n"
    for prev, name in zip("abcd", "bcde", strict=True):
        level += f"{name}: &{name} [{', '.join([f'*{prev}'] * 10)}]\n"
    with pytest.raises(ConfigError, match="src: more than 100000 values once YAML aliases are expanded"):
        parse_yaml(level, "src")  # 11 111 values and more: 10 ** 5 lists of ten
    assert parse_yaml(level.rsplit("e:", 1)[0], "src")["d"][0][0][0] == [1] * 10
    check_expanded_size({"k": [0] * 99_997}, "src")  # dict + key + list + items = 100000
    with pytest.raises(ConfigError, match="more than 100000"):
        check_expanded_size({"k": [0] * 99_998}, "src")


def test_paths_checked_and_mapped(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    raw = {
        "data": {
            "datasets": [
                {"name": "a", "manifest": str(tmp_path / "m.csv")},
                {"name": "b", "manifest": "s3://b/m.csv"},
            ],
            "cache_dir": None,
        },
        "checkpoint": {"dir": str(tmp_path / "file" / "runs")},
    }
    cfg = _cfg(raw=raw)
    with pytest.raises(ConfigError) as e:
        check_paths(cfg, source="c.yaml")
    assert str(e.value) == (
        f"c.yaml: 2 invalid path(s)\n  data.datasets.0.manifest: manifest not found: {tmp_path / 'm.csv'}\n"
        f"  checkpoint.dir: can't create {tmp_path / 'file' / 'runs'}: {tmp_path / 'file'} is not a directory"
    )
    (tmp_path / "m.csv").write_text("")
    check_paths(cfg, run_dir=tmp_path / "new" / "run")
    map_paths(cfg, lambda p: f"<{p}>")
    assert cfg.data.datasets[1].manifest == "<s3://b/m.csv>" and cfg.checkpoint.dir.startswith("<")
    assert cfg.data.cache_dir is None and cfg.data.datasets[0].root is None
    cfg.data.cache_dir = ""
    map_paths(cfg, lambda p: f"<{p}>")
    assert cfg.data.cache_dir == "<>"


def test_short_repr_is_bounded() -> None:
    assert short_repr("abc") == "'abc'"
    long = short_repr("x" * 500, limit=20)
    assert len(long) == 20 and long.endswith("...")
    assert len(short_repr(list(range(10**5)))) <= 80
