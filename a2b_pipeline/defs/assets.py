"""The six assets of an experiment, one partition per run config:

    corpus_manifest -> dataset_splits -> meta_loader_spec -> training_run -> best_checkpoint -> evaluation

Bodies are thin: they call the core library, write their own files under the experiment's directory
(`<checkpoint.dir>/<experiment>/dagster/<asset>.json`, never tensors through an IO manager) and return
a `MaterializeResult` with lineage metadata and a `DataVersion`. Every data version folds in the config
hash, so a changed config or corpus gives a new version and Dagster marks everything downstream stale.
A downstream asset reads the record of its upstream's latest materialization *as the instance recorded
it* (path + sha256 from the event log), so it uses exactly the upstream it is shown to depend on.
"""

import contextlib
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    Config,
    DataVersion,
    DynamicPartitionsDefinition,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
)
from pydantic import Field

from a2b_pipeline.defs.common import (
    Experiment,
    corpus_sources,
    lineage_metadata,
    load_experiment,
    plot_predictions,
    png_markdown,
    sha256_bytes,
    sha256_json,
    upstream_record,
    write_planned_state,
    write_record,
)
from a2b_pipeline.defs.resources import ExperimentStore, TrainDevice, WandbTracking

experiments = DynamicPartitionsDefinition(name="experiments")

GROUP = "a2b"
CODE_VERSION = "1"  # bump when an asset body changes what it produces: everything downstream goes stale

# A run launcher that understands these gives the training step a GPU: the k8s launcher reads
# `dagster-k8s/config` (as a job tag for the run pod; as an op tag with the k8s_job_executor), the
# run coordinator's tag concurrency limit on `gpu` keeps one GPU run per GPU (docker/dagster.yaml).
GPU_TAGS: dict[str, Any] = {
    "gpu": "1",
    "dagster-k8s/config": {
        "container_config": {
            "resources": {"limits": {"nvidia.com/gpu": "1"}, "requests": {"nvidia.com/gpu": "1"}}
        }
    },
}
GPU_POOL = "gpu"  # op concurrency pool: `dagster instance concurrency set gpu 1` on a one-GPU host


def _dv(exp: Experiment, *parts: Any) -> DataVersion:
    return DataVersion(sha256_json([exp.config_hash, *parts])[:20])


def _experiment(
    context: Any, store: ExperimentStore, tracking: WandbTracking, compute: TrainDevice
) -> Experiment:
    from a2b_pipeline.configs import ConfigError

    try:
        return load_experiment(context.partition_key, store, tracking, compute)
    except ConfigError as e:
        raise Failure(f"experiment {context.partition_key!r}: {e}") from None


class _ToDagsterLog(logging.Handler):
    def __init__(self, log: Any):
        super().__init__(logging.INFO)
        self.log = log

    def emit(self, record: logging.LogRecord) -> None:
        level = "warning" if record.levelno == logging.WARNING else "info"
        if record.levelno >= logging.ERROR:
            level = "error"
        getattr(self.log, level)(f"{record.name}: {record.getMessage()}")


@contextlib.contextmanager
def _forward_library_logs(context: Any) -> Iterator[None]:
    """The library's log lines (per-epoch/validation progress) go to the run's log in the UI."""
    logger = logging.getLogger("a2b_pipeline")
    handler = _ToDagsterLog(context.log)
    old_level = logger.level
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def _guard_upstream(exp: Experiment, rec: dict[str, Any], asset_name: str) -> None:
    if rec.get("config_hash") != exp.config_hash:
        raise Failure(
            f"{exp.config_file} changed since {asset_name} was materialized (config hash "
            f"{rec.get('config_hash')} -> {exp.config_hash}): materialize {asset_name} and what follows again"
        )


# ---- corpus_manifest ----


def _recording_row(r: Any) -> dict[str, Any]:
    return {
        "recording_id": r.recording_id,
        "subject_id": r.subject_id,
        "audio_path": r.audio_path,
        "signals": {ch: {"path": s.path, "column": s.column} for ch, s in r.signals.items()},
        "offset_seconds": r.offset_seconds,
        "duration_seconds": r.duration_seconds,
        "row": r.row,
    }


