"""Corpus adapters: DatasetConfig -> Listing (recordings + what was skipped), one per DatasetType."""

from __future__ import annotations

import json
import os
from collections.abc import Callable

from a2b_pipeline.configs import DataConfig, DatasetConfig, DatasetType
from a2b_pipeline.data.manifest import read_manifest_listing
from a2b_pipeline.data.recording import Listing
from a2b_pipeline.data.synthetic import write_synthetic_corpus

Adapter = Callable[[DatasetConfig, DataConfig], Listing]
_ADAPTERS: dict[DatasetType, Adapter] = {}


def register_adapter(kind: DatasetType, fn: Adapter) -> None:
    """Register (or replace) the adapter of a dataset type."""
    _ADAPTERS[DatasetType(kind)] = fn


def _manifest(ds: DatasetConfig, data: DataConfig) -> Listing:
    assert ds.manifest is not None  # DatasetConfig guarantees it for this type
    return read_manifest_listing(ds.manifest, ds.name, channels=data.channels, on_bad=data.on_bad_recording)


def _synthetic(ds: DatasetConfig, data: DataConfig) -> Listing:
    """Read `manifest` (or root/manifest.csv). Generate the corpus into `root` when the manifest is missing,
    or when root/synthetic.json says it was generated with other settings."""
    manifest = ds.manifest or os.path.join(str(ds.root), "manifest.csv")
    if ds.root and not ds.manifest:
        channels = list(dict.fromkeys(["eda", "hr", *data.channels]))  # config channels are always present
        spec = {**ds.synthetic.model_dump(exclude_none=True), "channels": channels}
        stamp = os.path.join(ds.root, "synthetic.json")
        old = None
        if os.path.exists(stamp):
            with open(stamp) as f:
                old = json.load(f)
        if not os.path.exists(manifest) or (old is not None and old != spec):
            write_synthetic_corpus(
                ds.root,
                subjects=spec["subjects"],
                recordings_per_subject=spec["recordings_per_subject"],
                seconds=spec["seconds"],
                seed=spec["seed"],
                channels=channels,
                stimuli=ds.synthetic.stimuli,
            )
            with open(stamp, "w") as f:
                json.dump(spec, f)
    return read_manifest_listing(manifest, ds.name, channels=data.channels, on_bad=data.on_bad_recording)


register_adapter(DatasetType.manifest, _manifest)
register_adapter(DatasetType.synthetic, _synthetic)


def list_recordings(ds: DatasetConfig, data: DataConfig) -> Listing:
    """The recordings of one configured dataset, dispatching on `ds.type`."""
    kind = DatasetType(ds.type)
    if kind not in _ADAPTERS and kind in (DatasetType.hku956, DatasetType.pmemo2019):
        # the public-corpus adapters live in corpora.py; imported on first use, it's a large module
        from a2b_pipeline.data import corpora

        corpora.register()
    fn = _ADAPTERS.get(kind)
    if fn is None:
        raise ValueError(
            f"dataset {ds.name!r}: no adapter registered for type {ds.type.value!r} "
            f"(registered: {sorted(k.value for k in _ADAPTERS)}); import the module that registers it"
        )
    return fn(ds, data)
