"""Checkpointer: a training run's live objects (model, optimizer, EMA, scaler, loader position, RNG) saved
into a TrainState plus tensor files, and restored from one. Writes go through a CheckpointWriter, in a
background thread when `checkpoint.async_write` is on.

As torchtitan's checkpointer asks each of its components for `state_dict()` and hands it back with
`load_state_dict()`, the Checkpointer knows no component's insides: each stateful part (a `Part`: the
weights and EMA, the optimizer with its scaler and plateau state, the loader position) fills its own field
of the TrainState and names the tensor files it adds, and restores itself from them. The generators are
the Checkpointer's own, as they are gathered from every rank and restored last."""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import nn

from a2b_pipeline.checkpoint.directory import (
    EMA_FILE,
    MODEL_FILE,
    OPTIMIZER_FILE,
    CheckpointError,
    checkpoint_name,
    prune_checkpoints,
    set_pointer,
)
from a2b_pipeline.checkpoint.store import load_tensors
from a2b_pipeline.data.meta_dataloader import MetaDataLoader
from a2b_pipeline.models import model_io
from a2b_pipeline.state import MetaDataLoaderState, ModelState, OptimizerState, RNGState, TrainState
from a2b_pipeline.training.engine import EMA, checked_weights

log = logging.getLogger("a2b_pipeline.checkpoint.checkpointer")


Tensors = dict[str, dict[str, torch.Tensor]]  # file name -> the tensors it holds


class Part(Protocol):
    """A stateful part of a run: gives its state to a checkpoint and takes it back."""

    def save(self, state: TrainState, path: Path, best: bool) -> Tensors:
        """Set this part's field of `state` (checkpoint `path` being written; `best`: it is the best) and
        return the tensor files the part adds."""
        ...

    def restore(self, state: TrainState, ckpt: Path) -> None:
        """Load this part's state from `state` and the files of its checkpoint `ckpt`."""
        ...


@dataclass
class Checkpointer:
    """The live objects a checkpoint is saved from and restored into, beside the TrainState."""

    model: nn.Module  # unwrapped: no DDP or compile prefixes in the saved keys
    optimizer: torch.optim.Optimizer
    ema: EMA | None
    scaler: Any  # torch.amp.GradScaler for fp16, else None
    plateau: dict[str, Any]
    loader: MetaDataLoader
    rank: int
    writer: CheckpointWriter = field(default_factory=lambda: CheckpointWriter(background=False))
    parts: list[Part] = field(init=False)

    def __post_init__(self) -> None:
        self.parts = [
            WeightsPart(self.model, self.ema),
            OptimizerPart(self.optimizer, self.scaler, self.plateau, self.model),
            LoaderPart(self.loader),
        ]

    def save(self, state: TrainState, best: bool) -> None:
        """Checkpoint `state` at its global step (every rank calls this; rank 0 writes)."""
        rngs = gather_rng(state, self.rank)
        if self.rank != 0:
            return
        path = state.run_dir / checkpoint_name(state.global_step)
        state.rng_state, state.rank_rng_states = rngs[0], rngs[1:]
        tensors: Tensors = {}
        for part in self.parts:
            tensors |= part.save(state, path, best)
        self.writer.save(state, path, tensors, best)

    def restore(self, state: TrainState) -> None:
        """Load everything the state points to; RNG last, so nothing built afterwards shifts it."""
        ckpt = state.last_checkpoint
        if ckpt is None:
            raise CheckpointError(f"{state.run_dir}: the state names no checkpoint to restore")
        _ = state.metric_history  # read (and checked) now, not at the run's first log, mid-run
        for part in self.parts:
            part.restore(state, ckpt)
        rngs = [state.rng_state, *state.rank_rng_states]
        if self.rank < len(rngs):
            rngs[self.rank].restore()