def _skipped_table(skipped: list[dict[str, Any]], limit: int = 50) -> MetadataValue:
    if not skipped:
        return MetadataValue.md("none")
    lines = ["| dataset | row | path | reason |", "|---|---|---|---|"]
    for s in skipped[:limit]:
        reason = str(s["reason"]).replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {s.get('dataset', '')} | {s.get('row') or ''} | {s['path']} | {reason} |")
    if len(skipped) > limit:
        lines.append(f"\n... and {len(skipped) - limit} more (see the record file)")
    return MetadataValue.md("\n".join(lines))


@asset(
    partitions_def=experiments,
    group_name=GROUP,
    code_version=CODE_VERSION,
    kinds={"python"},
    description="The recordings each dataset of the experiment's config lists (manifests / corpus roots), "
    "the recordings skipped with their reasons, and a fingerprint (sizes, mtimes/etags) of every file.",
)
def corpus_manifest(
    context: AssetExecutionContext, store: ExperimentStore, tracking: WandbTracking, compute: TrainDevice
) -> MaterializeResult:
    from a2b_pipeline.data import remote
    from a2b_pipeline.data.adapters import list_recordings
    from a2b_pipeline.data.pipeline import compute_data_version

    exp = _experiment(context, store, tracking, compute)
    listings: dict[str, Any] = {}
    datasets: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    files: dict[str, Any] = {}
    sources = corpus_sources(exp.cfg)
    with _forward_library_logs(context):
        for ds in exp.cfg.data.datasets:
            listing = listings[ds.name] = list_recordings(ds, exp.cfg.data)
            rows = [_recording_row(r) for r in listing.recordings]
            for r in listing.recordings:
                for p in [r.audio_path, *(s.path for s in r.signals.values())]:
                    if p not in files:
                        try:
                            # the listing just fetched sizes/ETags: no request per file
                            files[p] = remote.file_info(p).as_dict()
                        except remote.RemoteNotFoundError:
                            files[p] = {"missing": True}
            skipped += [{**asdict(s), "dataset": s.dataset or ds.name} for s in listing.skipped]
            datasets.append(
                {"name": ds.name, "type": ds.type.value, "source": sources.get(ds.name), "recordings": rows}
            )
            context.log.info(f"{ds.name}: {len(rows)} recordings, {len(listing.skipped)} skipped")
    # The same version training will record (listing + data settings), computed without decoding anything.
    data_version = compute_data_version(exp.cfg, listings)
    record = write_record(
        exp,
        "corpus_manifest",
        {
            "experiment": exp.name,
            "config_hash": exp.config_hash,
            "data_version": data_version,
            "datasets": datasets,
            "skipped": skipped,
            "files": files,
            "on_bad_recording": exp.cfg.data.on_bad_recording,
        },
    )
    state, state_path = write_planned_state(exp, "corpus_manifest", data_version)
    md = lineage_metadata(exp, state, state_path, data_version, record)
    md.update(
        {
            "recordings": MetadataValue.int(sum(len(d["recordings"]) for d in datasets)),
            "recordings_by_dataset": MetadataValue.json({d["name"]: len(d["recordings"]) for d in datasets}),
            "subjects": MetadataValue.int(
                len({(d["name"], r["subject_id"]) for d in datasets for r in d["recordings"]})
            ),
            "files": MetadataValue.int(len(files)),
            "skipped_count": MetadataValue.int(len(skipped)),
            "skipped": _skipped_table(skipped),
            "sources": MetadataValue.json(sources),
        }
    )
    return MaterializeResult(metadata=md, data_version=_dv(exp, data_version, skipped))


# ---- dataset_splits ----


def _window_checks(prepared: Any) -> tuple[int, int, list[str]]:
    """(windows checked, windows with a non-finite x or y, where)."""
    import torch

    total, bad, where = 0, 0, []
    for split, by_ds in prepared.splits.items():
        for name, ds in by_ds.items():
            for i in range(len(ds)):
                x, y = ds[i]
                total += 1
                if not (bool(torch.isfinite(y).all()) and bool(torch.isfinite(x).all())):
                    bad += 1
                    if len(where) < 20:
                        rec, second = ds.window_info(i)
                        where.append(
                            f"{split}/{name}: {rec.recording_id} at {second:.1f} s ({rec.audio_path})"
                        )
    return total, bad, where


