"""RunConfig -> PreparedData (listed, loaded, split, normalised windows) -> MetaDataLoader per split."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from a2b_pipeline.configs import HASHED_UNLESS_DEFAULT, RunConfig, drop_defaults
from a2b_pipeline.data import cache_admin, remote
from a2b_pipeline.data.corpora import list_recordings
from a2b_pipeline.data.datasets import (
    LoadedRecording,
    NormStats,
    WindowDataset,
    compute_norm_stats,
    load_recording,
    normalizes_inputs,
)
from a2b_pipeline.data.meta_dataloader import MetaDataLoader, ShardedEpochSampler, derive_seed
from a2b_pipeline.data.recording import BadRecordingError, Listing, Recording, Skipped
from a2b_pipeline.data.splits import SPLITS, GroupedSplit, group_key, split_fold, split_grouped
from a2b_pipeline.files import FileRefusedError, atomic_write, read_json

log = logging.getLogger(__name__)

# DataConfig fields that change what the windows contain (batching, workers and weights don't).
_DATA_KEYS = (
    "channels",
    "sample_rate",
    "n_mels",
    "frame_rate",
    "target_rate",
    "window_seconds",
    "hop_seconds",
    "normalize",
    "val_fraction",
    "test_fraction",
    "on_bad_recording",
    "duration_tolerance_seconds",
    "split",
)


@dataclass
class LeftOut:
    """A loaded recording that no split may hold (data.split.group_by: subject_and_stimulus), and why."""

    loaded: LoadedRecording
    reason: str

    @property
    def rec(self) -> Recording:
        return self.loaded.rec


@dataclass
class PreparedData:
    splits: dict[str, dict[str, WindowDataset]]  # split -> dataset name -> dataset (names in config order)
    recordings: dict[str, dict[str, list[Recording]]]  # split -> dataset name -> recordings
    skipped: list[Skipped]
    norm: NormStats  # from the train split only
    data_version: str  # sha256 over the listing (paths, sizes, mtimes/etags) + data settings
    group_by: str = "subject"
    dropped: list[LeftOut] = field(default_factory=list)  # left out to keep the split groups disjoint

    def split_summary(self) -> dict:
        """Recordings, subjects and stimuli per split, and the recordings dropped (with reasons)."""

        def distinct(kind: str, split: str) -> int:
            return len({group_key(r, kind) for recs in self.recordings[split].values() for r in recs})

        count = {kind: {s: distinct(kind, s) for s in SPLITS} for kind in ("subject", "stimulus")}
        by_dataset: dict[str, int] = {}
        for d in self.dropped:
            by_dataset[d.rec.dataset] = by_dataset.get(d.rec.dataset, 0) + 1
        return {
            "group_by": self.group_by,
            "recordings": {s: sum(len(v) for v in self.recordings[s].values()) for s in SPLITS},
            "subjects": count["subject"],
            "stimuli": count["stimulus"],
            "dropped": len(self.dropped),
            "dropped_by_dataset": by_dataset,
            "dropped_recordings": [
                {"dataset": d.rec.dataset, "recording_id": d.rec.recording_id, "reason": d.reason}
                for d in self.dropped
            ],
        }


def _file_id(path: str) -> list:
    """What identifies a file's version: size and mtime (local) or size and ETag (URL; from the corpus
    listing when the adapter listed it, so an unchanged bucket costs no request per file)."""
    try:
        info = remote.file_info(path)
    except FileNotFoundError:
        return [path, None]
    return [path, info.size, info.version]


def compute_data_version(cfg: RunConfig, listings: dict[str, Listing]) -> str:
    """sha256 (16 hex) over the data settings, the split seed and every listed recording's files."""
    h = hashlib.sha256()
    data = cfg.data.model_dump(mode="json")
    settings = {k: data[k] for k in _DATA_KEYS}
    settings["datasets"] = [{k: v for k, v in d.items() if k != "weight"} for d in data["datasets"]]
    for path in HASHED_UNLESS_DEFAULT:  # settings added later: only when set, so old versions stay
        drop_defaults({"data": settings}, cfg, path.split("."))
    h.update(json.dumps({"seed": cfg.seed, "data": settings}, sort_keys=True).encode())
    for name, listing in listings.items():
        for rec in listing.recordings:
            files = [rec.audio_path, *sorted({s.path for s in rec.signals.values()})]
            item = [name, rec.recording_id, rec.subject_id, rec.offset_seconds, rec.duration_seconds]
            if rec.stimulus_id is not None:  # decides stimulus-grouped splits (absent: old versions stay)
                item.append(rec.stimulus_id)
            h.update(json.dumps(item + [_file_id(p) for p in files]).encode())
        for s in listing.skipped:
            h.update(json.dumps([name, "skipped", s.path, s.row]).encode())
    return h.hexdigest()[:16]


