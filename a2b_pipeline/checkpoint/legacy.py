"""Readers of old checkpoint schemas: a train_state.json of schema 1 or 2 as the current schema (3).

Who still needs them: run directories written before schema 3 that are resumed, evaluated or listed
(TrainState.from_json calls `upgrade` for any file whose schema_version is below SCHEMA_VERSION), and
tests/test_legacy.py, which writes such files. Schema 1, the first layout, had its own field names (`rng`,
`model`, `optimizer`, `meta_loader`, `metrics`, `checkpoint`, `run_dir`) and recorded no tensor sizes;
schema 2 is schema 3 with the metric history inside train_state.json instead of metrics.jsonl beside it.
A checkpoint once loaded is written back as schema 3; nothing here writes an old schema.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import torch

from a2b_pipeline.checkpoint.directory import MODEL_FILE, OPTIMIZER_FILE, tensor_bytes
from a2b_pipeline.configs import RunConfig
from a2b_pipeline.state import SCHEMA_VERSION, RNGState, TrainState, numpy_rng_bytes


def upgrade(raw: dict[str, Any], version: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A schema-1 or schema-2 train_state.json as the current schema, and the metric history it kept
    inside the file (schemas 1 and 2 did; schema 3 keeps it in metrics.jsonl)."""
    if version == 1:
        raw = upgrade_v1(raw)
    inline = raw.pop("metric_history", [])
    return {**raw, "schema_version": SCHEMA_VERSION}, inline


def read_sizes(state: TrainState, ckpt: Path) -> None:
    """Fill in the tensor sizes a schema-1 file did not record, from the headers of checkpoint `ckpt`'s
    files (no tensor is loaded)."""
    files = state.checkpoint_state.files
    if not state.model_state.model_loaded:
        return
    state.model_state.model_ram_size_bytes = tensor_bytes(ckpt / MODEL_FILE)[0]
    if OPTIMIZER_FILE in files:
        size, dtype = tensor_bytes(ckpt / OPTIMIZER_FILE)
        state.optimizer_state.moments_ram_size_bytes = size
        state.optimizer_state.moments_dtype = dtype or torch.float32


# ---- schema 1 -> 2 ----

_STATUS_V1 = {"created": "initialized", "running": "in_progress", "failed": "stopped"}
# fields schema 1 had under the names and meanings schema 2 gives them
_SAME_FIELDS_V1 = (
    "config", "config_hash", "message", "epoch", "global_step", "samples_seen", "batches_drawn", "world_size",
    "num_threads", "data_version", "bad_validations", "wandb_run_id", "wandb_run_path", "created_at",
    "updated_at",
)  # fmt: skip


def upgrade_v1(raw: dict[str, Any]) -> dict[str, Any]:
    """A schema-1 train_state.json (fields rng, model, optimizer, meta_loader, metrics, checkpoint, run_dir)
    as schema 2, one part of the state at a time. Paths are rebased by the loader once the directory is
    known, and sizes, which schema 1 did not record, read from the files by `read_sizes`."""
    cfg = RunConfig.model_validate(raw["config"])
    run = Path(raw["run_dir"])
    ck = raw.get("checkpoint") or {}
    last = Path(ck.get("last_path") or run / "last")
    rngs = [_rng_v1(r, cfg.seed + rank) for rank, r in enumerate(raw.get("rng") or [])]
    rngs = rngs or [RNGState.seeded(cfg.seed).model_dump()]
    history = [m for m in raw.get("metrics") or [] if not m["name"].startswith("test/")]
    return {
        **_run_fields_v1(raw),
        "rng_state": rngs[0],
        "rank_rng_states": rngs[1:],
        "model_state": _model_state_v1(raw.get("model"), ck.get("files") or {}, cfg, run, last),
        "optimizer_state": _optimizer_state_v1(raw, cfg, last),
        "meta_dataloader_state": _meta_loader_v1(raw.get("meta_loader"), cfg, run),
        "metric_history": history,
        "metric_state": {"metrics": {m["name"]: m["value"] for m in history}},
        "checkpoint_state": {
            "steps_since_last_checkpoint": 0,
            "checkpoint_dir": str(run),
            **{k: ck[k] for k in ("best_metric", "best_value", "best_step", "files") if k in ck},
        },
    }