@asset(
    deps=[corpus_manifest],
    partitions_def=experiments,
    group_name=GROUP,
    code_version=CODE_VERSION,
    kinds={"pytorch"},
    check_specs=[
        AssetCheckSpec(
            "targets_finite",
            asset="dataset_splits",
            blocking=True,
            description="Every window's target (and features) is finite after normalisation: no NaN/inf.",
        ),
        AssetCheckSpec(
            "split_coverage",
            asset="dataset_splits",
            description="Train, val and test splits all have windows; reports the share of recordings kept.",
        ),
    ],
    description="Subject-disjoint train/val/test splits of the decoded corpus, the windows per split and "
    "dataset, normalisation statistics (train only), the recordings skipped while decoding, and the data "
    "version training will record.",
)
def dataset_splits(
    context: AssetExecutionContext, store: ExperimentStore, tracking: WandbTracking, compute: TrainDevice
) -> MaterializeResult:
    from a2b_pipeline.data.pipeline import prepare_data

    exp = _experiment(context, store, tracking, compute)
    corpus = upstream_record(context, "corpus_manifest")
    _guard_upstream(exp, corpus, "corpus_manifest")
    with _forward_library_logs(context):
        prepared = prepare_data(exp.cfg)
    split_names = ("train", "val", "test")
    windows = {s: {n: len(ds) for n, ds in prepared.splits.get(s, {}).items()} for s in split_names}
    recordings = {
        s: {n: [r.recording_id for r in recs] for n, recs in prepared.recordings.get(s, {}).items()}
        for s in split_names
    }
    subjects = {
        s: sorted(
            {f"{r.dataset}/{r.subject_id}" for recs in prepared.recordings.get(s, {}).values() for r in recs}
        )
        for s in split_names
    }
    skipped = [asdict(s) for s in prepared.skipped]
    listed = sum(len(d["recordings"]) for d in corpus["datasets"])
    used = sum(len(v) for s in split_names for v in recordings[s].values())
    checked, bad, where = _window_checks(prepared)
    norm = prepared.norm.to_dict() if hasattr(prepared.norm, "to_dict") else {}
    record = write_record(
        exp,
        "dataset_splits",
        {
            "experiment": exp.name,
            "config_hash": exp.config_hash,
            "data_version": prepared.data_version,
            "corpus_data_version": corpus["data_version"],
            "windows": windows,
            "recordings": recordings,
            "subjects": subjects,
            "skipped": skipped,
            "norm": norm,
        },
    )
    state, state_path = write_planned_state(exp, "dataset_splits", prepared.data_version)
    md = lineage_metadata(exp, state, state_path, prepared.data_version, record)
    md.update(
        {
            "windows": MetadataValue.json(windows),
            **{f"{s}_windows": MetadataValue.int(sum(windows[s].values())) for s in split_names},
            **{f"{s}_subjects": MetadataValue.int(len(subjects[s])) for s in split_names},
            "recordings_used": MetadataValue.int(used),
            "skipped_count": MetadataValue.int(len(skipped)),
            "skipped": _skipped_table(skipped),
        }
    )
    empty = [s for s in split_names if sum(windows[s].values()) == 0]
    checks = [
        AssetCheckResult(
            check_name="targets_finite",
            passed=bad == 0,
            metadata={
                "windows_checked": checked,
                "non_finite_windows": bad,
                "where": MetadataValue.json(where),
            },
            description=None if bad == 0 else f"{bad} of {checked} windows have NaN/inf values",
        ),
        AssetCheckResult(
            check_name="split_coverage",
            passed=not empty,
            severity=AssetCheckSeverity.WARN,
            metadata={
                "empty_splits": MetadataValue.json(empty),
                "recordings_listed": listed,
                "recordings_used": used,
                "recordings_kept_share": float(used / listed) if listed else 0.0,
            },
            description=f"no windows in {', '.join(empty)}" if empty else None,
        ),
    ]
    return MaterializeResult(
        metadata=md, data_version=_dv(exp, prepared.data_version, windows, recordings), check_results=checks
    )


# ---- meta_loader_spec ----


