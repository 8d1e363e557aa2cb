"""Sweeps: one YAML file that expands to many experiments (configs/sweeps/<name>.yaml).

    name: architectures            # optional; default: the file's stem
    description: ...               # optional
    base: ../demo.yaml             # a run config: a path (relative to this file) or an inline mapping
    set: {train.max_steps: 200}    # optional: overrides for every experiment
    grid:                          # optional: the cartesian product of these axes
      optimizer.lr: [0.001, 0.003]            # a list: labels come from the values (`lr-0.001`)
      model:                                  # a mapping: label -> value (whole subtrees allowed)
        gru: {name: conv_gru, hidden: 32}
        tcn: {name: tcn, channels: 32}
    variants:                      # optional: an explicit list of override sets (crossed with the grid)
      - {name: mse, set: {train.loss.terms: [{name: mse}]}}
      - {name: ccc, set: {train.loss.terms: [{name: ccc}]}}

Keys are dotted paths as in `--set` (list items by index); a value replaces the whole subtree at its key.
Each experiment is named `<sweep>.<label>[+<label>...]`: readable, a pure function of the sweep's name and
labels (not of the order of the file, nor of the base config), valid as a Dagster partition key and a
directory name. The experiment's RunConfig gets that name, so its CLI run directory is its own.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from a2b_pipeline.configs import (
    ConfigError,
    RunConfig,
    config_from_dict,
    format_validation_error,
    read_yaml_mapping,
    set_dotted,
)

SWEEPS_DIR = "sweeps"  # under a configs directory
NAME_RE = re.compile(r"^[A-Za-z0-9_.+-]+$")  # RunConfig.name: also safe as partition key and dir name
MAX_EXPERIMENTS = 10_000  # one sweep file: more is a typo or a generated grid that would never finish
_SLUG_BAD = re.compile(r"[^A-Za-z0-9_.-]+")
Label = Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")]


class Variant(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Label | None = None  # default: labels from its overrides' values
    set: dict[str, Any]


class SweepSpec(BaseModel):
    """A sweep file, as written."""

    model_config = ConfigDict(extra="forbid")

    name: Label | None = None
    description: str = ""
    base: str | dict[str, Any]
    set: dict[str, Any] = {}
    grid: dict[str, list[Any] | dict[str, Any]] = {}
    variants: list[Variant] = []

    @model_validator(mode="after")
    def _varies_something(self) -> SweepSpec:
        if not self.grid and not self.variants:
            raise ValueError("a sweep needs `grid` or `variants` (or both)")
        for key, values in self.grid.items():
            if len(values) == 0:
                raise ValueError(f"grid.{key}: no values")
            if isinstance(values, dict):
                for label in values:
                    if not re.fullmatch(r"[A-Za-z0-9_.-]+", str(label)):
                        raise ValueError(f"grid.{key}: label {label!r} may only use A-Z a-z 0-9 _ . -")
        # counted before anything is expanded: 6 axes of 100 values are 10^12 experiments
        count = max(1, len(self.variants)) * math.prod(len(v) for v in self.grid.values())
        if count > MAX_EXPERIMENTS:
            raise ValueError(
                f"the grid and variants make {count:,} experiments, over the limit of {MAX_EXPERIMENTS:,}: "
                "split the sweep or shorten its axes"
            )
        return self


@dataclass(frozen=True)
class SweepExperiment:
    """One expanded experiment: its name, the overrides that make it, and its validated config."""

    name: str
    sweep: str
    source: Path  # the sweep file
    overrides: dict[str, Any]  # dotted key -> value, in the order they were applied
    config: RunConfig = field(compare=False)

    @property
    def config_hash(self) -> str:
        return self.config.config_hash()


@dataclass
class Sweep:
    name: str
    path: Path
    description: str
    base: str  # the base config's path, or "inline"
    experiments: list[SweepExperiment]


def slug(value: Any) -> str:
    """A short readable label for a value: scalars as written, named things by their name."""
    if isinstance(value, dict) and "name" in value:
        value = value["name"]
    elif isinstance(value, list) and value and all(isinstance(v, dict) and "name" in v for v in value):
        value = "-".join(str(v["name"]) for v in value)
    if isinstance(value, bool) or value is None:
        text = str(value).lower()
    elif isinstance(value, dict | list):
        text = ""  # no readable label: the caller falls back to the value's position
    else:
        text = str(value)
    return _SLUG_BAD.sub("-", text)


def _axis_name(key: str) -> str:
    """`optimizer.lr` -> `lr`; `model.name` -> `model`; `train.loss.terms.0.name` -> `terms`."""
    parts = [p for p in key.split(".") if p != "name" and not p.isdigit()]
    return parts[-1] if parts else key


def _axis_options(key: str, values: list[Any] | dict[str, Any]) -> list[tuple[str, Any]]:
    """(label, value) per grid value: a mapping's labels as given, else `<axis>-<value>`."""
    if isinstance(values, dict):
        return [(str(label), value) for label, value in values.items()]
    axis = _axis_name(key)
    options = []
    for i, value in enumerate(values):
        text = slug(value)
        if isinstance(value, dict | list) and text:
            options.append((text, value))  # a named model / loss reads well on its own
        else:
            options.append((f"{axis}-{text or i}", value))
    return options


