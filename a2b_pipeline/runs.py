"""A run's life, in one place: where it lives, who may work on it, and what a launch does with it.

Every entry point (`a2b train`, `a2b resume`, `a2b sweep --train`, `a2b cv`, the Dagster `training_run` and
`fold_training_run`, a launcher of a remote job) calls :func:`run_training` (or :func:`resume_training` for
a run directory named by hand), so the same situation gets the same answer everywhere:

- nothing there (no directory, or no checkpoint): start a new run there (`fresh`: the same);
- a valid newest checkpoint of a run not complete: resume from it, saying why it had stopped;
- a valid newest checkpoint of a complete run: report it as it is, train nothing;
- an unreadable newest checkpoint and an older valid one: resume from the older; each unreadable one is
  named and kept aside as `unreadable-step_*` (never trained over);
- no readable checkpoint (corrupt, or of a newer schema): refused (exit 2), naming each;
- a run of another config: refused (exit 2), naming both hashes;
- another process working there: refused (exit 2), naming its pid and host (`fresh` too);
- `fresh` where a run is (the four cases above): a new run directory beside it.

A fresh run never moves or deletes an earlier one: it gets the next directory `<run dir>.attempt-<n>`, so a
path recorded anywhere (a Dagster materialization, a leaderboard) keeps its meaning. Old runs are removed
only by :func:`remove_runs` (`a2b runs remove`, with a dry run that lists what it would orphan).

The lock (checkpoint/lock.py) is held on the run's first directory from the choice of directory to the end of
training, so two fresh launches can't pick the same new directory and nothing changes between the choice
and the start. The torch.distributed process group a run joins (under torchrun) is left when it ends.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from a2b_pipeline.checkpoint.directory import STATE_FILE, CheckpointError, SchemaTooNewError, list_checkpoints
from a2b_pipeline.configs import ConfigError, with_run_settings
from a2b_pipeline.files import MAX_RECORD_BYTES, read_bounded
from a2b_pipeline.security import Grant, check_grant

if TYPE_CHECKING:
    from a2b_pipeline.configs import RunConfig
    from a2b_pipeline.state import TrainState

log = logging.getLogger(__name__)

ATTEMPT = ".attempt-"  # `<run dir>.attempt-<n>`: the n-th fresh start of the same run
_ATTEMPT_RE = re.compile(r"^(?P<base>.+)\.attempt-(?P<n>[0-9]+)$")
# the TrainState of a run that stopped (why, where), beside its checkpoints
STOP_FILE = f"stopped.{STATE_FILE}"
UNREADABLE = "unreadable-"  # prefix of a checkpoint set aside because it does not verify
LAUNCH_FILE = ".a2b-launch"  # in an attempt a fresh launch started: that launch's id (Dagster's root run id)

Action = Literal["start", "resume", "complete"]


class RunRefusedError(ConfigError):
    """The run directory holds what a launch must not train over (exit 2); says what and how to go on."""


# ---- naming ----


def cli_run_dir(cfg: RunConfig) -> Path:
    """`a2b train`: `<checkpoint.dir>/<name>-<config hash>`."""
    return Path(cfg.checkpoint.dir) / f"{cfg.name}-{cfg.config_hash()}"


def experiment_run_dir(experiment_dir: Path, cfg: RunConfig, data_version: str) -> Path:
    """Dagster's training_run: one run per (config, data) under the experiment's directory."""
    return Path(experiment_dir) / f"train-{cfg.config_hash()}-{data_version[:12]}"


def cv_dir(cfg: RunConfig, parent: str | Path | None = None) -> Path:
    """A cross-validation: `<parent or checkpoint.dir>/<name>-cv-<config hash>`."""
    return Path(parent or cfg.checkpoint.dir) / f"{cfg.name}-cv-{cfg.config_hash()}"


def fold_dir(root: Path, fold: int) -> Path:
    return Path(root) / f"fold-{fold}"


def first_attempt(run_dir: str | Path) -> Path:
    """The run's first directory (`x` for `x.attempt-3`): its lock guards every attempt."""
    m = _ATTEMPT_RE.match(Path(run_dir).name)
    return Path(run_dir).with_name(m["base"]) if m else Path(run_dir)


