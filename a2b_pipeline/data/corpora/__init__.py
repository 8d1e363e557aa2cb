"""Corpus types behind one registry: each knows how to list (and scan) its recordings, what to fingerprint.

A corpus type is a module that defines ``CORPUS = CorpusType(...)``. The modules of this package are the
built-in types, found by name (``manifest``, ``synthetic``, ``pmemo2019``, ``hku956``); a type defined
elsewhere registers itself with :func:`register` when imported, or is named by an entry point in the
``a2b_pipeline.corpora`` group (``name = "package.module"``), which makes it usable from configs, the CLI
and Dagster once its distribution is installed (the registry: ``a2b_pipeline.plugins.CORPUS_TYPES``).
Modules whose names start with ``_`` hold shared helpers.

A type with options of its own (HKU956's ``audio_dir``, the synthetic generator's settings) declares them
in a subclass of ``configs.DatasetConfig``, its ``CorpusType.config``: a config's datasets are validated by
their type's class. Nothing here imports a type's module before it is asked for, and the modules import
nothing heavy at module level, so validating a config stays fast and free of torch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from a2b_pipeline import plugins
from a2b_pipeline.configs import DataConfig, DatasetConfig
from a2b_pipeline.data.recording import Listing
from a2b_pipeline.data.remote import FileInfo

__all__ = [
    "ChannelInfo",
    "CorpusError",
    "CorpusScan",
    "CorpusType",
    "get",
    "list_recordings",
    "names",
    "register",
    "scan_corpus",
    "scannable",
    "scan_dataset",
    "source_of",
]


class CorpusError(ValueError):
    """A corpus that can't be read at all (missing root, metadata file or column); names the path."""


@dataclass
class ChannelInfo:
    rate: float | None  # Hz (median for an irregular grid)
    files: int = 0
    irregular: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"rate": self.rate, "files": self.files, "irregular": self.irregular}


@dataclass
class CorpusScan:
    """What a corpus holds: the listing, and what the `a2b corpus` summary reports."""

    type: str
    root: str
    listing: Listing
    songs: int = 0
    durations: dict[str, float] = field(default_factory=dict)  # recording_id -> usable seconds (if measured)
    channels: dict[str, ChannelInfo] = field(default_factory=dict)
    files: dict[str, FileInfo] = field(default_factory=dict)  # relative path -> size + ETag/mtime


# scan(source, *, name, channels, on_bad, cache_dir, measure, **options) -> CorpusScan
Scanner = Callable[..., CorpusScan]
# list_recordings(ds, data): ds is the type's own config (CorpusType.config)
Lister = Callable[[Any, DataConfig], Listing]


@dataclass(frozen=True)
class CorpusType:
    """What the pipeline needs to know about one kind of corpus.

    `sources`: the DatasetConfig fields that can name the corpus (a config must set at least one); the
    first one set is what `scan` reads and, unless `source` says otherwise, what the corpus sensor
    fingerprints. `config`: the type's DatasetConfig subclass when it has options of its own (its fields
    beyond DatasetConfig's are passed to `scan` as keyword arguments; its path fields are ConfigPaths).
    `list_recordings(ds, data)`: the Listing training uses; default: `scan` without measuring. `scan`: the
    `a2b corpus` summary (None: the type has none). `source(ds)`: the file or directory whose
    size/mtime/ETag change means a changed corpus.
    """

    name: str
    sources: tuple[str, ...]
    list_recordings: Lister | None = None
    scan: Scanner | None = None
    config: type[DatasetConfig] = DatasetConfig
    source: Callable[[Any], str | None] | None = None

    def __post_init__(self) -> None:
        if not self.sources:
            raise ValueError(f"corpus type {self.name!r}: `sources` names no field")
        if self.list_recordings is None and self.scan is None:
            raise ValueError(f"corpus type {self.name!r} needs `list_recordings` or `scan`")

    @property
    def options(self) -> tuple[str, ...]:
        """The type's own options: its config's fields beyond DatasetConfig's."""
        return tuple(f for f in self.config.model_fields if f not in DatasetConfig.model_fields)


def register(kind: CorpusType) -> CorpusType:
    """Register (or replace) a corpus type defined outside this package; returns it."""
    return plugins.CORPUS_TYPES.register(kind)


def names() -> list[str]:
    """Every known corpus type: built-in, registered, or named by an entry point."""
    return plugins.CORPUS_TYPES.names()


