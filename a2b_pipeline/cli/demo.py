"""`a2b demo`: materialize the whole Dagster graph for one experiment into a persistent DAGSTER_HOME.

The runs, materializations, checks and plots land in `dagster_home` (SQLite) and the experiment's
files under `data_root`, so a following `dagster dev` with the same DAGSTER_HOME shows all of it.

What it prints is what a person needs: one line per asset as it completes (a progress bar during
training on a terminal), one per check, the test metrics and where to look. `verbose` prints the
full Dagster and library logs instead (each line once).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from a2b_pipeline.evaluation.gate import fmt_interval, margins_of, verdict

DEMO_EXPERIMENT = "demo"

_INSTANCE_YAML = """\
# Written by `a2b demo`: a local Dagster instance (SQLite under this directory).
telemetry:
  enabled: false
nux:
  enabled: false
"""


def _summary(asset: str, md: dict[str, Any]) -> str:
    """A few words on what an asset produced, from its metadata."""

    def v(key: str) -> Any:
        return md[key].value if key in md else None

    if asset == "corpus_manifest":
        return f"{v('recordings')} recordings, {v('skipped_count')} skipped"
    if asset == "dataset_splits":
        return f"windows train {v('train_windows')} / val {v('val_windows')} / test {v('test_windows')}"
    if asset == "meta_loader_spec":
        return f"{v('planned_steps')} steps planned"
    if asset in ("training_run", "best_checkpoint"):
        best = f"{v('best_metric')} {v('best_value'):.3f}" if v("best_value") is not None else ""
        return f"step {v('global_step')}, best {best} at step {v('best_step')}"
    if asset == "evaluation":
        return ", ".join(
            f"{k} {val.value:.3f}" for k, val in sorted(md.items()) if k.count("/") == 1 and "_" not in k
        )
    return ""


class _DemoConsole(logging.Handler):
    """The run's Dagster events as the demo's lines (quiet), or every message once (verbose)."""

    def __init__(self, out: TextIO, verbose: bool):
        super().__init__(logging.DEBUG)
        self.out, self.verbose = out, verbose
        self.started: dict[str, float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        from dagster._core.log_manager import get_log_record_metadata, has_log_record_metadata

        if not has_log_record_metadata(record):
            return
        meta = get_log_record_metadata(record)
        if self.verbose:
            # library lines forwarded into the run's log are already printed by the root handler
            if not meta["orig_message"].startswith("a2b_pipeline"):
                print(f"{logging.getLevelName(record.levelno):7s} {record.getMessage()}", file=self.out)
            return
        event = meta["dagster_event"]
        if event is None:
            return
        self._event(event, meta.get("step_key") or "")

    def _event(self, event: Any, step: str) -> None:
        kind = event.event_type_value
        if kind == "STEP_START":
            self.started[step] = time.monotonic()
        elif kind == "ASSET_MATERIALIZATION":
            mat = event.event_specific_data.materialization
            name = mat.asset_key.to_user_string()
            took = time.monotonic() - self.started.get(step, time.monotonic())
            reused = " (reused)" if "reused" in mat.metadata else ""
            self._line(f"  ok      {name:18s} {took:6.1f} s  {_summary(name, dict(mat.metadata))}{reused}")
        elif kind == "STEP_FAILURE":
            error = event.event_specific_data.error
            message = (error.message or "").strip().splitlines()[0] if error else ""
            self._line(f"  FAILED  {step:18s} {message.removeprefix('dagster._core.definitions.events.')}")
        elif kind == "ASSET_CHECK_EVALUATION":
            ev = event.event_specific_data
            name = f"{ev.asset_key.to_user_string()}:{ev.check_name}"
            status = "ok" if ev.passed else ("warn" if ev.severity.value == "WARN" else "FAILED")
            desc = f"  {ev.description}" if ev.description else ""
            self._line(f"  {status:7s} check {name}{desc}")

    def _line(self, text: str) -> None:
        print(text, file=self.out, flush=True)


def _console_logger_def(out: TextIO, verbose: bool) -> Any:
    from dagster import LoggerDefinition

    def make(_: Any) -> logging.Logger:
        log = logging.getLogger("a2b_pipeline.cli.demo.dagster")
        log.handlers[:] = [_DemoConsole(out, verbose)]
        log.setLevel(logging.DEBUG)
        log.propagate = False
        return log

    return LoggerDefinition(make, description="the `a2b demo` console")


def _quiet_python_logs(verbose: bool) -> None:
    """Quiet: only warnings from Python logging (no alembic migrations, no library INFO lines, which
    the run's log has). Verbose: everything at INFO and up, once."""
    level = logging.INFO if verbose else logging.WARNING
    for handler in logging.getLogger().handlers:
        handler.setLevel(level)
    if not verbose:
        import warnings

        from dagster import BetaWarning, PreviewWarning

        logging.getLogger("alembic").setLevel(logging.WARNING)
        # a few Dagster features the definitions use are beta/preview: nothing the demo's reader can act on
        warnings.filterwarnings("ignore", category=BetaWarning)
        warnings.filterwarnings("ignore", category=PreviewWarning)


def browse_command(dagster_home: Path, data_root: Path, configs: Path) -> str:
    """The `dagster dev` command that shows this demo: README's, when the demo used the default places."""
    cwd = Path.cwd().resolve()
    dagster = Path(sys.executable).parent / "dagster"
    exe = f"{dagster.relative_to(cwd)}" if dagster.is_relative_to(cwd) else str(dagster)
    env = []
    if dagster_home == cwd / ".dagster_home":
        env.append("DAGSTER_HOME=$PWD/.dagster_home")
    else:
        env.append(f"DAGSTER_HOME={dagster_home}")
    if data_root != cwd:
        env.append(f"A2B_DATA_ROOT={data_root}")
    if configs != cwd / "configs":
        env.append(f"A2B_CONFIGS_DIR={configs}")
    return " ".join([*env, exe, "dev"])


def run_demo(
    dagster_home: Path,
    data_root: Path,
    *,
    configs_dir: Path | None = None,
    experiment: str = DEMO_EXPERIMENT,
    tracking_mode: str | None = None,
    device: str | None = None,
    out: TextIO | None = None,
    verbose: bool = False,
) -> int:
    """Materialize corpus_manifest -> ... -> evaluation (with their checks) for `experiment`
    (configs_dir/<experiment>.yaml, default configs/demo.yaml) and print where to look.

    Returns 0 when every asset materialized and every check passed, 1 otherwise, 2 for a bad setup.
    """
    _quiet_python_logs(verbose)  # before the definitions are imported: they warn while loading
    from a2b_pipeline.configs import ConfigError
    from a2b_pipeline.defs.assets import ASSETS

    out = out or sys.stdout
    dagster_home = Path(dagster_home).expanduser().resolve()
    data_root = Path(data_root).expanduser().resolve()
    configs = Path(configs_dir or os.environ.get("A2B_CONFIGS_DIR", "configs")).expanduser().resolve()
    dagster_home.mkdir(parents=True, exist_ok=True)
    data_root.mkdir(parents=True, exist_ok=True)
    if not (dagster_home / "dagster.yaml").exists():
        (dagster_home / "dagster.yaml").write_text(_INSTANCE_YAML)

    resources = _resources(data_root, configs, tracking_mode, device)
    try:
        resources["store"].config_path(experiment)
    except ConfigError as e:
        print(f"a2b demo: {e}", file=out)
        return 2
    result, done, checks = _materialize(dagster_home, experiment, resources, out, verbose)

    # a warning (e.g. the model not reliably ahead of a baseline) is reported, not a failure of the demo
    ok = result.success and len(done) == len(ASSETS) and all(c.passed or _is_warning(c) for c in checks)
    _where_to_look(
        out, done.get("evaluation"), browse_command(dagster_home, data_root, configs), experiment, ok
    )
    return 0 if ok else 1


def _resources(
    data_root: Path, configs: Path, tracking_mode: str | None, device: str | None
) -> dict[str, Any]:
    """The environment's resources, with the demo's data root and configs, and its tracking and device."""
    from a2b_pipeline.defs.resources import ExperimentStore, TrainDevice, WandbTracking, default_resources

    env = default_resources()
    tracking, compute = env["tracking"], env["compute"]
    return {
        **env,
        "store": ExperimentStore(data_root=str(data_root), configs_dir=str(configs)),
        "tracking": WandbTracking(
            mode=tracking_mode or tracking.mode, project=tracking.project, entity=tracking.entity
        ),
        "compute": TrainDevice(device=device or compute.device, num_threads=compute.num_threads),
    }


def _materialize(
    dagster_home: Path, experiment: str, resources: dict[str, Any], out: TextIO, verbose: bool
) -> tuple[Any, dict[str, Any], list[Any]]:
    """Run the experiment's job in process on the instance in `dagster_home` (its partition added when
    new): the result, the materializations by asset name, the check evaluations."""
    from dagster import DagsterInstance, Definitions

    from a2b_pipeline.defs.assets import ASSETS, experiments
    from a2b_pipeline.defs.checks import CHECKS
    from a2b_pipeline.defs.jobs import experiment_job

    job_defs = Definitions(
        assets=ASSETS,
        asset_checks=CHECKS,
        jobs=[experiment_job],  # the code location's job: the UI's "View job" and "Re-execute" find it
        resources=resources,
        loggers={"console": _console_logger_def(out, verbose)},
    )
    with DagsterInstance.from_config(str(dagster_home)) as instance:
        if not instance.has_dynamic_partition(experiments.name, experiment):
            instance.add_dynamic_partitions(experiments.name, [experiment])
        print(
            f"a2b demo: materializing {len(ASSETS)} assets for experiment {experiment!r}",
            file=out,
            flush=True,
        )
        result = job_defs.resolve_job_def(experiment_job.name).execute_in_process(
            instance=instance,
            partition_key=experiment,
            # configured: our console instead of Dagster's default one; the job's own launch config kept
            run_config={"loggers": {"console": {}}, "ops": {"training_run": {"config": {"fresh": False}}}},
            raise_on_error=False,
            tags={"a2b/launched_by": "a2b demo"},
        )
        mats = [e.event_specific_data.materialization for e in result.get_asset_materialization_events()]
        done = {m.asset_key.to_user_string(): m for m in mats}
        checks = result.get_asset_check_evaluations()
    return result, done, checks


def _is_warning(check: Any) -> bool:
    return check.severity.value == "WARN"


def _versus(report: dict[str, Any]) -> str:
    """The model's whole-recording r (mean over channels) and its margin over each baseline that has one."""
    summary = report["summary"]
    model = fmt_interval(summary["predictors"]["model"]["recording"]["pearson"]["mean"])
    margins = [f"better than {b} by {fmt_interval(m)}" for b, m in margins_of(report).items()]
    return "; ".join([f"model {model}", *margins])


def _where_to_look(out: TextIO, ev: Any, command: str, experiment: str, ok: bool) -> None:
    """The evaluation's files, and how to open the UI on them."""
    if ev is not None:
        md = ev.metadata
        print("", file=out)
        print(f"  checkpoint:   {md['checkpoint'].value}", file=out)
        print(f"  plot:         {md['plot_path'].value}", file=out)
        print(f"  train state:  {md['train_state'].value}", file=out)
        report = json.loads(Path(md["report_path"].value).read_text())
        print(f"  whole-recording Pearson r (median [95% interval]): {_versus(report)}", file=out)
        print(f"  verdict: {verdict(report).line}", file=out)
    print("", file=out)
    print("To browse it in the Dagster UI, run from the repository root:", file=out)
    print(f"  {command}", file=out)
    print(f"and open http://127.0.0.1:3000/assets (partition {experiment!r}).", file=out)
    if not ok:
        print("a2b demo: some steps failed; `a2b demo -v` or the run's log in the UI says why.", file=out)


# ---- the command ----


def cmd_demo(args: argparse.Namespace) -> int:
    return run_demo(
        Path(args.dagster_home), Path(args.data_root), experiment=args.experiment, verbose=args.verbose
    )


def add_demo(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("demo", help="materialize the whole Dagster graph on configs/demo.yaml")
    s.add_argument("--dagster-home", default=".dagster_home")
    s.add_argument("--data-root", default=".", help="relative paths in configs resolve under it")
    s.add_argument("--experiment", default="demo", help="the config <configs dir>/<experiment>.yaml")
    s.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="the full Dagster logs"
    )
    s.set_defaults(fn=cmd_demo)
