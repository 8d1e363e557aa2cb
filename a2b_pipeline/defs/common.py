"""What the assets share: loading an experiment's effective config, the library's log lines in the run's
log, JSON records on disk that pin what each materialization produced, lineage metadata (URLs redacted),
fingerprints of corpus files, PNGs as metadata.

Nothing here imports torch at module level: the code location loads fast and the heavy modules
are imported inside asset bodies.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dagster import (
    AssetKey,
    AssetRecordsFilter,
    Failure,
    MetadataValue,
    TableColumn,
    TableRecord,
    TableSchema,
)

from a2b_pipeline.checkpoint.directory import STATE_FILE
from a2b_pipeline.defs.resources import ExperimentStore, TrainDevice, WandbTracking
from a2b_pipeline.files import MAX_RECORD_BYTES, MAX_STATE_BYTES, FileRefusedError, parse_json, read_bounded
from a2b_pipeline.files import atomic_write as write_file_atomically
from a2b_pipeline.security import redact_text

if TYPE_CHECKING:
    from a2b_pipeline.configs import RunConfig
    from a2b_pipeline.state import TrainState

RECORDS_DIR = "dagster"
RECORD_KEY = "record"
RECORD_SHA_KEY = "record_sha256"
CORPUS_FINGERPRINT = (
    "corpus_fingerprint"  # corpus_manifest's metadata: the corpus files' stat as it read them
)
# Digests on a page show their first 16 hex digits: whole ones were cut at the column edge, and 64 bits
# tell any two files apart that are not forged to collide. The record files keep them whole.
SHORT_DIGEST = 16


@dataclass
class Experiment:
    """One partition: the config file, the effective config Dagster runs, and where its files go."""

    name: str
    config_file: Path
    cfg: RunConfig
    dir: Path
    overrides: dict[str, Any] = field(default_factory=dict)  # a sweep experiment's, over its base config

    @property
    def config_hash(self) -> str:
        return self.cfg.config_hash()

    @property
    def records(self) -> Path:
        return self.dir / RECORDS_DIR

    def run_dir(self, data_version: str) -> Path:
        """One training run per (config, data): a retry resumes here, new data or config starts anew (a
        fresh launch in `<this>.attempt-<n>`, see runs.py)."""
        from a2b_pipeline.runs import experiment_run_dir

        return experiment_run_dir(self.dir, self.cfg, data_version)


def load_experiment(
    name: str, store: ExperimentStore, tracking: WandbTracking, compute: TrainDevice
) -> Experiment:
    """The experiment's config as the assets run it: paths under the data root, tracking and device
    from the resources. The effective config is kept beside the records, one file per config hash."""
    config_file = store.config_path(name)
    cfg = store.rebase(store.load_config(name))  # a copy: the settings below are set on it
    tracking.apply(cfg)
    compute.apply(cfg)
    exp = Experiment(
        name=name,
        config_file=config_file,
        cfg=cfg,
        dir=store.experiment_dir(cfg, name),
        overrides=store.overrides(name),
    )
    exp.records.mkdir(parents=True, exist_ok=True)
    effective = exp.records / f"config-{exp.config_hash}.yaml"
    if not effective.exists():
        atomic_write(effective, cfg.to_yaml().encode())
    return exp


# ---- the run's log ----


@contextlib.contextmanager
def forward_library_logs(context: Any) -> Iterator[None]:
    """The library's log lines (per-epoch/validation progress) go to the run's log in the UI."""
    from a2b_pipeline.launch.logs import ToDagsterLog

    logger = logging.getLogger("a2b_pipeline")
    handler = ToDagsterLog(context.log)
    old_level = logger.level
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


# ---- files ----


def atomic_write(path: Path, blob: bytes) -> str:
    """Write via a temporary sibling and rename; returns the sha256 of the bytes."""
    write_file_atomically(path, blob)
    return hashlib.sha256(blob).hexdigest()


def sha256_bytes(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def short_digest(digest: str) -> str:
    """`[algo:]hex` cut to SHORT_DIGEST hex digits, for a metadata page (see SHORT_DIGEST)."""
    algo, sep, hexdigest = digest.rpartition(":")
    return f"{algo}{sep}{hexdigest[:SHORT_DIGEST]}"


def state_sha256(checkpoint: Path) -> str:
    """sha256 of a checkpoint's train_state.json, read bounded (files.read_bounded)."""
    blob = read_bounded(checkpoint / STATE_FILE, MAX_STATE_BYTES, "more than a run's state takes")
    return sha256_bytes(blob)


def sha256_json(obj: Any) -> str:
    return sha256_bytes(json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode())