def attempts(base: str | Path) -> list[Path]:
    """The run's directories that exist: `base`, then `base.attempt-2`, `-3`, ..., oldest first."""
    base = Path(base)
    found = [(1, base)] if base.is_dir() else []
    if base.parent.is_dir():
        for p in base.parent.iterdir():
            m = _ATTEMPT_RE.match(p.name)
            if m and m["base"] == base.name and p.is_dir():
                found.append((int(m["n"]), p))
    return [p for _, p in sorted(found)]


def newest_attempt(base: str | Path) -> Path:
    found = attempts(base)
    return found[-1] if found else Path(base)


def next_attempt(base: str | Path) -> Path:
    base = Path(base)
    numbers = [int(_ATTEMPT_RE.match(p.name)["n"]) for p in attempts(base) if _ATTEMPT_RE.match(p.name)]
    return base.with_name(f"{base.name}{ATTEMPT}{max(numbers, default=1) + 1}")


def _holds_a_run(run_dir: Path) -> bool:
    """Anything a run wrote (a checkpoint, a set-aside one, an evaluation): a fresh start goes elsewhere."""
    from a2b_pipeline.checkpoint.lock import LOCK_FILE

    return run_dir.is_dir() and any(p.name not in (LOCK_FILE, LAUNCH_FILE) for p in run_dir.iterdir())


# ---- discovery ----


def is_run_dir(path: Path) -> bool:

    return bool(list_checkpoints(path)) or (path / STATE_FILE).is_file()


def find_runs(root: str | Path, depth: int = 2) -> list[Path]:
    """Run directories (with at least one committed checkpoint) at or under `root`, `depth` levels deep:
    `checkpoint.dir/<run>` (the CLI) and `checkpoint.dir/<experiment>/train-...` (Dagster); every attempt."""
    root = Path(root)
    if is_run_dir(root):
        return [root]
    if depth == 0 or not root.is_dir():
        return []
    subs = sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink())
    return [run for sub in subs for run in find_runs(sub, depth - 1)]


def _started_here(path: Path) -> bool:
    """A run started here (a checkpoint, a pointer, or only its lock: a run that failed before any)."""
    from a2b_pipeline.checkpoint.lock import LOCK_FILE

    names = {p.name for p in path.iterdir()}
    return any(n.startswith("step_") for n in names) or "last" in names or LOCK_FILE in names


def find_run_dirs(runs_dir: str | Path, cv_marker: str) -> tuple[list[Path], list[Path]]:
    """(run directories, cross-validation directories: those holding `cv_marker`) under `runs_dir`, sorted,
    failed runs included (for the leaderboard). A CV directory holds its folds' run directories; Dagster's
    experiment directories hold `train-*` run directories and their `dagster/` records (not runs)."""
    runs, cvs = [], []
    stack = [Path(runs_dir)]
    while stack:
        d = stack.pop()
        if not d.is_dir():
            continue
        if (d / cv_marker).is_file():
            cvs.append(d)
        if _started_here(d):
            runs.append(d)
            continue
        # every attempt of a run (`<run>.attempt-<n>`) is a run of its own
        stack += [p for p in d.iterdir() if p.is_dir() and not p.is_symlink() and p.name != "dagster"]
    return sorted(runs), sorted(cvs)


# ---- the policy ----


@dataclass
class RunStart:
    """What a launch found and will do: train `state` in `run_dir` (action start / resume), or report the
    complete run as it is (complete)."""

    run_dir: Path
    state: TrainState
    action: Action
    notes: list[str] = field(default_factory=list)  # what was decided and why, for the log


def _unreadable(run_dir: Path) -> tuple[TrainState | None, list[tuple[Path, str]]]:
    """The newest checkpoint that verifies, and the newer ones that don't (each with why)."""
    from a2b_pipeline.state import TrainState

    bad: list[tuple[Path, str]] = []
    for ckpt in reversed(list_checkpoints(run_dir)):
        try:
            return TrainState.from_checkpoint(ckpt), bad
        except SchemaTooNewError as e:
            bad.append((ckpt, str(e)))
            return None, bad  # never resume below what a newer version wrote
        except CheckpointError as e:
            bad.append((ckpt, str(e)))
    return None, bad


def _refusal(run_dir: Path, why: str) -> RunRefusedError:
    return RunRefusedError(
        f"{run_dir}: {why}. Nothing was changed. Launch with fresh (`--fresh`, `fresh: true`) to start a new "
        f"run in {next_attempt(first_attempt(run_dir))} (this one stays as it is)"
    )


