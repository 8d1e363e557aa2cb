"""Dagster resources: where experiments and their files live, how runs are tracked, which device trains.

Each is a `ConfigurableResource`, so the values show (and can be changed) in the UI's launchpad.
Defaults come from environment variables at code-location load, so `dagster dev`, the docker
deployment and the tests point the same code at different places without editing it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dagster import Config, ConfigurableResource
from pydantic import Field

from a2b_pipeline.data.remote import has_scheme

if TYPE_CHECKING:
    from a2b_pipeline.configs import RunConfig

TRACKING_MODES = ("config", "offline", "online", "disabled")
DEVICES = ("config", "auto", "cpu", "cuda")
LAUNCHES = ("process", "slurm")


def _require_one_of(setting: str, value: str, allowed: tuple[str, ...]) -> None:
    """A resource setting checked where it is applied to a config (the run's failure names it)."""
    if value not in allowed:
        raise ValueError(f"{setting} must be one of {allowed}, got {value!r}")


def _rebase(path: str, root: Path) -> str:
    """A relative local path -> absolute under `root`; URLs and absolute paths stay as they are."""
    if has_scheme(path):
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

    def experiments(self, problems: list[str] | None = None) -> list[str]:
        """The experiments that can be partitions, sorted: config file stems under `configs_dir`, and the
        experiments of every sweep under `configs_dir/sweeps/`. A sweep file that doesn't expand adds
        none; its error goes to `problems`."""
        if not self.configs.is_dir():
            return []
        stems = {p.stem for p in self.configs.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file()}
        names = {s for s in stems if not s.startswith(".")}
        for name in self._sweeps(problems):
            if name in names and problems is not None:
                problems.append(f"sweep experiment {name!r}: a config file has that name and wins")
            names.add(name)
        return sorted(names)

    def _sweeps(self, problems: list[str] | None = None) -> dict[str, Any]:
        """name -> SweepExperiment of every sweep file that expands (a broken one is reported, skipped)."""
        from a2b_pipeline.configs import ConfigError
        from a2b_pipeline.experiments.sweeps import load_sweep, sweep_files

        out: dict[str, Any] = {}
        for path in sweep_files(self.configs):
            try:
                out.update({e.name: e for e in load_sweep(path).experiments if e.name not in out})
            except ConfigError as e:
                if problems is not None:
                    problems.append(str(e))
        return out

    def config_path(self, experiment: str) -> Path:
        """The experiment's config file, or the sweep file it comes from."""
        for suffix in (".yaml", ".yml"):
            path = self.configs / f"{experiment}{suffix}"
            if path.is_file():
                return path
        from a2b_pipeline.configs import ConfigError

        sweep = self._sweep_experiment(experiment)
        if sweep is not None:
            return sweep.source
        known = ", ".join(self.experiments()) or "none"
        raise ConfigError(
            f"experiment {experiment!r}: no config file {self.configs / experiment}.yaml and no sweep "
            f"experiment of that name (experiments there: {known})"
        )

    def overrides(self, experiment: str) -> dict[str, Any]:
        """A sweep experiment's overrides of its base config (dotted key -> value); {} for a config file."""
        sweep = self._sweep_experiment(experiment)
        return dict(sweep.overrides) if sweep is not None else {}

    def _sweep_experiment(self, experiment: str) -> Any:
        """The sweep experiment of that name (`<sweep>.<labels>`), or None. Sweep files are small: they
        are expanded again on every call, so an edit shows at once."""
        return self._sweeps().get(experiment)

    def load_config(self, experiment: str) -> RunConfig:
        """The experiment's config as written (a config file, or a sweep's expansion): paths not rebased."""
        from a2b_pipeline.configs import load_config

        path = self.config_path(experiment)
        if path.parent == self.configs:
            return load_config(path)
        return self._sweep_experiment(experiment).config

    def fingerprint(self, experiment: str) -> str:
        """What changes when the experiment's config does: a config file's bytes; a sweep experiment's
        expanded config (so an edited base config or sweep file changes it)."""
        path = self.config_path(experiment)
        if path.parent == self.configs:
            return hashlib.sha256(path.read_bytes()).hexdigest()
        return hashlib.sha256(self.load_config(experiment).to_yaml().encode()).hexdigest()

    def rebase(self, cfg: RunConfig) -> RunConfig:
        """A copy of the config with every relative local path (each field typed `ConfigPath`) made
        absolute under the data root."""
        from a2b_pipeline.configs import map_paths

        self.check_confined(cfg)
        cfg = cfg.model_copy(deep=True)
        root = self.root
        map_paths(cfg, lambda path: _rebase(path, root))
        return cfg

    def check_confined(self, cfg: RunConfig) -> None:
        """A relative checkpoint.dir or data.cache_dir stays under the data root once rebased (no `..` or
        symlink out of it), unless the config sets data.allow_outside_paths; an absolute path is the config
        author's explicit choice. ConfigError naming the field."""
        from a2b_pipeline.configs import ConfigError

        if cfg.data.allow_outside_paths:
            return
        root = os.path.realpath(self.root)
        for field, path in (("checkpoint.dir", cfg.checkpoint.dir), ("data.cache_dir", cfg.data.cache_dir)):
            if path is None or has_scheme(path) or Path(path).expanduser().is_absolute():
                continue
            real = os.path.realpath(Path(root) / path)
            if os.path.commonpath([real, root]) != root:
                raise ConfigError(
                    f"{field}: {path} leads outside the data root {root} (A2B_DATA_ROOT); "
                    "set data.allow_outside_paths: true to write there"
                )

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
        _require_one_of("WandbTracking.mode", self.mode, TRACKING_MODES)
        if self.mode != "config":
            cfg.tracking.wandb_mode = self.mode
        if self.project:
            cfg.tracking.project = self.project
        if self.entity:
            cfg.tracking.entity = self.entity


class SlurmJob(Config):
    """What a training step run as a Slurm job asks for (launch: slurm). Empty: the cluster's default."""

    partition: str | None = Field(default=None, description="sbatch --partition")
    account: str | None = Field(default=None, description="sbatch --account")
    qos: str | None = Field(default=None, description="sbatch --qos")
    time: str | None = Field(default=None, description="time limit, sbatch --time (e.g. 04:00:00)")
    nodes: int = Field(default=1, description="nodes of one experiment (multi-node DDP when > 1)")
    tasks_per_node: int = Field(default=1, description="ranks per node (one per GPU)")
    gpus_per_node: int = Field(default=0, description="sbatch --gpus-per-node")
    cpus_per_task: int | None = Field(default=None, description="sbatch --cpus-per-task")
    mem: str | None = Field(default=None, description="memory per node, sbatch --mem (e.g. 32G)")
    signal_seconds: int = Field(default=120, description="checkpoint and requeue this long before the limit")
    sbatch_args: list[str] = Field(default_factory=list, description="more sbatch options, as written")
    poll_seconds: float = Field(default=5.0, description="how often the step asks Slurm about its job")
    python: str = Field(default="", description="the job's Python (default: this process's, shared FS)")

    def spec(self) -> Any:  # launch.slurm.SlurmJobSpec
        from a2b_pipeline.launch.slurm import SlurmJobSpec

        fields = set(SlurmJobSpec.model_fields)
        return SlurmJobSpec(**{k: v for k, v in self.model_dump().items() if k in fields})

    @classmethod
    def from_env(cls, env: Any) -> SlurmJob:
        """A2B_SLURM_<FIELD> for each field (A2B_SLURM_SBATCH_ARGS is split as a shell would)."""
        import shlex

        values: dict[str, Any] = {}
        for name in cls.model_fields:
            raw = env.get(f"A2B_SLURM_{name.upper()}")
            if raw:
                values[name] = shlex.split(raw) if name == "sbatch_args" else raw
        return cls(**values)


class TrainDevice(ConfigurableResource):
    """Where training runs. `device: config` keeps each config's `train.device` (auto: CUDA when present).
    `launch: slurm` runs the training step as a Slurm job (`slurm` says what it asks for) that reports back
    through Dagster Pipes; `process` (the default) trains in the Dagster run's own process."""

    device: str = Field(default="config", description="config | auto | cpu | cuda")
    num_threads: int | None = Field(default=None, description="CPU threads; overrides train.num_threads.")
    launch: str = Field(default="process", description="process | slurm: where the training step runs")
    slurm: SlurmJob = Field(default_factory=SlurmJob, description="the Slurm job of launch: slurm")

    def apply(self, cfg: RunConfig) -> None:
        """Set the device settings on `cfg` in place (validated assignments)."""
        _require_one_of("TrainDevice.device", self.device, DEVICES)
        _require_one_of("TrainDevice.launch", self.launch, LAUNCHES)
        if self.device != "config":
            cfg.train.device = self.device
        if self.num_threads:
            cfg.train.num_threads = self.num_threads

    def train_elsewhere(self, context: Any, cfg: RunConfig, run_dir: Path, job_dir: Path) -> dict[str, Any]:
        """Train `cfg` in `run_dir` as a Slurm job (launch: slurm); the metadata the job reported."""
        from a2b_pipeline.launch.pipes import run_slurm_training
        from a2b_pipeline.launch.slurm import default_python

        job = self.slurm
        python = job.python or default_python()
        return run_slurm_training(context, job.spec(), cfg, run_dir, job_dir, job.poll_seconds, python)


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
        "compute": TrainDevice(
            device=env.get("A2B_DEVICE", "config"),
            launch=env.get("A2B_LAUNCH", "process"),
            slurm=SlurmJob.from_env(env),
        ),
        "quality": QualityGate(
            metric=env.get("A2B_EVAL_METRIC", "test/pearson"), floor=float(env.get("A2B_EVAL_FLOOR", "0.0"))
        ),
    }