def materialization_file(exp: Experiment, asset: str, run_id: str, suffix: str) -> Path:
    """`<experiment>/dagster/<asset>/<run id><suffix>`: a file of this materialization's own, which no
    later materialization overwrites (an older materialization's metadata keeps pointing at its files)."""
    return exp.records / asset / f"{run_id}{suffix}"


def write_record(exp: Experiment, asset: str, run_id: str, payload: dict[str, Any]) -> tuple[Path, str]:
    """What this materialization produced, for the next asset: its path and sha256."""
    path = materialization_file(exp, asset, run_id, ".json")
    text = json.dumps(payload, indent=1, sort_keys=True, default=str)
    sha = atomic_write(path, redact_text(text).encode())  # URLs without credentials, like every message
    return path, sha


def upstream_record(context: Any, asset: str, partition: str | None = None) -> dict[str, Any]:
    """The record of the upstream asset's latest materialization of this partition, as the instance
    knows it (not whatever file happens to be on disk): its sha256 must match what was recorded."""
    partition = partition or context.partition_key
    result = context.instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey(asset), asset_partitions=[partition]), limit=1
    )
    if not result.records:
        raise Failure(f"{asset} has no materialization for experiment {partition!r}: materialize it first")
    mat = result.records[0].asset_materialization
    assert mat is not None
    md = mat.metadata
    if RECORD_KEY not in md:
        raise Failure(f"{asset} [{partition}]: its latest materialization has no {RECORD_KEY!r} metadata")
    path = Path(str(md[RECORD_KEY].value))
    try:
        blob = read_bounded(path, MAX_RECORD_BYTES, "more than a Dagster record takes")
    except OSError as e:
        raise Failure(
            f"{asset} [{partition}]: record {path} unreadable ({e}); materialize {asset} again"
        ) from None
    expected = md[RECORD_SHA_KEY].value if RECORD_SHA_KEY in md else None
    if expected and (len(expected) < SHORT_DIGEST or not sha256_bytes(blob).startswith(expected)):
        raise Failure(
            f"{asset} [{partition}]: {path} changed after its materialization was recorded "
            f"(another run rewrote it?); materialize {asset} again"
        )
    try:
        return parse_json(blob, path, "Dagster record")
    except FileRefusedError as e:
        raise Failure(f"{asset} [{partition}]: {e}; materialize {asset} again") from None


def write_planned_state(
    exp: Experiment, asset: str, run_id: str, data_version: str | None
) -> tuple[TrainState, Path]:
    """For the assets before training: the TrainState a training run of this experiment starts from."""
    from a2b_pipeline.state import TrainState

    run_dir = exp.run_dir(data_version) if data_version else exp.dir / f"train-{exp.config_hash}"
    state = TrainState.from_config(exp.cfg, run_dir=run_dir)
    state.data_version = data_version
    path = materialization_file(exp, asset, run_id, f".{STATE_FILE}")
    atomic_write(path, state.to_json().encode())
    return state, path


# ---- metadata ----


def rounded(v: float | None, digits: int = 4) -> MetadataValue:
    """A number as people read it (4 significant digits); the record file keeps full precision."""
    if v is None or not math.isfinite(v):
        return MetadataValue.null()
    return MetadataValue.float(float(f"{v:.{digits}g}"))


def json_details(obj: Any) -> MetadataValue:
    """A long structure one click away (the UI shows markdown behind a link), not a block on the page."""
    return MetadataValue.md("```json\n" + json.dumps(obj, indent=1, sort_keys=True, default=str) + "\n```")


def config_table(exp: Experiment, state: TrainState) -> MetadataValue:
    """The config in a few lines (model and size, loss, optimizer, datasets and weights, group_by, steps; a
    sweep's overrides), as a table the UI shows inline."""
    from a2b_pipeline.experiments.config_summary import summarize_config

    rows = summarize_config(state.config, state.model_state.model_ram_size_bytes, exp.overrides)
    return MetadataValue.table(
        [TableRecord({"setting": k, "value": redact_text(v)}) for k, v in rows.items()],
        schema=TableSchema([TableColumn("setting", "string"), TableColumn("value", "string")]),
    )


def redacted(metadata: dict[str, Any]) -> dict[str, Any]:
    """Metadata with every URL shown without its credentials (security.redact_text): texts, markdown, paths,
    URLs and JSON values alike; numbers and the rest as they are."""
    out: dict[str, Any] = {}
    for key, value in metadata.items():
        if isinstance(value, str):
            value = redact_text(value)
        elif isinstance(value, MetadataValue) and isinstance(getattr(value, "value", None), str):
            value = type(value)(redact_text(value.value))
        elif isinstance(value, MetadataValue) and isinstance(getattr(value, "value", None), dict | list):
            text = json.dumps(value.value, default=str)
            if redact_text(text) != text:
                value = type(value)(json.loads(redact_text(text)))
        out[key] = value
    return out