def _set_aside_unreadable(bad: list[tuple[Path, str]], notes: list[str]) -> None:
    """Newer checkpoints that don't verify would be overwritten by the resumed run: rename them out of its
    way (kept for inspection, never loaded), and say so."""
    for ckpt, why in bad:
        aside = ckpt.with_name(f"{UNREADABLE}{ckpt.name}")
        if int(os.environ.get("RANK", "0")) == 0:
            os.replace(ckpt, aside)
        notes.append(f"checkpoint {ckpt} does not verify ({why}); skipped and kept as {aside}")


def _attempt_of(base: Path, launch: str) -> Path | None:
    """The attempt a fresh launch `launch` started (its retries continue there, not in yet another)."""
    for run_dir in attempts(base):
        try:
            if (run_dir / LAUNCH_FILE).read_text().strip() == launch:
                return run_dir
        except OSError:
            continue
    return None


def _mark_launch(run_dir: Path, launch: str | None) -> None:
    if launch and int(os.environ.get("RANK", "0")) == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / LAUNCH_FILE).write_text(launch + "\n")


def plan_run(cfg: RunConfig, base: Path, *, fresh: bool = False, launch: str | None = None) -> RunStart:
    """The table above, for a run whose first directory is `base` (the caller holds its lock). `launch`: what
    identifies a fresh launch across its retries (Dagster's root run id): a retry of a fresh launch
    continues the attempt that launch started."""
    from a2b_pipeline.state import TrainState

    current = newest_attempt(base)
    if fresh and launch and (mine := _attempt_of(base, launch)) is not None:
        current, fresh = mine, False  # a retry of this fresh launch: its own attempt, as any run
    if fresh and _holds_a_run(current):
        run_dir = next_attempt(base)
        _mark_launch(run_dir, launch)
        notes = [f"fresh run requested: training in {run_dir}; {current} stays as it is"]
        return RunStart(run_dir, TrainState.from_config(cfg, run_dir=run_dir), "start", notes)
    if fresh:
        _mark_launch(current, launch)
    state, bad = _unreadable(current)
    if state is None and bad:
        listed = "; ".join(f"{p} ({why})" for p, why in bad)
        raise _refusal(current, f"no checkpoint here can be read: {listed}")
    if state is None:
        return RunStart(
            current, TrainState.from_config(cfg, run_dir=current), "start", [f"new run in {current}"]
        )
    if state.config_hash != cfg.config_hash():
        raise _refusal(
            current,
            f"it holds a run of another config (hash {state.config_hash}; "
            f"this config's is {cfg.config_hash()})",
        )
    # the checkpoint's config reaches no further than the config given now (#24; the hash check above
    # makes them equal today: this holds whatever the hash leaves out)
    check_grant(state.config, Grant.from_config(cfg, cfg.name), str(current))
    notes: list[str] = []
    _set_aside_unreadable(bad, notes)
    state.config = with_run_settings(state.config, cfg)
    if state.status == "complete":
        notes.append(
            f"{current} is complete (step {state.global_step}, this config and data): reported as it is, "
            "nothing trained; launch with fresh to train again"
        )
        return RunStart(current, state, "complete", notes)
    notes += stop_notes(current)
    notes.append(f"resuming {current} from step {state.global_step} (status was {state.status!r})")
    return RunStart(current, state, "resume", notes)


# ---- stops, on disk ----


def read_stop(run_dir: str | Path) -> TrainState | None:
    """The TrainState a run left when it stopped (non-finite loss, an error), or None."""
    from a2b_pipeline.state import TrainState

    path = Path(run_dir) / STOP_FILE
    try:
        return TrainState.from_json(path.read_text(), source=str(path))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        log.warning("%s: unreadable (%s)", path, e)
        return None


def stop_notes(run_dir: Path) -> list[str]:
    stop = read_stop(run_dir)
    if stop is None:
        return []
    return [
        f"this run stopped at step {stop.global_step} ({stop.stop_reason}): {stop.message}. Resuming replays "
        f"from the last good checkpoint: change what caused it first (see {run_dir / STOP_FILE}), or it "
        "stops the same way again"
    ]


def record_stop(state: TrainState) -> None:
    """Write why and where a run stopped beside its checkpoints (the checkpoints themselves are never
    rewritten: a materialization may have recorded their digests). Rank 0 only."""
    from a2b_pipeline.files import atomic_write

    if int(os.environ.get("RANK", "0")) != 0 or not Path(state.run_dir).is_dir():
        return
    atomic_write(Path(state.run_dir) / STOP_FILE, state.to_json().encode())