def scannable() -> list[str]:
    """The corpus types `a2b corpus` can summarise (those with a `scan`): its `--type` choices."""
    return [n for n in names() if get(n).scan is not None]


def get(name: str) -> CorpusType:
    """The corpus type called `name` (its module is imported on first use)."""
    try:
        return plugins.CORPUS_TYPES.get(name)
    except plugins.UnknownPluginError as e:
        raise CorpusError(str(e)) from None


def _source_field(kind: CorpusType, ds: DatasetConfig) -> str:
    for f in kind.sources:
        if getattr(ds, f, None):
            return getattr(ds, f)
    raise CorpusError(f"dataset {ds.name!r} of type {kind.name!r} sets none of {list(kind.sources)}")


def source_of(ds: DatasetConfig) -> str | None:
    """The file or directory whose change means a changed corpus (what the corpus sensor fingerprints)."""
    kind = get(ds.type)
    return kind.source(ds) if kind.source else _source_field(kind, ds)


def scan_dataset(ds: DatasetConfig, data: DataConfig, *, measure: bool = False) -> CorpusScan:
    """Scan one configured dataset (its type must have a scanner)."""
    kind = get(ds.type)
    if kind.scan is None:
        raise CorpusError(f"corpus type {kind.name!r} has no scanner")
    return kind.scan(
        _source_field(kind, ds),
        name=ds.name,
        channels=list(data.channels),
        on_bad=data.on_bad_recording,
        cache_dir=data.cache_dir,
        measure=measure,
        **{o: getattr(ds, o) for o in kind.options},
    )


def list_recordings(ds: DatasetConfig, data: DataConfig) -> Listing:
    """The recordings of one configured dataset (and what was skipped), dispatching on `ds.type`."""
    kind = get(ds.type)
    if kind.list_recordings is not None:
        listing = kind.list_recordings(ds, data)
    else:
        listing = scan_dataset(ds, data).listing
    return confine_urls(listing, _source_field(kind, ds), ds.name, data)


def confine_urls(listing: Listing, source: str, dataset: str, data: Any) -> Listing:
    """A corpus is data from elsewhere: a recording file it names by URL must lie under the dataset's own
    root (or manifest folder) URL, or have a scheme the config allows (`data.url_schemes`); else the
    recording is bad (an error, or skipped), so a song link can't make the pipeline fetch any URL."""
    from a2b_pipeline.data.recording import BadRecordingError, Skipped
    from a2b_pipeline.data.remote import is_url

    allowed = {s.lower() for s in getattr(data, "url_schemes", [])}
    src = str(source)
    prefix = src.rsplit("/", 1)[0] + "/" if src.lower().endswith((".csv", ".jsonl", ".ndjson")) else src
    prefix = prefix.rstrip("/") + "/" if is_url(src) else None
    kept = []
    for rec in listing.recordings:
        paths = [rec.audio_path, *(s.path for s in rec.signals.values())]
        bad = [
            p
            for p in paths
            if is_url(p)
            and not (prefix and p.startswith(prefix))
            and p.split("://", 1)[0].lower() not in allowed
        ]
        if not bad:
            kept.append(rec)
            continue
        scheme = bad[0].split("://", 1)[0].lower()
        reason = f"URL scheme {scheme!r} is not allowed (data.url_schemes: {sorted(allowed) or 'none'})"
        if data.on_bad_recording == "error":
            raise BadRecordingError(rec, bad[0], reason)
        listing.skipped.append(Skipped(path=bad[0], reason=reason, row=rec.row, dataset=dataset))
    listing.recordings = kept
    return listing


def scan_corpus(
    root: str,
    type: str,
    *,
    channels: Iterable[str] | None = None,
    on_bad: str = "skip",
    cache_dir: str | None = None,
    measure: bool = True,
    **options: Any,
) -> CorpusScan:
    """Scan a corpus for the `a2b corpus` summary (bad records are listed, not raised, by default)."""
    t = str(getattr(type, "value", type)).lower()
    kind = get(t) if t in names() else None
    if kind is None or kind.scan is None:
        raise CorpusError(f"unknown corpus type {type!r}; expected one of {scannable()}")
    unknown = sorted(set(options) - set(kind.options))
    if unknown:
        known = ", ".join(kind.options) or "none"
        raise CorpusError(f"corpus type {t!r} has no option {unknown[0]!r} (its options: {known})")
    ch = list(channels) if channels else ["eda"]
    return kind.scan(root, channels=ch, on_bad=on_bad, cache_dir=cache_dir, measure=measure, **options)
