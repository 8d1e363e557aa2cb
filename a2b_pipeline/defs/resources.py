"""Dagster resources: where experiments and their files live, how runs are tracked, which device trains.

Each is a `ConfigurableResource`, so the values show (and can be changed) in the UI's launchpad.
Defaults come from environment variables at code-location load, so `dagster dev`, the docker
deployment and the tests point the same code at different places without editing it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from dagster import ConfigurableResource
from pydantic import Field

if TYPE_CHECKING:
    from a2b_pipeline.configs import RunConfig

TRACKING_MODES = ("config", "offline", "online", "disabled")
DEVICES = ("config", "auto", "cpu", "cuda")


def _is_url(path: str) -> bool:
    return "://" in path


def _rebase(path: str, root: Path) -> str:
    """A relative local path -> absolute under `root`; URLs and absolute paths stay as they are."""
    if _is_url(path):
        return path
    p = Path(path).expanduser()
    return str(p if p.is_absolute() else (root / p).resolve())


class ExperimentStore(ConfigurableResource):
    """Run configs (one YAML per experiment = one partition) and the one data root every asset writes under.

    Relative paths inside a config (corpus roots and manifests, cache and checkpoint dirs) are taken
    relative to `data_root`, so an experiment is self-contained under it; with the default data root
    (the working directory) this is what the `a2b` CLI does too.
    """

    data_root: str = Field(default=".", description="Directory all experiment files are written under.")
    configs_dir: str = Field(
        default="configs", description="Directory of run configs; file stem = experiment."
    )

    @property
    def root(self) -> Path:
        return Path(self.data_root).expanduser().resolve()

    @property
    def configs(self) -> Path:
        return Path(self.configs_dir).expanduser().resolve()

    def experiments(self) -> list[str]:
        """Config file stems under `configs_dir`, sorted: the experiments that can be partitions."""
        if not self.configs.is_dir():
            return []
        stems = {p.stem for p in self.configs.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file()}
        return sorted(s for s in stems if not s.startswith("."))

    def config_path(self, experiment: str) -> Path:
        for suffix in (".yaml", ".yml"):
            path = self.configs / f"{experiment}{suffix}"
            if path.is_file():
                return path
        from a2b_pipeline.configs import ConfigError

        known = ", ".join(self.experiments()) or "none"
        raise ConfigError(
            f"experiment {experiment!r}: no config file {self.configs / experiment}.yaml "
            f"(configs there: {known})"
        )

    def rebase(self, cfg: RunConfig) -> RunConfig:
        """A copy of the config with every relative local path (each field typed `ConfigPath`) made
        absolute under the data root."""
        from a2b_pipeline.configs import map_paths

        cfg = cfg.model_copy(deep=True)
        root = self.root
        map_paths(cfg, lambda path: _rebase(path, root))
        return cfg

    def experiment_dir(self, cfg: RunConfig, experiment: str) -> Path:
        """`<checkpoint.dir>/<experiment>`: the experiment's run dirs and its `dagster/` asset records."""
        return Path(cfg.checkpoint.dir) / experiment


class WandbTracking(ConfigurableResource):
    """How training runs are tracked. `mode: config` keeps each config's `tracking.wandb_mode`.

    The API key is never read here: wandb takes WANDB_API_KEY from the environment itself, and no
    asset puts it (or any environment variable) into metadata or logs.
    """

    mode: str = Field(default="config", description="config | offline | online | disabled")
    project: str | None = Field(default=None, description="Overrides tracking.project when set.")
    entity: str | None = Field(default=None, description="Overrides tracking.entity when set.")

    def apply(self, cfg: RunConfig) -> None:
        """Set the tracking settings on `cfg` in place (validated assignments)."""
        if self.mode not in TRACKING_MODES:
            raise ValueError(f"WandbTracking.mode must be one of {TRACKING_MODES}, got {self.mode!r}")
        if self.mode != "config":
            cfg.tracking.wandb_mode = self.mode
        if self.project:
            cfg.tracking.project = self.project
        if self.entity:
            cfg.tracking.entity = self.entity


class TrainDevice(ConfigurableResource):
    """Where training runs. `device: config` keeps each config's `train.device` (auto: CUDA when present)."""

    device: str = Field(default="config", description="config | auto | cpu | cuda")
    num_threads: int | None = Field(default=None, description="CPU threads; overrides train.num_threads.")

    def apply(self, cfg: RunConfig) -> None:
        """Set the device settings on `cfg` in place (validated assignments)."""
        if self.device not in DEVICES:
            raise ValueError(f"TrainDevice.device must be one of {DEVICES}, got {self.device!r}")
        if self.device != "config":
            cfg.train.device = self.device
        if self.num_threads:
            cfg.train.num_threads = self.num_threads


class QualityGate(ConfigurableResource):
    """The floor the `evaluation` asset check holds a test metric to."""

    metric: str = Field(default="test/pearson", description="Test metric the floor applies to.")
    floor: float = Field(default=0.0, description="The check fails when the metric is below this.")


def default_resources() -> dict[str, ConfigurableResource]:
    """The resources of the code location, from the environment (see README, 'Dagster')."""
    env = os.environ
    return {
        "store": ExperimentStore(
            data_root=env.get("A2B_DATA_ROOT", "."), configs_dir=env.get("A2B_CONFIGS_DIR", "configs")
        ),
        "tracking": WandbTracking(
            mode=env.get("A2B_WANDB_MODE", "config"),
            project=env.get("A2B_WANDB_PROJECT") or None,
            entity=env.get("A2B_WANDB_ENTITY") or None,
        ),
        "compute": TrainDevice(device=env.get("A2B_DEVICE", "config")),
        "quality": QualityGate(
            metric=env.get("A2B_EVAL_METRIC", "test/pearson"), floor=float(env.get("A2B_EVAL_FLOOR", "0.0"))
        ),
    }