@asset(
    deps=[dataset_splits],
    partitions_def=experiments,
    group_name=GROUP,
    code_version=CODE_VERSION,
    kinds={"pytorch"},
    description="What the MetaDataLoader will do per split: its loaders (dataset, windows, batches), "
    "sampling weights and their schedule, batch size, seed, and the planned number of optimizer steps.",
)
def meta_loader_spec(
    context: AssetExecutionContext, store: ExperimentStore, tracking: WandbTracking, compute: TrainDevice
) -> MaterializeResult:
    from a2b_pipeline.data.pipeline import make_loader, prepare_data

    exp = _experiment(context, store, tracking, compute)
    splits = upstream_record(context, "dataset_splits")
    _guard_upstream(exp, splits, "dataset_splits")
    with _forward_library_logs(context):
        prepared = prepare_data(exp.cfg)
    if prepared.data_version != splits["data_version"]:
        raise Failure(
            "the corpus changed since dataset_splits was materialized (data version "
            f"{splits['data_version']} -> {prepared.data_version}): materialize corpus_manifest+ again"
        )
    cfg = exp.cfg
    loaders: dict[str, Any] = {}
    for split in ("train", "val", "test"):
        if not any(len(ds) for ds in prepared.splits.get(split, {}).values()):
            continue
        ml = make_loader(prepared, cfg, split)
        names = list(getattr(ml, "dataset_names", [n for n, ds in prepared.splits[split].items() if len(ds)]))
        loaders[split] = {
            "batches_per_epoch": len(ml),
            "weights": [float(w) for w in ml.weights],
            "loaders": [
                {"dataset": n, "windows": len(prepared.splits[split][n]), "batches": len(dl)}
                for n, dl in zip(names, ml.dataloaders, strict=True)
            ],
        }
    train_batches = loaders.get("train", {}).get("batches_per_epoch", 0)
    planned = _planned_steps(cfg, train_batches)
    spec = {
        "experiment": exp.name,
        "config_hash": exp.config_hash,
        "data_version": prepared.data_version,
        "batch_size": cfg.data.batch_size,
        "seed": cfg.seed,
        "splits": loaders,
        "weights": cfg.data.weights_at(0),
        "weight_schedule": [m.model_dump() for m in cfg.data.weight_schedule],
        "grad_accum_steps": cfg.train.grad_accum_steps,
        "planned_steps": planned,
    }
    record = write_record(exp, "meta_loader_spec", spec)
    state, state_path = write_planned_state(exp, "meta_loader_spec", prepared.data_version)
    md = lineage_metadata(exp, state, state_path, prepared.data_version, record)
    md.update(
        {
            "train_batches_per_epoch": MetadataValue.int(train_batches),
            "planned_steps": MetadataValue.int(planned),
            "weights": MetadataValue.json({d.name: d.weight for d in cfg.data.datasets}),
            "spec": MetadataValue.json(loaders),
        }
    )
    spec_for_version = {k: v for k, v in spec.items() if k != "experiment"}
    return MaterializeResult(metadata=md, data_version=_dv(exp, spec_for_version))


def _planned_steps(cfg: Any, batches_per_epoch: int) -> int:
    micro = batches_per_epoch * (cfg.train.num_epochs or 0)
    by_epochs = math.ceil(micro / cfg.train.grad_accum_steps) if cfg.train.num_epochs else None
    if cfg.train.max_steps is None:
        return by_epochs or 0
    return min(cfg.train.max_steps, by_epochs) if by_epochs is not None else cfg.train.max_steps


# ---- training_run ----


class TrainingRunConfig(Config):
    fresh: bool = Field(
        default=False,
        description="Start a new run even if a run of this config and data exists (the old run directory is "
        "kept, renamed). Otherwise an interrupted run resumes from its last checkpoint and a complete one is "
        "reported as it is.",
    )


def _checkpoint_dir(path: str | None) -> Path | None:
    return Path(path).resolve() if path else None