@dataclass
class WeightsPart:
    """The model's weights and, when enabled, their EMA: ModelState, model.safetensors, ema.safetensors."""

    model: nn.Module
    ema: EMA | None

    def save(self, state: TrainState, path: Path, best: bool) -> Tensors:
        sd = self.model.state_dict()
        first = next(self.model.parameters())
        io = model_io(state.config)
        state.model_state = ModelState(
            model_loaded=True,
            model_ram_size_bytes=sum(t.nelement() * t.element_size() for t in sd.values()),
            model_dtype=first.dtype,
            model_device=first.device,
            best_model_path=path / (EMA_FILE if self.ema else MODEL_FILE)
            if best
            else state.model_state.best_model_path,
            last_model_path=path / MODEL_FILE,
            architecture=state.config.model.name,
            num_parameters=sum(p.numel() for p in self.model.parameters()),
            ema_path=path / EMA_FILE if self.ema else None,
            input_shape=(io.in_frames, io.n_mels),
            output_shape=(io.out_steps, io.channels),
        )
        return {MODEL_FILE: sd, EMA_FILE: self.ema.shadow} if self.ema else {MODEL_FILE: sd}

    def restore(self, state: TrainState, ckpt: Path) -> None:
        weights = load_tensors(ckpt, MODEL_FILE, state)
        self.model.load_state_dict(checked_weights(weights, self.model, ckpt))
        ema_path = state.model_state.ema_path
        if self.ema and ema_path is not None:
            self.ema.shadow = checked_weights(
                load_tensors(ckpt, ema_path.name, state), self.model, ckpt, ema_path.name
            )


@dataclass
class OptimizerPart:
    """The optimizer (its moments in optimizer.safetensors, the rest as JSON), the fp16 GradScaler and the
    plateau schedule's state: OptimizerState."""

    optimizer: torch.optim.Optimizer
    scaler: Any  # torch.amp.GradScaler for fp16, else None
    plateau: dict[str, Any]
    model: nn.Module  # for the dtype and device recorded before the optimizer has moments

    def save(self, state: TrainState, path: Path, best: bool) -> Tensors:
        sd = self.optimizer.state_dict()
        tensors: dict[str, torch.Tensor] = {}
        scalars: dict[str, dict[str, Any]] = {}
        for idx, st in sd["state"].items():
            for k, v in st.items():
                if torch.is_tensor(v):
                    tensors[f"{idx}.{k}"] = v
                else:
                    scalars.setdefault(str(idx), {})[k] = v
        groups = [
            {k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]
        ]
        moments = [t for t in tensors.values() if t.dim()] or list(tensors.values())
        first = moments[0] if moments else next(self.model.parameters())
        state.optimizer_state = OptimizerState(
            last_step=state.global_step,
            moments_ram_size_bytes=sum(t.nelement() * t.element_size() for t in tensors.values()),
            moments_dtype=first.dtype,
            moments_device=first.device,
            moments_path=path / OPTIMIZER_FILE,
            name=type(self.optimizer).__name__,
            param_groups=groups,
            scalar_state=scalars,
            lr=groups[0]["lr"],
            scaler=self.scaler.state_dict() if self.scaler else None,
            plateau=dict(self.plateau),
        )
        return {OPTIMIZER_FILE: tensors}

    def restore(self, state: TrainState, ckpt: Path) -> None:
        opt_tensors = load_tensors(ckpt, OPTIMIZER_FILE, state)
        load_optimizer(
            self.optimizer, checked_optimizer(opt_tensors, self.optimizer, ckpt), state.optimizer_state
        )
        if self.scaler and state.optimizer_state.scaler:
            self.scaler.load_state_dict(state.optimizer_state.scaler)
        self.plateau.update(state.optimizer_state.plateau)


@dataclass
class LoaderPart:
    """The MetaDataLoader's position (every loader's, and the draw generator's): MetaDataLoaderState."""

    loader: MetaDataLoader

    def save(self, state: TrainState, path: Path, best: bool) -> Tensors:
        state.meta_dataloader_state = meta_loader_state(self.loader, state)
        return {}

    def restore(self, state: TrainState, ckpt: Path) -> None:
        self.loader.load_state_dict(state.meta_dataloader_state.loader_state_dict())


def gather_rng(state: TrainState, rank: int) -> list[RNGState]:
    """Every rank's generator states, in rank order (a collective under DDP)."""
    mine = RNGState.capture(seed=state.rng_state.seed + rank)
    if state.world_size == 1:
        return [mine]
    everyone: list[Any] = [None] * state.world_size
    dist.all_gather_object(everyone, mine.model_dump(mode="json"))
    return [RNGState.model_validate(r) for r in everyone]


def meta_loader_state(loader: MetaDataLoader, state: TrainState) -> MetaDataLoaderState:
    datasets = state.config.data.datasets
    described = [
        (name, datasets[i].type, len(dl))
        for name, i, dl in zip(loader.dataset_names, loader.dataset_indices, loader.dataloaders, strict=True)
    ]
    return MetaDataLoaderState.from_loader_state_dict(loader.state_dict(), described)