def _load_all(recs: list[Recording], cfg: RunConfig) -> tuple[list[LoadedRecording], list[Skipped]]:
    def one(rec: Recording) -> LoadedRecording | BadRecordingError:
        try:
            return load_recording(rec, cfg.data, cfg.model)
        except BadRecordingError as e:
            return e

    # Threads: decoding (libsndfile) and torch ops release the GIL; results keep the input order.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        results = list(pool.map(one, recs))
    loaded, skipped = [], []
    for r in results:
        if isinstance(r, BadRecordingError):
            if cfg.data.on_bad_recording == "error":
                raise r
            log.warning("skipping bad recording: %s", r)
            skipped.append(Skipped(path=r.path, reason=r.reason, row=r.row, dataset=r.dataset))
        else:
            loaded.append(r)
    return loaded, skipped


def _split(cfg: RunConfig, recordings: list[Recording]) -> GroupedSplit:
    """The ordinary grouped split, or one fold of grouped k-fold cross-validation (data.split.fold)."""
    sp, data = cfg.data.split, cfg.data
    if sp.fold is not None and sp.folds is not None:
        return split_fold(recordings, sp.folds, sp.fold, data.val_fraction, cfg.seed, sp.group_by)
    return split_grouped(recordings, data.val_fraction, data.test_fraction, cfg.seed, sp.group_by)


def prepare_data(cfg: RunConfig) -> PreparedData:
    """List, load, split (grouped by data.split.group_by, per dataset), normalise (train stats) and window
    every dataset."""
    listings: dict[str, Listing] = {}
    loaded_by: dict[str, dict[str, list[LoadedRecording]]] = {s: {} for s in SPLITS}
    skipped: list[Skipped] = []
    dropped: list[LeftOut] = []
    for ds in cfg.data.datasets:
        listing = list_recordings(ds, cfg.data)
        listings[ds.name] = listing
        skipped += listing.skipped
        loaded, bad = _load_all(listing.recordings, cfg)
        skipped += bad
        if not loaded:
            raise ValueError(
                f"dataset {ds.name!r}: no usable recordings ({len(listing.recordings)} listed, "
                f"{len(listing.skipped) + len(bad)} skipped)"
            )
        by_id = {id(lr.rec): lr for lr in loaded}
        grouped = _split(cfg, [lr.rec for lr in loaded])
        for split, recs in grouped.parts.items():
            loaded_by[split][ds.name] = [by_id[id(r)] for r in recs]
        dropped += [LeftOut(by_id[id(d.rec)], d.reason) for d in grouped.dropped]
    train = [lr for lst in loaded_by["train"].values() for lr in lst]
    everything = [lr for part in loaded_by.values() for lst in part.values() for lr in lst]
    # dropped recordings count for their listener's own statistics (mode "subject"): they are listened to,
    # never trained on, and the other_listeners baseline reads them
    norm = compute_norm_stats(
        train, everything + [d.loaded for d in dropped], cfg.data, features=normalizes_inputs(cfg.model)
    )
    splits = {
        s: {name: WindowDataset(lst, cfg.data, norm) for name, lst in part.items()}
        for s, part in loaded_by.items()
    }
    if not any(len(d) for d in splits["train"].values()):
        raise ValueError("the train split has no windows (recordings shorter than window_seconds?)")
    recordings = {
        s: {name: [lr.rec for lr in lst] for name, lst in part.items()} for s, part in loaded_by.items()
    }
    if skipped:  # one line for all, listing-time ones (a missing file) included
        more = f"; ... and {len(skipped) - 10} more" if len(skipped) > 10 else ""
        reasons = "; ".join(s.reason if s.path in s.reason else f"{s.path}: {s.reason}" for s in skipped[:10])
        reasons += more
        log.warning("skipped %d bad recording(s): %s", len(skipped), reasons)
    if dropped:
        log.warning(
            "data.split.group_by=%s: dropped %d of %d recording(s) whose subject and stimulus fall in "
            "different splits (e.g. %s)",
            cfg.data.split.group_by,
            len(dropped),
            len(dropped) + len(everything),
            dropped[0].reason,
        )
    if cfg.data.cache_max_gb is not None:
        prune_cache(cfg.data.cache_dir, cfg.data.cache_max_gb)
    version = compute_data_version(cfg, listings)
    return PreparedData(splits, recordings, skipped, norm, version, cfg.data.split.group_by, dropped)


NORM_FILE = "norm_stats.json"