def _clear_stop(run_dir: Path) -> None:
    if int(os.environ.get("RANK", "0")) == 0:
        (run_dir / STOP_FILE).unlink(missing_ok=True)


# ---- running ----


ModelHook = Callable[[Any, Any], None]


def model_hooks_from_env() -> list[ModelHook]:
    """`A2B_MODEL_HOOKS=module:function[,module:function]`: functions called as hook(model, state) right
    after the model is built (profiling, debugging, fault injection), whatever launched the run."""
    hooks = []
    for spec in filter(None, os.environ.get("A2B_MODEL_HOOKS", "").split(",")):
        module, _, attr = spec.strip().partition(":")
        try:
            hooks.append(getattr(importlib.import_module(module), attr))
        except (ImportError, AttributeError, ValueError) as e:
            raise ConfigError(f"A2B_MODEL_HOOKS: can't load {spec!r} ({e})") from None
    return hooks


def end_process_group(clean: bool = True) -> None:
    """Leave the torch.distributed process group the run joined (under torchrun), if any. In order: the
    run's DDP wrapper (kept alive by reference cycles) and its reducer go while the group still exists, and
    every rank has finished its last collective before any destroys it (`clean`: not after an error, when a
    peer may be gone)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return
    gc.collect()
    if clean:
        dist.barrier()
    dist.destroy_process_group()


def _train(start: RunStart, hooks: Sequence[ModelHook]) -> TrainState:
    from a2b_pipeline.train import train

    state = start.state
    try:
        state = train(state, model_hooks=[*model_hooks_from_env(), *hooks])
    except BaseException:
        if state.status == "stopped":
            record_stop(state)
        raise
    if state.status == "stopped" and state.stop_reason != "signal":
        record_stop(state)
    elif state.status == "complete":
        _clear_stop(start.run_dir)
    return state


_GROUP_DEPTH = [0]  # nesting of process_group(): the outermost one leaves the group


@contextlib.contextmanager
def process_group() -> Iterator[None]:
    """Join the process group (under torchrun) for the run's whole life, and leave it at the end. Nested
    (a sweep or a cross-validation around its runs), the group lives until the outermost one ends: a group
    is joined once per process."""
    from a2b_pipeline.training.distributed import init_distributed

    init_distributed()
    _GROUP_DEPTH[0] += 1
    try:
        yield
    except BaseException:
        _GROUP_DEPTH[0] -= 1
        if _GROUP_DEPTH[0] == 0:
            end_process_group(clean=False)
        raise
    _GROUP_DEPTH[0] -= 1
    if _GROUP_DEPTH[0] == 0:
        end_process_group()


def _ranks_agree_on(start: RunStart) -> None:
    """Under DDP every rank plans alone; rank 0 then creates directories. Wait for all before that, so no
    rank sees rank 0's new directory while planning (and picks another)."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()


@dataclass
class RunResult:
    state: TrainState  # the final TrainState (train's), or the complete run's as it was
    action: Action  # what the launch did: started, resumed, or reported a complete run
    from_step: int  # the step training started from


def run_training(
    cfg: RunConfig,
    run_dir: str | Path | None = None,
    *,
    fresh: bool = False,
    launch: str | None = None,
    model_hooks: Sequence[ModelHook] = (),
    say: Callable[[str], None] = log.info,
) -> RunResult:
    """Start, resume or report the run of `cfg` whose first directory is `run_dir` (default: the CLI's
    `<checkpoint.dir>/<name>-<hash>`), as the table in this module says; under one hold of the lock from the
    choice of directory to the end of training. `launch`: an id a retry of the same launch repeats (Dagster's
    root run id), so a retried fresh launch resumes its own new directory. Returns the final TrainState and
    what was done."""
    from a2b_pipeline.checkpoint.lock import hold_run_dir

    base = Path(run_dir) if run_dir else cli_run_dir(cfg)
    # The first directory's lock guards all attempts (a job given `x.attempt-2` holds `x` too)
    with process_group(), hold_run_dir(first_attempt(base)), hold_run_dir(base):
        start = plan_run(cfg, base, fresh=fresh, launch=launch)
        _ranks_agree_on(start)
        for note in start.notes:
            say(note)
        from_step = start.state.global_step
        if start.action == "complete":
            return RunResult(start.state, "complete", from_step)
        return RunResult(_train(start, model_hooks), start.action, from_step)