@asset(
    deps=[meta_loader_spec],
    partitions_def=experiments,
    group_name=GROUP,
    code_version=CODE_VERSION,
    kinds={"pytorch"},
    op_tags=GPU_TAGS,
    pool=GPU_POOL,
    description="Runs `train` for the experiment on the data dataset_splits recorded, in "
    "`<checkpoint.dir>/<experiment>/train-<config hash>-<data version>`; a relaunch after an interruption "
    "resumes from that directory's newest valid checkpoint.",
)
def training_run(
    context: AssetExecutionContext,
    config: TrainingRunConfig,
    store: ExperimentStore,
    tracking: WandbTracking,
    compute: TrainDevice,
) -> MaterializeResult:
    from a2b_pipeline.configs import with_run_settings
    from a2b_pipeline.state import TrainState, list_checkpoints
    from a2b_pipeline.train import train

    exp = _experiment(context, store, tracking, compute)
    splits = upstream_record(context, "dataset_splits")
    spec = upstream_record(context, "meta_loader_spec")
    _guard_upstream(exp, splits, "dataset_splits")
    _guard_upstream(exp, spec, "meta_loader_spec")
    data_version = splits["data_version"]
    if spec["data_version"] != data_version:
        raise Failure(
            "meta_loader_spec and dataset_splits disagree on the data version: materialize both again"
        )
    run_dir = exp.run_dir(data_version)
    if config.fresh and run_dir.exists():
        aside = run_dir.with_name(f"{run_dir.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
        run_dir.rename(aside)
        context.log.info(f"fresh run requested: the previous run directory is now {aside}")

    reused = False
    if list_checkpoints(run_dir):
        state = TrainState.from_checkpoint(run_dir)
        state.config = with_run_settings(state.config, exp.cfg)
        if state.status == "complete":
            reused = True
            context.log.info(
                f"{run_dir} already holds a complete run of this config and data (step {state.global_step}); "
                "reporting it. Launch with config `fresh: true` to train again."
            )
        else:
            context.log.info(
                f"resuming {run_dir} from step {state.global_step} (status was {state.status!r})"
            )
    else:
        state = TrainState.from_config(exp.cfg, run_dir=run_dir)
        context.log.info(f"starting a new run in {run_dir}")
    resumed_from = state.global_step
    if not reused:
        with _forward_library_logs(context):
            state = train(state)

    last = _checkpoint_dir(state.checkpoint.last_path)
    state_path = last / "train_state.json" if last else run_dir / "train_state.json"
    payload = {
        "experiment": exp.name,
        "config_hash": state.config_hash,
        "data_version": state.data_version,
        "run_dir": str(run_dir),
        "status": state.status,
        "global_step": state.global_step,
        "resumed_from_step": resumed_from,
        "last_checkpoint": str(last) if last else None,
        "best_checkpoint": str(_checkpoint_dir(state.checkpoint.best_path) or "") or None,
        "best_metric": state.checkpoint.best_metric,
        "best_value": state.checkpoint.best_value,
        "train_state": str(state_path),
        "wandb_run_path": state.wandb_run_path,
        "message": state.message,
    }
    record = write_record(exp, "training_run", payload)
    md = lineage_metadata(exp, state, state_path, state.data_version, record, checkpoint=last)
    md.update(
        {
            "run_dir": MetadataValue.path(str(run_dir)),
            "resumed_from_step": MetadataValue.int(resumed_from),
            "reused_complete_run": reused,
            "epoch": MetadataValue.int(state.epoch),
            "samples_seen": MetadataValue.int(state.samples_seen),
            "message": state.message or "",
            "data_version_matches_splits": state.data_version == data_version,
        }
    )
    if state.status != "complete":
        # Not a materialization: the checkpoint is kept, and launching again resumes from it.
        raise Failure(
            description=f"training {state.status} at step {state.global_step}: {state.message}. "
            f"Launch training_run again to resume from {last} (or with config `fresh: true` to start over).",
            metadata=md,
        )
    if state.data_version != data_version:
        context.log.warning(
            f"training read data version {state.data_version}, dataset_splits recorded {data_version}: "
            "the corpus changed while the run went on"
        )
    return MaterializeResult(metadata=md, data_version=_dv(exp, md["checkpoint_sha256"]))


# ---- best_checkpoint ----


@asset(
    deps=[training_run],
    partitions_def=experiments,
    group_name=GROUP,
    code_version=CODE_VERSION,
    kinds={"pytorch"},
    description="The training run's best checkpoint by `checkpoint.metric`, verified (every file's checksum) "
    "and pinned by the sha256 of its train_state.json.",
)
def best_checkpoint(
    context: AssetExecutionContext, store: ExperimentStore, tracking: WandbTracking, compute: TrainDevice
) -> MaterializeResult:
    from a2b_pipeline.state import CheckpointError, TrainState

    exp = _experiment(context, store, tracking, compute)
    run = upstream_record(context, "training_run")
    _guard_upstream(exp, run, "training_run")
    chosen = run.get("best_checkpoint") or run.get("last_checkpoint")
    if not chosen:
        raise Failure(f"training_run [{exp.name}] recorded no checkpoint")
    ckpt = Path(chosen)
    try:
        state = TrainState.from_checkpoint(ckpt)  # checks every file's digest
    except CheckpointError as e:
        raise Failure(f"best checkpoint of {exp.name} does not verify: {e}") from None
    state_path = ckpt / "train_state.json"
    ckpt_sha = sha256_bytes(state_path.read_bytes())
    payload = {
        "experiment": exp.name,
        "config_hash": state.config_hash,
        "data_version": state.data_version,
        "checkpoint": str(ckpt),
        "checkpoint_sha256": ckpt_sha,
        "model_digest": state.checkpoint.files.get("model.safetensors"),
        "files": state.checkpoint.files,
        "step": state.global_step,
        "best_metric": state.checkpoint.best_metric,
        "best_value": state.checkpoint.best_value,
        "train_state": str(state_path),
        "wandb_run_path": state.wandb_run_path,
        "training_run": run["train_state"],
    }
    record = write_record(exp, "best_checkpoint", payload)
    md = lineage_metadata(exp, state, state_path, state.data_version, record, checkpoint=ckpt)
    md["is_last_checkpoint"] = str(ckpt) == str(run.get("last_checkpoint"))
    return MaterializeResult(metadata=md, data_version=_dv(exp, ckpt_sha))


# ---- evaluation ----


@asset(
    deps=[best_checkpoint],
    partitions_def=experiments,
    group_name=GROUP,
    code_version=CODE_VERSION,
    kinds={"pytorch"},
    description="Test-split metrics of the best checkpoint (the one best_checkpoint recorded, verified by "
    "sha256) and a plot of predicted vs true biosignal for a few test windows.",
)
def evaluation(
    context: AssetExecutionContext, store: ExperimentStore, tracking: WandbTracking, compute: TrainDevice
) -> MaterializeResult:
    import torch

    from a2b_pipeline.data.pipeline import prepare_data
    from a2b_pipeline.evaluate import evaluate_checkpoint, predict_windows
    from a2b_pipeline.state import TrainState

    exp = _experiment(context, store, tracking, compute)
    best = upstream_record(context, "best_checkpoint")
    _guard_upstream(exp, best, "best_checkpoint")
    ckpt = Path(best["checkpoint"])
    state_path = ckpt / "train_state.json"
    try:
        ckpt_sha = sha256_bytes(state_path.read_bytes())
    except OSError as e:
        raise Failure(
            f"{ckpt}: the recorded best checkpoint is gone ({e}); materialize training_run+"
        ) from None
    if ckpt_sha != best["checkpoint_sha256"]:
        raise Failure(f"{ckpt} changed since best_checkpoint recorded it (sha256 differs)")
    state = TrainState.from_checkpoint(ckpt)
    device = "cuda" if torch.cuda.is_available() and state.config.train.device != "cpu" else "cpu"
    with _forward_library_logs(context):
        data = prepare_data(state.config)
        metrics = evaluate_checkpoint(ckpt, "test", data=data, device=device)
        windows = predict_windows(ckpt, "test", 3, data=data)
    metrics = {k: float(v) for k, v in metrics.items()}
    cfg = state.config
    title = f"{exp.name}: step {state.global_step}, test " + ", ".join(
        f"{k.removeprefix('test/')}={v:.3f}" for k, v in metrics.items() if k.endswith("pearson")
    )
    png = plot_predictions([tuple(w) for w in windows], list(cfg.data.channels), cfg.data.target_rate, title)
    plot_path = exp.records / f"evaluation-{ckpt_sha[:12]}.png"
    from a2b_pipeline.defs.common import atomic_write

    atomic_write(plot_path, png)
    payload = {
        "experiment": exp.name,
        "config_hash": state.config_hash,
        "data_version": state.data_version,
        "evaluated_data_version": data.data_version,
        "checkpoint": str(ckpt),
        "checkpoint_sha256": ckpt_sha,
        "split": "test",
        "metrics": metrics,
        "plot": str(plot_path),
        "windows_plotted": len(windows),
        "device": device,
    }
    record = write_record(exp, "evaluation", payload)
    md = lineage_metadata(exp, state, state_path, state.data_version, record, checkpoint=ckpt)
    md.update({k: MetadataValue.float(v) for k, v in sorted(metrics.items())})
    md.update(
        {
            "plot": png_markdown(png, f"{exp.name}: predicted vs true"),
            "plot_path": MetadataValue.path(str(plot_path)),
            "evaluated_data_version": data.data_version,
            "data_version_matches_training": data.data_version == state.data_version,
        }
    )
    return MaterializeResult(metadata=md, data_version=_dv(exp, ckpt_sha, metrics))


ASSETS = [corpus_manifest, dataset_splits, meta_loader_spec, training_run, best_checkpoint, evaluation]