def save_norm_stats(data: PreparedData, run_dir: str | Path) -> Path:
    """`<run_dir>/norm_stats.json`: the run's normalisation, so predicting new audio needs no corpus."""
    out = Path(run_dir) / NORM_FILE
    atomic_write(out, json.dumps({"data_version": data.data_version, "norm": data.norm.to_dict()}).encode())
    return out


MAX_NORM_BYTES = 64 << 20  # per-subject means and deviations: KBs for thousands of listeners


def load_norm_stats(run_dir: str | Path, data_version: str | None) -> NormStats | None:
    """The saved statistics of that data version, or None."""
    path = Path(run_dir) / NORM_FILE
    if not path.exists() and not path.is_symlink():
        return None
    saved = read_json(path, MAX_NORM_BYTES, "normalisation statistics file")
    if not isinstance(saved, dict) or saved.get("data_version") != data_version:
        return None
    try:
        norm = NormStats.from_dict(saved["norm"])
    except (KeyError, TypeError, ValueError) as e:
        raise FileRefusedError(f"{path}: not the normalisation statistics of a run ({e})") from None
    if not norm.finite():
        raise FileRefusedError(f"{path}: holds NaN or infinite statistics (all predictions NaN): refused")
    return norm


def prune_cache(cache_dir: str | None, max_gb: float) -> None:
    """data.cache_max_gb: the entries this run just used are recent, so only older ones go."""
    report = cache_admin.prune(cache_dir, int(max_gb * 1e9))
    if report["removed"]:
        mb = report["freed_bytes"] / 1e6
        log.info("cache: removed %d least recently used entries (%.1f MB)", report["removed"], mb)
    if report["over_limit_in_use"]:
        log.warning(
            "cache: %.2f GB, over data.cache_max_gb=%s with entries used in the last hour (kept)",
            report["bytes_after"] / 1e9,
            max_gb,
        )


def seed_worker(worker_id: int) -> None:
    """worker_init_fn: seed python and numpy from the worker's torch seed (base seed from the loader's own
    generator + worker id), so any randomness in a worker is reproducible."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def make_loader(
    prepared: PreparedData, cfg: RunConfig, split: str, *, rank: int = 0, world_size: int = 1
) -> MetaDataLoader:
    """One DataLoader per dataset with windows in `split` (config order), mixed by a MetaDataLoader.

    Train draws with the config weights at step 0 (the trainer applies weight_schedule via `loader_weights`);
    val/test weigh every dataset 1, since an evaluation pass reads them all anyway. The returned loader's
    `dataset_names` and `dataset_indices` (positions in cfg.data.datasets) name its loaders.
    """
    if split not in prepared.splits:
        raise KeyError(f"unknown split {split!r}; have {sorted(prepared.splits)}")
    pin = cfg.train.device != "cpu" and torch.cuda.is_available()
    weights = cfg.data.weights_at(0)
    loaders, used, indices = [], [], []
    for i, ds_cfg in enumerate(cfg.data.datasets):
        ds = prepared.splits[split].get(ds_cfg.name)
        if ds is None or len(ds) == 0:
            continue
        sampler = ShardedEpochSampler(
            len(ds),
            shuffle=split == "train",
            seed=derive_seed("dataset", cfg.seed, i),
            rank=rank,
            world_size=world_size,
        )
        gen = torch.Generator().manual_seed(derive_seed("workers", cfg.seed, i))
        loaders.append(
            DataLoader(
                ds,
                batch_size=cfg.data.batch_size,
                sampler=sampler,
                num_workers=cfg.data.num_workers,
                generator=gen,
                worker_init_fn=seed_worker,
                pin_memory=pin,
                # Workers outlive an epoch: forking them per epoch per dataset cost more than the
                # epoch itself on short epochs. Their base seed is drawn once per process (from the
                # loader's own generator), so augmentation must derive its randomness per sample
                # (e.g. from epoch and index) to stay exact across a resume; windows have none.
                persistent_workers=cfg.data.num_workers > 0,
                drop_last=False,
            )
        )
        used.append(ds_cfg.name)
        indices.append(i)
    if not loaders:
        raise ValueError(f"split {split!r} has no windows in any dataset")
    w = [weights[i] for i in indices] if split == "train" else [1.0] * len(loaders)
    if not any(w):
        raise ValueError(
            f"split {split!r}: every dataset with windows ({used}) has weight 0 at step 0; "
            "datasets with positive weight have no windows in this split"
        )
    return MetaDataLoader(loaders, split, w, seed=cfg.seed, dataset_names=used, dataset_indices=indices)


def loader_weights(loader: MetaDataLoader, cfg: RunConfig, step: int) -> list[float]:
    """cfg.data.weights_at(step) restricted to the loader's datasets (some may have been dropped)."""
    weights = cfg.data.weights_at(step)
    return [weights[i] for i in loader.dataset_indices]
