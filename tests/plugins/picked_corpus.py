"""A corpus type with options of its own, added by this one module: the recordings of a manifest, limited
to some listeners (`subjects`) and to at most `limit` of them. Importing it registers the type."""

from __future__ import annotations

from pydantic import PositiveInt

from a2b_pipeline.configs import DataConfig, DatasetConfig
from a2b_pipeline.data.corpora import CorpusType, register
from a2b_pipeline.data.corpora.manifest import list_manifest
from a2b_pipeline.data.recording import Listing


class PickedDataset(DatasetConfig):
    subjects: list[str] = []  # keep these listeners' recordings ([]: every listener's)
    limit: PositiveInt | None = None  # then at most this many recordings


def list_picked(ds: PickedDataset, data: DataConfig) -> Listing:
    listing = list_manifest(ds, data)  # the manifest type's reader, then the picking
    kept = [r for r in listing.recordings if not ds.subjects or r.subject_id in ds.subjects]
    listing.recordings = kept[: ds.limit]
    return listing


CORPUS = register(
    CorpusType(name="picked", sources=("manifest",), list_recordings=list_picked, config=PickedDataset)
)
