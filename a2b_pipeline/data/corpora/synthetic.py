"""The synthetic corpus (data/synthetic.py): generated into `root` on first use, then read as a manifest."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

from a2b_pipeline.data.corpora import CorpusType
from a2b_pipeline.data.recording import Listing

if TYPE_CHECKING:
    from a2b_pipeline.configs import DataConfig, DatasetConfig


def manifest_path(ds: DatasetConfig) -> str:
    """`manifest` when set, else root/manifest.csv (where the generator writes it)."""
    return ds.manifest or os.path.join(str(ds.root).rstrip("/"), "manifest.csv")


def list_synthetic(ds: DatasetConfig, data: DataConfig) -> Listing:
    """Read `manifest` (or root/manifest.csv). Generate the corpus into `root` when the manifest is missing,
    or when root/synthetic.json says it was generated with other settings."""
    # imported here: config validation imports this module, and these readers pull in torch and soundfile
    from a2b_pipeline.data.manifest import read_manifest_listing
    from a2b_pipeline.data.synthetic import write_synthetic_corpus

    manifest = manifest_path(ds)
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
    return read_manifest_listing(
        manifest,
        ds.name,
        channels=data.channels,
        on_bad=data.on_bad_recording,
        allow_outside=data.allow_outside_paths,
        url_schemes=data.url_schemes,
    )


CORPUS = CorpusType(
    name="synthetic", sources=("root", "manifest"), list_recordings=list_synthetic, source=manifest_path
)