def _variant_label(i: int, variant: Variant) -> str:
    if variant.name:
        return variant.name
    labels = [_axis_options(key, [value])[0][0] for key, value in variant.set.items()]
    return "+".join(labels) or f"variant-{i}"


def load_sweep(path: str | Path) -> Sweep:
    """Read and expand a sweep file; every experiment's config is validated (errors name the experiment)."""
    path = Path(path)
    try:
        spec = SweepSpec.model_validate(read_yaml_mapping(path, "sweep file"))
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, str(path))) from None
    name = spec.name or path.stem
    if not NAME_RE.fullmatch(name):
        raise ConfigError(f"{path}: sweep name {name!r} may only use A-Z a-z 0-9 _ . + -")
    if isinstance(spec.base, str):
        base_path = Path(spec.base) if Path(spec.base).is_absolute() else path.parent / spec.base
        base = read_yaml_mapping(base_path, f"{path}: base config")
        base_text = os.path.normpath(base_path)
    else:
        base, base_text = spec.base, "inline"

    axes = [_axis_options(k, v) for k, v in spec.grid.items()]
    keys = list(spec.grid)
    variants = [(_variant_label(i, v), v.set) for i, v in enumerate(spec.variants)] or [("", {})]
    experiments: list[SweepExperiment] = []
    seen: dict[str, dict[str, Any]] = {}
    for (v_label, v_set), combo in itertools.product(variants, itertools.product(*axes)):
        labels = [v_label] if v_label else []
        overrides = {**spec.set, **v_set}
        for key, (label, value) in zip(keys, combo, strict=True):
            labels.append(label)
            overrides[key] = value
        exp_name = f"{name}.{'+'.join(labels)}"
        if exp_name in seen:
            raise ConfigError(
                f"{path}: two experiments are both named {exp_name!r} ({seen[exp_name]} and {overrides}); "
                "give the grid values labels (a mapping label: value) or the variants names"
            )
        seen[exp_name] = overrides
        raw = copy.deepcopy(base)
        try:
            for key, value in overrides.items():
                set_dotted(raw, key, copy.deepcopy(value))
        except ConfigError as e:
            raise ConfigError(f"{path}: experiment {exp_name}: {e}") from None
        raw["name"] = exp_name
        cfg = config_from_dict(raw, f"{path}: experiment {exp_name}")
        experiments.append(SweepExperiment(exp_name, name, path, overrides, cfg))
    return Sweep(name, path, spec.description, base_text, experiments)


def sweep_files(configs_dir: str | Path) -> list[Path]:
    """`<configs_dir>/sweeps/*.yaml|yml`, sorted."""
    folder = Path(configs_dir) / SWEEPS_DIR
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())


def sweep_experiments(configs_dir: str | Path) -> dict[str, SweepExperiment]:
    """Every sweep experiment under `<configs_dir>/sweeps/`, by name. A broken sweep file raises
    ConfigError naming it; two sweeps giving the same experiment name too."""
    out: dict[str, SweepExperiment] = {}
    for path in sweep_files(configs_dir):
        for exp in load_sweep(path).experiments:
            if exp.name in out:
                raise ConfigError(
                    f"experiment {exp.name!r} comes from both {out[exp.name].source} and {path}: "
                    "give one of the sweeps another `name`"
                )
            out[exp.name] = exp
    return out


def format_table(sweep: Sweep, experiments: list[SweepExperiment] | None = None) -> str:
    """The sweep's experiments (or those given) as an aligned text table: name, config hash, overrides."""
    rows = [("experiment", "config hash", "overrides")]
    for e in sweep.experiments if experiments is None else experiments:
        shown = ", ".join(f"{k}={json.dumps(v, separators=(',', ':'))}" for k, v in e.overrides.items())
        rows.append((e.name, e.config_hash, shown))
    width = [max(len(r[i]) for r in rows) for i in range(2)]
    lines = [f"{r[0]:<{width[0]}}  {r[1]:<{width[1]}}  {r[2]}" for r in rows]
    head = f"# sweep {sweep.name} ({sweep.path}): {len(sweep.experiments)} experiments, base {sweep.base}"
    return "\n".join([head, *lines])
