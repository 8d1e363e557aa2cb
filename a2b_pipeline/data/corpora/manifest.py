"""The generic corpus: a manifest (CSV or JSONL, path or URL), one row per recording (data/manifest.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from a2b_pipeline.data.corpora import CorpusType
from a2b_pipeline.data.recording import Listing

if TYPE_CHECKING:
    from a2b_pipeline.configs import DataConfig, DatasetConfig


def list_manifest(ds: DatasetConfig, data: DataConfig) -> Listing:
    # imported here: config validation imports this module, and the manifest reader pulls in torch
    from a2b_pipeline.data.manifest import read_manifest_listing

    assert ds.manifest is not None  # config validation guarantees it (`sources`)
    return read_manifest_listing(
        ds.manifest,
        ds.name,
        channels=data.channels,
        on_bad=data.on_bad_recording,
        allow_outside=data.allow_outside_paths,
        url_schemes=data.url_schemes,
    )


CORPUS = CorpusType(name="manifest", sources=("manifest",), list_recordings=list_manifest)