def lineage_metadata(
    exp: Experiment,
    state: TrainState | None,
    state_path: Path | None,
    data_version: str | None,
    record: tuple[Path, str],
    checkpoint: Path | None = None,
    trained: bool = False,
) -> dict[str, Any]:
    """The metadata every materialization carries after its own: which config, data, state and checkpoint.
    Training fields (status, step, best metric, wandb) only where a run produced the state; no nulls."""
    md: dict[str, Any] = {
        "experiment": exp.name,
        "config_file": MetadataValue.path(str(exp.config_file)),
        "config_hash": state.config_hash if state else exp.config_hash,
    }
    if data_version:
        md["data_version"] = data_version
    if state_path:
        md["train_state"] = MetadataValue.path(str(state_path))
    if trained and state:
        md["config"] = config_table(exp, state)
        md["status"] = state.status
        md["global_step"] = MetadataValue.int(state.global_step)
        md["best_metric"] = state.checkpoint_state.best_metric
        if state.checkpoint_state.best_value is not None:
            md["best_value"] = rounded(state.checkpoint_state.best_value)
        if state.checkpoint_state.best_step is not None:
            md["best_step"] = MetadataValue.int(state.checkpoint_state.best_step)
        if state.wandb_run_path:
            md["wandb_run_path"] = state.wandb_run_path
    if checkpoint is not None:
        md["checkpoint"] = MetadataValue.path(str(checkpoint))
        md["checkpoint_sha256"] = short_digest(state_sha256(checkpoint))
        md["model_digest"] = short_digest(state.checkpoint_state.files.get("model.safetensors", ""))
    md[RECORD_KEY] = MetadataValue.path(str(record[0]))
    md[RECORD_SHA_KEY] = short_digest(record[1])
    return md


# ---- fingerprints of corpus files ----


def source_fingerprint(path: str) -> dict[str, Any]:
    """Size + version (mtime locally, ETag remotely) of a file, or of every file under a directory."""
    from a2b_pipeline.data import remote

    try:
        return remote.file_info(path, refresh=True).as_dict()
    except remote.RemoteNotFoundError:
        pass
    local = remote.to_local_path(path)
    if not remote.is_url(path) and not os.path.isdir(local):
        return {"missing": True}
    try:
        return {rel: info.as_dict() for rel, info in remote.list_tree(path).items()}
    except remote.RemoteNotFoundError:
        return {"missing": True}


def corpus_sources(cfg: RunConfig) -> dict[str, str]:
    """dataset name -> the file or directory whose change means a changed corpus (manifest or root)."""
    from a2b_pipeline.data.corpora import source_of

    return {ds.name: src for ds in cfg.data.datasets if (src := source_of(ds))}


def corpus_fingerprint(cfg: RunConfig) -> str:
    """What the corpus sensor compares between ticks: manifests' / roots' stat, not their contents."""
    return sha256_json({name: source_fingerprint(src) for name, src in sorted(corpus_sources(cfg).items())})


def missing_corpora(cfg: RunConfig) -> list[str]:
    """Why this machine can't list the experiment's corpora: a local manifest or corpus root that is not
    there (one line per dataset). Synthetic corpora are written on first use; URLs are not checked here
    (no request before launch)."""
    from a2b_pipeline.data import remote

    out = []
    for name, path in corpus_sources(cfg).items():
        ds = next(d for d in cfg.data.datasets if d.name == name)
        if ds.type == "synthetic" or remote.is_url(path):
            continue
        if not os.path.exists(remote.to_local_path(path)):
            what = "manifest" if path == ds.manifest else "corpus root"
            out.append(f"dataset {name!r} ({ds.type}): {what} {path} is not on this machine")
    return out


# ---- plots (the evaluation and leaderboard plots are drawn by the core: evaluate.py, leaderboard.py) ----


def plot_loss_curve(history: list[tuple[str, int, float]], title: str) -> bytes:
    """PNG of the loss over optimizer steps: each `*/loss` metric of the run's history as a line."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.0), dpi=80)
    names = sorted({name for name, _, _ in history if name.endswith("/loss")})
    for name in names:
        points = sorted((step, value) for n, step, value in history if n == name and math.isfinite(value))
        ax.plot(
            [p[0] for p in points],
            [p[1] for p in points],
            marker="." if len(points) < 30 else None,
            label=name,
        )
    ax.set_xlabel("optimizer step", fontsize=8)
    ax.set_ylabel("loss (train.loss on z-scored targets)", fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.tick_params(labelsize=7)
    if names:
        ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def png_markdown(png: bytes, alt: str = "predicted vs true") -> MetadataValue:
    return MetadataValue.md(f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})")
