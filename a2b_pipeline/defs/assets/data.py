"""The data assets: what the corpus lists, how it splits into windows, what the MetaDataLoader will do.

corpus_manifest -> dataset_splits -> meta_loader_spec
"""

from dataclasses import asdict
from typing import Any

from dagster import AssetCheckResult, AssetCheckSeverity, AssetCheckSpec, Failure, MetadataValue

from a2b_pipeline.data.splits import SPLITS
from a2b_pipeline.defs.common import (
    CORPUS_FINGERPRINT,
    corpus_fingerprint,
    corpus_sources,
    json_details,
    missing_corpora,
    rounded,
)
from a2b_pipeline.defs.partitions import experiments
from a2b_pipeline.defs.template import AssetStep, Produced, experiment_asset

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


def _file_infos(recordings: list[Any]) -> dict[str, Any]:
    """Size + mtime/ETag of each audio and signal file (the listing fetched them: no request per file)."""
    from a2b_pipeline.data import remote

    files: dict[str, Any] = {}
    for r in recordings:
        for p in [r.audio_path, *(s.path for s in r.signals.values())]:
            if p not in files:
                try:
                    files[p] = remote.file_info(p).as_dict()
                except remote.RemoteNotFoundError:
                    files[p] = {"missing": True}
    return files


def _listed(
    cfg: Any, listings: dict[str, Any], sources: dict[str, str], log: Any
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """What corpus_manifest records of the datasets' listings: (datasets with their recordings, the
    recordings skipped with the reason, a fingerprint of every file)."""
    datasets: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    files: dict[str, Any] = {}
    for ds in cfg.data.datasets:
        listing = listings[ds.name]
        rows = [_recording_row(r) for r in listing.recordings]
        files.update(_file_infos(listing.recordings))
        skipped += [{**asdict(s), "dataset": s.dataset or ds.name} for s in listing.skipped]
        datasets.append(
            {"name": ds.name, "type": ds.type, "source": sources.get(ds.name), "recordings": rows}
        )
        log.info(f"{ds.name}: {len(rows)} recordings, {len(listing.skipped)} skipped")
    return datasets, skipped, files


CORPUS_AVAILABLE = "corpus_available"


@experiment_asset(
    code_version="1",
    kinds={"python"},
    check_specs=[
        AssetCheckSpec(
            CORPUS_AVAILABLE,
            asset="corpus_manifest",
            partitions_def=experiments,
            description="Every dataset's manifest or corpus root is on this machine. The experiment_configs "
            "sensor evaluates it when it registers an experiment, so a partition whose corpus is missing "
            "shows it before anyone launches it.",
        )
    ],
    description="The recordings each dataset of the experiment's config lists (manifests / corpus roots), "
    "the recordings skipped with their reasons, and a fingerprint (sizes, mtimes/etags) of every file.",
)
def corpus_manifest(step: AssetStep) -> Produced:
    from a2b_pipeline.data.corpora import list_recordings
    from a2b_pipeline.data.pipeline import compute_data_version

    cfg = step.exp.cfg
    if missing := missing_corpora(cfg):
        raise Failure(
            description=f"{step.exp.name}: the corpus is not on this machine. " + "; ".join(missing)
        )
    sources = corpus_sources(cfg)
    listings = {ds.name: list_recordings(ds, cfg.data) for ds in cfg.data.datasets}
    datasets, skipped, files = _listed(cfg, listings, sources, step.log)
    # The same version training will record (listing + data settings), computed without decoding anything.
    data_version = compute_data_version(cfg, listings)
    # What the corpus sensor compares with: the corpus as this materialization saw it (after generating a
    # synthetic one), so the pipeline's own writes are never taken for a change from outside.
    fingerprint = corpus_fingerprint(cfg)
    return Produced(
        record={
            "data_version": data_version,
            "datasets": datasets,
            "skipped": skipped,
            "files": files,
            "on_bad_recording": cfg.data.on_bad_recording,
        },
        version_parts=[data_version, skipped],
        metadata={
            "recordings": MetadataValue.int(sum(len(d["recordings"]) for d in datasets)),
            "recordings_by_dataset": ", ".join(f"{d['name']}: {len(d['recordings'])}" for d in datasets),
            "subjects": MetadataValue.int(
                len({(d["name"], r["subject_id"]) for d in datasets for r in d["recordings"]})
            ),
            "files": MetadataValue.int(len(files)),
            "skipped_count": MetadataValue.int(len(skipped)),
            "skipped": _skipped_table(skipped),
            "sources": json_details(sources),
            CORPUS_FINGERPRINT: fingerprint,
        },
        checks=[AssetCheckResult(check_name=CORPUS_AVAILABLE, passed=True)],
    )


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


def _split_checks(
    windows: dict[str, dict[str, int]], prepared: Any, listed: int, used: int
) -> list[AssetCheckResult]:
    checked, bad, where = _window_checks(prepared)
    empty = [s for s in SPLITS if sum(windows[s].values()) == 0]
    return [
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
                "recordings_kept_share": rounded(used / listed if listed else 0.0),
            },
            description=f"no windows in {', '.join(empty)}" if empty else None,
        ),
    ]


def _per_split(prepared: Any) -> tuple[dict[str, Any], dict[str, Any], dict[str, list[str]]]:
    """Per split: the windows of each dataset, its recordings' ids, and its subjects (`dataset/subject`)."""
    windows = {s: {n: len(ds) for n, ds in prepared.splits.get(s, {}).items()} for s in SPLITS}
    recordings = {
        s: {n: [r.recording_id for r in recs] for n, recs in prepared.recordings.get(s, {}).items()}
        for s in SPLITS
    }
    subjects = {
        s: sorted(
            {f"{r.dataset}/{r.subject_id}" for recs in prepared.recordings.get(s, {}).values() for r in recs}
        )
        for s in SPLITS
    }
    return windows, recordings, subjects