def prepare_run(
    cfg: RunConfig,
    run_dir: str | Path,
    *,
    fresh: bool = False,
    launch: str | None = None,
    say: Callable[[str], None] = log.info,
) -> RunStart:
    """run_training's decision without the training, for a launcher whose job trains elsewhere (a Slurm job
    runs `a2b train CONFIG --run-dir <start.run_dir>`, which resumes there). Decided under the run's lock;
    a fresh start's new directory is created (and marked with `launch`) before the lock is released."""
    from a2b_pipeline.checkpoint.lock import hold_run_dir

    base = Path(run_dir)
    with hold_run_dir(first_attempt(base)):
        start = plan_run(cfg, base, fresh=fresh, launch=launch)
        start.run_dir.mkdir(parents=True, exist_ok=True)
    for note in start.notes:
        say(note)
    return start


def resume_training(
    path: str | Path, *, model_hooks: Sequence[ModelHook] = (), say: Callable[[str], None] = log.info
) -> TrainState:
    """`a2b resume PATH`: continue the run of a run directory (its newest checkpoint that verifies) or of a
    checkpoint given directly, whatever its config; says why it had stopped."""
    from a2b_pipeline.checkpoint.lock import hold_run_dir
    from a2b_pipeline.state import TrainState

    path = Path(path)
    run_dir = path.parent if (path / STATE_FILE).exists() else path
    if not os.access(run_dir, os.W_OK | os.X_OK):  # else a traceback from the lock file or the first write
        raise PermissionError(f"{run_dir}: run directory not writable (a resume writes checkpoints there)")
    with process_group(), hold_run_dir(first_attempt(run_dir)), hold_run_dir(run_dir):
        state, bad = _unreadable(run_dir) if path == run_dir else (TrainState.from_checkpoint(path), [])
        if state is None:
            state = TrainState.from_checkpoint(run_dir)  # raises, naming each checkpoint and why
        # no config is given: the checkpoint's reaches no further than the environment allows (#24)
        check_grant(state.config, Grant.from_env(), str(path))
        notes: list[str] = []
        if path == run_dir:
            _set_aside_unreadable(bad, notes)
        notes += stop_notes(run_dir)
        for note in notes:
            say(note)
        return _train(RunStart(run_dir, state, "resume"), model_hooks)


# ---- removal, on purpose only ----


@dataclass
class Removal:
    run_dirs: list[Path]
    orphaned: list[str]  # records (Dagster materialization files, ...) that name a path in a removed run


def records_near(run_dirs: Sequence[Path]) -> list[Path]:
    """Where Dagster keeps the records that may name these runs: `<experiment>/dagster/` beside them."""
    found = {Path(d).resolve().parent / "dagster" for d in run_dirs}
    return sorted(p for p in found if p.is_dir())


def plan_removal(run_dirs: Sequence[Path], records_roots: Sequence[Path] = ()) -> Removal:
    """What removing these run directories would orphan: every JSON record under `records_roots` (Dagster's
    `<experiment>/dagster/`) that names a path inside one of them."""
    dirs = [Path(d).resolve() for d in run_dirs]
    orphaned = []
    for root in records_roots:
        for record in sorted(Path(root).rglob("*.json")):
            try:
                text = read_bounded(record, MAX_RECORD_BYTES).decode(errors="replace")
            except OSError:  # unreadable, not a regular file, or too big to be a record
                continue
            if any(str(d) in text for d in dirs):
                orphaned.append(str(record))
    return Removal(run_dirs=dirs, orphaned=orphaned)


def remove_runs(removal: Removal, *, dry_run: bool = True) -> Removal:
    """Delete the run directories of a plan (never following symlinks), unless `dry_run`; each under its
    lock, so a live run is not removed."""
    from a2b_pipeline.checkpoint.lock import hold_run_dir

    if not dry_run:
        for d in removal.run_dirs:
            with hold_run_dir(d):  # refuses (RunDirBusyError) while another process trains there
                shutil.rmtree(d)
    return removal


def removal_report(removal: Removal, dry_run: bool) -> str:
    verb = "would remove" if dry_run else "removed"
    return json.dumps(
        {verb: [str(d) for d in removal.run_dirs], "orphaned_records": removal.orphaned}, indent=1
    )