def _run_fields_v1(raw: dict[str, Any]) -> dict[str, Any]:
    """The fields kept as they were, and the status under its new name (a failed run: stopped by an error)."""
    out = {k: raw[k] for k in _SAME_FIELDS_V1 if k in raw}
    status = raw.get("status", "created")
    out["status"] = _STATUS_V1.get(status, status)
    if status == "failed":
        out["stop_reason"] = "error"
    return out


def _rng_v1(r: dict[str, Any], seed: int) -> dict[str, Any]:
    """One rank's generators: schema 1 kept numpy's state as separate fields and torch's as base64."""
    # pydantic wrote bytes as URL-safe base64
    torch_states = {"cpu": list(base64.urlsafe_b64decode(r["torch_cpu"]))}
    for i, s in enumerate(r.get("torch_cuda") or []):
        torch_states[f"cuda:{i}"] = list(base64.urlsafe_b64decode(s))
    numpy = numpy_rng_bytes(r["numpy_keys"], r["numpy_pos"], r["numpy_has_gauss"], r["numpy_cached_gaussian"])
    return {
        "seed": seed,
        "torch_rng_state": torch_states,
        "numpy_rng_state": numpy,
        "python_rng_state": r["python"],
    }


def _model_state_v1(
    model: dict[str, Any] | None, files: dict[str, str], cfg: RunConfig, run: Path, last: Path
) -> dict[str, Any]:
    m = model or {}
    return {
        "model_loaded": model is not None and MODEL_FILE in files,
        "model_ram_size_bytes": 0,  # read from the file header by read_sizes, where it exists
        "model_dtype": m.get("dtype", "torch.float32"),
        "model_device": m.get("device", "cpu"),
        "best_model_path": str(run / "best" / MODEL_FILE),
        "last_model_path": str(last / MODEL_FILE),
        "architecture": m.get("name", cfg.model.name),
        "ema_path": str(last / m["ema_file"]) if m.get("ema_file") else None,
        "num_parameters": m.get("num_parameters", 0),
        "input_shape": m.get("input_shape"),
        "output_shape": m.get("output_shape"),
    }


def _optimizer_state_v1(raw: dict[str, Any], cfg: RunConfig, last: Path) -> dict[str, Any]:
    opt = raw.get("optimizer")
    out = {
        "last_step": raw.get("global_step", 0),
        "moments_ram_size_bytes": 0,
        "moments_dtype": "torch.float32",
        "moments_device": (raw.get("model") or {}).get("device", "cpu"),
        "moments_path": str(last / OPTIMIZER_FILE),
        **{k: v for k, v in (opt or {}).items() if k != "file"},
    }
    if not opt:
        out.update(name=cfg.optimizer.name, lr=cfg.optimizer.lr)
    return out


def _meta_loader_v1(ml: dict[str, Any] | None, cfg: RunConfig, run: Path) -> dict[str, Any]:
    """The loader's position; a state written before the first step had none: a fresh one's."""
    if not ml:
        return TrainState.from_config(cfg, run).meta_dataloader_state.model_dump()
    types = {d.name: d.type for d in cfg.data.datasets}
    loaders = ml.get("loaders") or [{"name": d.name} for d in cfg.data.datasets]
    return {
        "split": ml["split"],
        "sampling_weights": ml["weights"],
        "dataloader_states": [
            {
                "last_batch_idx": c - 1,
                "dataset": types.get(d.get("name"), cfg.data.datasets[i].type),
                "split": ml["split"],
                "name": d.get("name"),
                "num_batches": d.get("num_batches"),
            }
            for i, (c, d) in enumerate(zip(ml["consumed"], loaders, strict=True))
        ],
        **{k: ml[k] for k in ("format", "epoch", "seed", "generator_state", "draw_block", "draw_offset")},
    }