@experiment_asset(
    code_version="2",
    reads=["corpus_manifest"],
    kinds={"pytorch"},
    check_specs=[
        AssetCheckSpec(
            "targets_finite",
            asset="dataset_splits",
            partitions_def=experiments,
            blocking=True,
            description="Every window's target (and features) is finite after normalisation: no NaN/inf.",
        ),
        AssetCheckSpec(
            "split_coverage",
            asset="dataset_splits",
            partitions_def=experiments,
            description="Train, val and test splits all have windows; reports the share of recordings kept.",
        ),
    ],
    description="Train/val/test splits of the decoded corpus grouped by data.split.group_by (subject, "
    "stimulus or both; recordings dropped to keep both disjoint are counted), the windows per split and "
    "dataset, normalisation statistics (train only), the recordings skipped while decoding, and the data "
    "version training will record.",
)
def dataset_splits(step: AssetStep) -> Produced:
    from a2b_pipeline.data.pipeline import prepare_data

    corpus = step.upstream["corpus_manifest"]
    prepared = prepare_data(step.exp.cfg)
    windows, recordings, subjects = _per_split(prepared)
    skipped = [asdict(s) for s in prepared.skipped]
    split = prepared.split_summary()
    listed = sum(len(d["recordings"]) for d in corpus["datasets"])
    used = sum(len(v) for s in SPLITS for v in recordings[s].values())
    return Produced(
        record={
            "data_version": prepared.data_version,
            "corpus_data_version": corpus["data_version"],
            "windows": windows,
            "recordings": recordings,
            "subjects": subjects,
            "skipped": skipped,
            "split": split,
            "norm": prepared.norm.to_dict() if hasattr(prepared.norm, "to_dict") else {},
        },
        version_parts=[prepared.data_version, windows, recordings],
        metadata={
            **{f"{s}_windows": MetadataValue.int(sum(windows[s].values())) for s in SPLITS},
            **{f"{s}_subjects": MetadataValue.int(len(subjects[s])) for s in SPLITS},
            "recordings_used": MetadataValue.int(used),
            "skipped_count": MetadataValue.int(len(skipped)),
            "group_by": split["group_by"],
            "dropped_count": MetadataValue.int(split["dropped"]),
            "dropped_by_dataset": MetadataValue.json(split["dropped_by_dataset"]),
            "skipped": _skipped_table(skipped),
            "windows_by_dataset": json_details(windows),
        },
        checks=_split_checks(windows, prepared, listed, used),
    )


# ---- meta_loader_spec ----


def _loader_plan(prepared: Any, cfg: Any) -> dict[str, Any]:
    """Per split with windows: batches per epoch, weights, and each loader's dataset, windows, batches."""
    from a2b_pipeline.data.pipeline import make_loader

    loaders: dict[str, Any] = {}
    for split in SPLITS:
        if not any(len(ds) for ds in prepared.splits.get(split, {}).values()):
            continue
        ml = make_loader(prepared, cfg, split)
        names = ml.dataset_names
        loaders[split] = {
            "batches_per_epoch": len(ml),
            "weights": [float(w) for w in ml.weights],
            "loaders": [
                {"dataset": n, "windows": len(prepared.splits[split][n]), "batches": len(dl)}
                for n, dl in zip(names, ml.dataloaders, strict=True)
            ],
        }
    return loaders


@experiment_asset(
    code_version="1",
    reads=["dataset_splits"],
    kinds={"pytorch"},
    description="What the MetaDataLoader will do per split: its loaders (dataset, windows, batches), "
    "sampling weights and their schedule, batch size, seed, and the planned number of optimizer steps.",
)
def meta_loader_spec(step: AssetStep) -> Produced:
    from a2b_pipeline.data.pipeline import prepare_data
    from a2b_pipeline.training.schedule import planned_steps

    splits, cfg = step.upstream["dataset_splits"], step.exp.cfg
    prepared = prepare_data(cfg)
    if prepared.data_version != splits["data_version"]:
        raise Failure(
            "the corpus changed since dataset_splits was materialized (data version "
            f"{splits['data_version']} -> {prepared.data_version}): materialize corpus_manifest+ again"
        )
    loaders = _loader_plan(prepared, cfg)
    train_batches = loaders.get("train", {}).get("batches_per_epoch", 0)
    planned = planned_steps(cfg, train_batches)
    spec = {
        "data_version": prepared.data_version,
        "batch_size": cfg.data.batch_size,
        "seed": cfg.seed,
        "splits": loaders,
        "weights": cfg.data.weights_at(0),
        "weight_schedule": [m.model_dump() for m in cfg.data.weight_schedule],
        "grad_accum_steps": cfg.train.grad_accum_steps,
        "planned_steps": planned,
    }
    return Produced(
        record=spec,
        version_parts=[{"config_hash": step.exp.config_hash, **spec}],
        metadata={
            "planned_steps": MetadataValue.int(planned),
            "train_batches_per_epoch": MetadataValue.int(train_batches),
            "batch_size": MetadataValue.int(cfg.data.batch_size),
            "weights": ", ".join(f"{d.name}: {d.weight:g}" for d in cfg.data.datasets),
            "loaders": " · ".join(
                f"{split}: {len(v['loaders'])} loader(s), {v['batches_per_epoch']} batches/epoch"
                for split, v in loaders.items()
            ),
            "spec": json_details(loaders),
        },
    )
