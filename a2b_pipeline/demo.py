"""`a2b demo`: materialize the whole Dagster graph for one experiment into a persistent DAGSTER_HOME.

The runs, materializations, checks and plots land in `dagster_home` (SQLite) and the experiment's
files under `data_root`, so a following `dagster dev` with the same DAGSTER_HOME shows all of it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, TextIO

DEMO_EXPERIMENT = "demo"

_INSTANCE_YAML = """\
# Written by `a2b demo`: a local Dagster instance (SQLite under this directory).
telemetry:
  enabled: false
nux:
  enabled: false
"""


def run_demo(
    dagster_home: Path,
    data_root: Path,
    *,
    configs_dir: Path | None = None,
    experiment: str = DEMO_EXPERIMENT,
    tracking_mode: str | None = None,
    device: str | None = None,
    out: TextIO | None = None,
) -> int:
    """Materialize corpus_manifest -> ... -> evaluation (with their checks) for `experiment`
    (configs_dir/<experiment>.yaml, default configs/demo.yaml) and print where to look.

    Returns 0 when every asset materialized and every check passed, 1 otherwise, 2 for a bad setup.
    """
    # imported here: the core imports neither Dagster nor defs/ at module level (`a2b` starts without them)
    from dagster import DagsterInstance, materialize

    from a2b_pipeline.configs import ConfigError
    from a2b_pipeline.defs.assets import ASSETS, experiments
    from a2b_pipeline.defs.checks import CHECKS
    from a2b_pipeline.defs.resources import ExperimentStore, TrainDevice, WandbTracking, default_resources

    out = out or sys.stdout
    dagster_home = Path(dagster_home).expanduser().resolve()
    data_root = Path(data_root).expanduser().resolve()
    configs = Path(configs_dir or os.environ.get("A2B_CONFIGS_DIR", "configs")).expanduser().resolve()
    dagster_home.mkdir(parents=True, exist_ok=True)
    data_root.mkdir(parents=True, exist_ok=True)
    if not (dagster_home / "dagster.yaml").exists():
        (dagster_home / "dagster.yaml").write_text(_INSTANCE_YAML)

    env = default_resources()
    tracking, compute = env["tracking"], env["compute"]
    resources = {
        **env,
        "store": ExperimentStore(data_root=str(data_root), configs_dir=str(configs)),
        "tracking": WandbTracking(
            mode=tracking_mode or tracking.mode, project=tracking.project, entity=tracking.entity
        ),
        "compute": TrainDevice(device=device or compute.device, num_threads=compute.num_threads),
    }
    try:
        resources["store"].config_path(experiment)
    except ConfigError as e:
        print(f"a2b demo: {e}", file=out)
        return 2

    with DagsterInstance.from_config(str(dagster_home)) as instance:
        if not instance.has_dynamic_partition(experiments.name, experiment):
            instance.add_dynamic_partitions(experiments.name, [experiment])
        print(f"a2b demo: materializing {len(ASSETS)} assets for experiment {experiment!r} ...", file=out)
        result = materialize(
            [*ASSETS, *CHECKS],
            instance=instance,
            resources=resources,
            partition_key=experiment,
            raise_on_error=False,
            tags={"a2b/launched_by": "a2b demo"},
        )
        mats = [e.event_specific_data.materialization for e in result.get_asset_materialization_events()]
        done = {m.asset_key.to_user_string(): m for m in mats}
        checks = result.get_asset_check_evaluations()

    ok = result.success and len(done) == len(ASSETS) and all(c.passed for c in checks)
    _report(out, [a.key.to_user_string() for a in ASSETS], done, checks)
    _where_to_look(out, dagster_home, data_root, configs, experiment, ok)
    return 0 if ok else 1


def _report(out: TextIO, assets: list[str], done: dict[str, Any], checks: list[Any]) -> None:
    """Each asset and check, ok or FAILED, and the evaluation's test metrics and files."""
    print("", file=out)
    for name in assets:
        print(f"  {'ok ' if name in done else 'FAILED'}  {name}", file=out)
    for c in checks:
        print(
            f"  {'ok ' if c.passed else 'FAILED'}  check {c.asset_key.to_user_string()}:{c.check_name}",
            file=out,
        )
    ev = done.get("evaluation")
    if ev is not None:
        md = ev.metadata
        metrics = {k: v.value for k, v in md.items() if k.startswith("test/") and "_" not in k}
        print("", file=out)
        print("  test metrics: " + ", ".join(f"{k}={v:.3f}" for k, v in sorted(metrics.items())), file=out)
        versus = {k.split("/", 1)[1]: v.value for k, v in md.items() if k.startswith("recording_pearson/")}
        if versus:  # whole-recording median Pearson r of the model and each baseline (constant: undefined)
            shown = ", ".join(f"{k}={v:.3f}" for k, v in versus.items())
            print(f"  whole-recording Pearson r (median): {shown}", file=out)
        print(f"  checkpoint:   {md['checkpoint'].value}", file=out)
        print(f"  plot:         {md['plot_path'].value}", file=out)
        print(f"  train state:  {md['train_state'].value}", file=out)


def _where_to_look(
    out: TextIO, dagster_home: Path, data_root: Path, configs: Path, experiment: str, ok: bool
) -> None:
    print("", file=out)
    print("To browse it in the Dagster UI, run from the repository root:", file=out)
    print(
        f"  DAGSTER_HOME={dagster_home} A2B_DATA_ROOT={data_root} A2B_CONFIGS_DIR={configs} dagster dev",
        file=out,
    )
    print(f"and open http://127.0.0.1:3000/assets (partition {experiment!r}).", file=out)
    if not ok:
        print("a2b demo: some steps failed; the run's logs are in the UI under Runs.", file=out)