def load_optimizer(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: OptimizerState
) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = v
    for idx, st in meta.scalar_state.items():
        state.setdefault(int(idx), {}).update(st)
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in meta.param_groups]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def checked_optimizer(
    tensors: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer, where: Path
) -> dict[str, torch.Tensor]:
    """Refuse optimizer tensors ("<param index>.<name>") for parameters this model doesn't have, or whose
    per-parameter moments don't have the parameter's shape; torch itself would fail steps later."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    extra, shapes = [], []
    for key, v in tensors.items():
        idx, _, name = key.partition(".")
        if not (idx.isdigit() and int(idx) < len(params) and name):
            extra.append(key)
        elif v.dim() and v.shape != params[int(idx)].shape:
            shapes.append(f"{key}: {tuple(v.shape)} vs {tuple(params[int(idx)].shape)}")
    if extra or shapes:
        raise CheckpointError(
            f"{where}/{OPTIMIZER_FILE} does not fit the optimizer of {len(params)} parameters: "
            f"unexpected keys {sorted(extra)[:5]}, wrong shapes {sorted(shapes)[:5]}"
        )
    return tensors


class CheckpointWriter:
    """Writes checkpoints one at a time, in a background thread when `background`: the loop then waits
    only for host copies of the tensors (and for the previous write, if it is still running). `wait()`
    returns the file digests of the last write (None before any) and raises its error, if it failed."""

    def __init__(self, background: bool) -> None:
        self.background = background
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="a2b-checkpoint") if background else None
        self._pending: Future[dict[str, str]] | None = None
        self._files: dict[str, str] | None = None  # of the last write; None: nothing written yet
        self._buffers: dict[tuple[str, str], torch.Tensor] = {}

    def save(
        self, state: TrainState, path: Path, tensors: dict[str, dict[str, torch.Tensor]], best: bool
    ) -> None:
        self.wait()  # one write at a time; its host buffers are free again
        if self._pool is None:
            self._files = write_checkpoint(state, path, tensors, best)
            return
        state, tensors = state.snapshot(), self._stage(tensors)
        self._pending = self._pool.submit(write_checkpoint, state, path, tensors, best)

    def _stage(self, tensors: dict[str, dict[str, torch.Tensor]]) -> dict[str, dict[str, torch.Tensor]]:
        """Copy into host buffers kept from one checkpoint to the next: the shapes repeat, so no fresh
        pages are faulted in (that made a copy 5-10x slower, bench/checkpoint.py), and from CUDA they are
        pinned, for a fast copy off the device."""
        staged: dict[str, dict[str, torch.Tensor]] = {}
        buffers: dict[tuple[str, str], torch.Tensor] = {}
        for f, t in tensors.items():
            staged[f] = {}
            for k, v in t.items():
                buf = self._buffers.get((f, k))
                if buf is None or buf.shape != v.shape or buf.dtype != v.dtype:
                    buf = torch.empty(v.shape, dtype=v.dtype, pin_memory=v.is_cuda)
                staged[f][k] = buffers[(f, k)] = buf.copy_(v.detach(), non_blocking=v.is_cuda)
        if any(v.is_cuda for t in tensors.values() for v in t.values()):
            torch.cuda.synchronize()  # the copies off the device have landed before the writer reads them
        self._buffers = buffers
        return staged

    def wait(self) -> dict[str, str] | None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self._files = pending.result()
        return self._files

    def close(self) -> dict[str, str] | None:
        try:
            self.wait()
        except Exception:  # the loop is already ending with its own error (a clean end waited in the loop)
            log.exception("the last checkpoint write failed")
        finally:
            if self._pool is not None:
                self._pool.shutdown()
        return self._files


def write_checkpoint(
    state: TrainState, path: Path, tensors: dict[str, dict[str, torch.Tensor]], best: bool
) -> dict[str, str]:
    """Write one checkpoint, move the `last` (and `best`) pointers to it, prune by retention."""
    from safetensors import SafetensorError

    try:
        state.to_checkpoint(path, tensors)
    except (OSError, SafetensorError) as e:  # disk full (safetensors reports it as its own error),
        # permissions, a vanished run directory: name the checkpoint
        raise CheckpointError(f"{path}: the checkpoint could not be written ({e})") from e
    set_pointer(state.run_dir, "last", path)
    if best:
        set_pointer(state.run_dir, "best", path)
    best_dir = (
        state.model_state.best_model_path.parent if state.checkpoint_state.best_step is not None else None
    )
    prune_checkpoints(state.run_dir, state.config.checkpoint.keep_last, protect=[best_dir, path])
    return state.checkpoint_state.files
