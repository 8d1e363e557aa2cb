"""train(state) -> state: the training loop, readable top to bottom.

Everything a step depends on is in the TrainState (config, step, epoch, RNG, loader
positions, optimizer) so that a run resumed from any checkpoint continues bit for bit.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from a2b_pipeline.configs import RunConfig
from a2b_pipeline.data.meta_dataloader import MetaDataLoader
from a2b_pipeline.data.pipeline import (
    PreparedData,
    loader_weights,
    make_loader,
    prepare_data,
    save_norm_stats,
)
from a2b_pipeline.metrics import MetricAccumulator, make_loss
from a2b_pipeline.models import build_model, model_io
from a2b_pipeline.preflight import check_runnable
from a2b_pipeline.rundir_lock import hold_run_dir
from a2b_pipeline.state import (
    CheckpointError,
    DataLoaderState,
    MetaDataLoaderState,
    MetricState,
    ModelState,
    OptimizerState,
    RNGState,
    TrainState,
    checkpoint_name,
    load_tensors,
    prune_checkpoints,
    set_pointer,
)
from a2b_pipeline.tracking import Tracker

log = logging.getLogger("a2b_pipeline.train")

# Plugin point: each hook is called as hook(model, state) right after the model is built (before its
# weights are restored), e.g. to register forward hooks for profiling, or to inject faults in tests.
MODEL_HOOKS: list[Callable[[nn.Module, TrainState], Any]] = []


def train(state: TrainState) -> TrainState:
    ensure_writable(Path(state.run_dir))  # fail before any work, naming the path
    check_runnable(state.config)  # a model this machine can't hold is a config error, before any data
    with hold_run_dir(state.run_dir):  # one trainer per run directory (RunDirBusyError otherwise)
        return _train(state)


def _train(state: TrainState) -> TrainState:
    cfg = state.config
    rank, world_size, local_rank = init_distributed()
    if state.model is not None and state.world_size != world_size:
        raise CheckpointError(
            f"{state.checkpoint.last_path}: written with world size {state.world_size}, "
            f"resumed with {world_size}"
        )
    state.world_size = world_size
    device = pick_device(cfg, local_rank)
    configure_determinism(cfg, state, device)
    if state.model is None:
        seed_everything(cfg.seed + rank)

    # ---- data, model, optimizer ----
    data = prepare_data(cfg)
    if state.data_version and state.data_version != data.data_version:
        log.warning(
            "data changed since this run started (data version %s -> %s)",
            state.data_version,
            data.data_version,
        )
    state.data_version = data.data_version
    if rank == 0:  # beside the checkpoints: `a2b predict` normalises new audio with them
        save_norm_stats(data, state.run_dir)
    train_loader = make_loader(data, cfg, "train", rank=rank, world_size=world_size)
    val_loader = make_loader(data, cfg, "val") if rank == 0 and _has_split(data, "val") else None
    io = model_io(cfg)
    raw_model = build_model(cfg.model, io).to(device)
    for hook in MODEL_HOOKS:
        hook(raw_model, state)
    optimizer = build_optimizer(cfg, raw_model)
    ema = EMA(raw_model, cfg.train.ema_decay) if cfg.train.ema_decay else None
    scaler = torch.amp.GradScaler(device.type) if cfg.train.precision == "fp16" else None
    plateau: dict[str, Any] = {"scale": 1.0, "best": None, "bad": 0}
    parts = Checkpointed(raw_model, optimizer, ema, scaler, plateau, train_loader, rank)
    writer = CheckpointWriter(background=cfg.checkpoint.async_write and rank == 0)
    if state.model is not None:
        restore(state, parts)
    else:
        train_loader.set_epoch(state.epoch)
    model: nn.Module = raw_model
    if world_size > 1:
        model = nn.parallel.DistributedDataParallel(
            raw_model, device_ids=[local_rank] if device.type == "cuda" else None
        )
    if cfg.train.compile:
        model = torch.compile(model)  # the checkpoint keeps raw_model's keys (no `_orig_mod.`)
    loss_fn = make_loss(cfg.train.loss, io.channels)
    autocast = autocast_context(cfg, device)

    tracker = Tracker(cfg, state.run_dir, state.wandb_run_id, rank)
    state.wandb_run_id, state.wandb_run_path = tracker.run_id, tracker.run_path
    stop = StopRequest()
    total_steps = planned_steps(cfg, len(train_loader))
    batches = micro_batches(train_loader, state, cfg.train.num_epochs)
    names: list[str] = train_loader.dataset_names  # type: ignore[attr-defined]
    accum = cfg.train.grad_accum_steps
    nonfinite = torch.zeros((), dtype=torch.bool, device=device)  # checked at log steps: no per-step sync
    state.status, state.message = "running", ""
    bar = progress_bar(cfg, state, total_steps, rank)
    log.info(
        "training %s on %s: step %d of %d, run dir %s",
        cfg.name,
        device,
        state.global_step,
        total_steps,
        state.run_dir,
    )

    # ---- the loop ----
    model.train()  # once: validation (evaluate_loader) switches the model back to train mode itself
    try:
        while state.global_step < total_steps:
            step = state.global_step
            apply_freeze(raw_model, cfg, step)
            train_loader.set_weights(loader_weights(train_loader, cfg, step))
            set_lr(optimizer, lr_at(cfg, step, total_steps, plateau["scale"]))
            step_loss: torch.Tensor | None = None  # summed on device: no tensor made, no host read per step
            got = 0
            for micro in range(accum):
                batch = next(batches, None)
                if batch is None:
                    break
                x, y = (t.to(device, non_blocking=True) for t in batch)
                sync = micro == accum - 1 or world_size == 1
                with contextlib.nullcontext() if sync else model.no_sync(), autocast:
                    loss = loss_fn(model(x), y)
                part = loss / accum if accum > 1 else loss  # x / 1 is x: one op fewer per step
                (scaler.scale(part) if scaler else part).backward()
                step_loss = loss.detach() if step_loss is None else step_loss + loss.detach()
                got += 1
                state.samples_seen += x.shape[0] * world_size
                drawn = names[train_loader.last_loader or 0]
                state.batches_drawn[drawn] = state.batches_drawn.get(drawn, 0) + 1
            if step_loss is None:
                break  # the configured number of epochs is done
            if got > 1:
                step_loss = step_loss / got
            if got < accum:  # a short last accumulation: average over what it had
                for p in raw_model.parameters():
                    if p.grad is not None:
                        p.grad.mul_(accum / got)
            nonfinite |= ~torch.isfinite(step_loss)
            if scaler:
                scaler.unscale_(optimizer)
            if cfg.train.grad_clip:
                norm = nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.train.grad_clip)
                if not scaler:  # fp16: the scaler skips non-finite steps itself
                    nonfinite |= ~torch.isfinite(norm)
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if ema:
                ema.update(raw_model)
            state.global_step += 1
            step = state.global_step
            bar.update(1)

            log_now = step % cfg.train.log_every_n_steps == 0 or step == total_steps
            validate_now = step % val_interval(cfg, len(train_loader)) == 0 or step == total_steps
            every = cfg.checkpoint.every_n_steps
            due = log_now or validate_now or bool(every and step % every == 0)
            # Ranks agree on a signal at steps they all sync at anyway; one process checks every step.
            stop_now = broadcast_flag(stop.requested, world_size, device) if world_size == 1 or due else False
            save_now = validate_now or stop_now or bool(every and step % every == 0)
            # the only host syncs: at log and checkpoint steps
            if (log_now or save_now) and broadcast_flag(nonfinite, world_size, device):
                return stop_on_nonfinite(state, tracker, step)
            if log_now:
                metrics = {
                    "train/loss": float(step_loss),
                    "train/lr": optimizer.param_groups[0]["lr"],
                    "train/epoch": float(state.epoch),
                }
                record(state, tracker, metrics, step, rank)
                bar.set_postfix(loss=f"{metrics['train/loss']:.4f}")
            early_stop = False
            if validate_now:
                early_stop = validate_and_track_best(
                    state, cfg, raw_model, ema, val_loader, loss_fn, autocast, device, tracker, plateau, rank
                )
                early_stop = broadcast_flag(early_stop, world_size, device)
            if stop_now:
                state.status = "stopped"
                state.message = f"stopped by signal {stop.requested} at step {step}; resume with `a2b resume`"
                log.warning(state.message)
            elif early_stop:
                state.status = "complete"
                state.message = (
                    f"early stopping at step {step}: {cfg.checkpoint.metric} did not improve "
                    f"for {state.bad_validations} validations"
                )
                log.info(state.message)
            elif step >= total_steps:
                state.status = "complete"
            if save_now or state.status != "running":
                save_checkpoint(state, parts, writer, best=state.checkpoint.best_step == step)
            if state.status != "running":
                break
        if state.status == "running":  # nothing left to do (a finished run resumed, or epochs ran out)
            state.status = "complete"
            if state.checkpoint.last_path != _ckpt_path(state):
                save_checkpoint(state, parts, writer, best=False)
        writer.wait()  # the last checkpoint is on disk before train() returns; a failed write fails the run
    except BaseException as e:
        state.status = "failed" if not isinstance(e, KeyboardInterrupt) else "stopped"
        state.message = f"{type(e).__name__}: {e}"
        if isinstance(e, torch.cuda.OutOfMemoryError):  # the step is lost, the last checkpoint is not
            state.message = out_of_memory_message(state, device, e)
            log.error(state.message)
            raise torch.cuda.OutOfMemoryError(state.message) from e
        raise
    finally:
        # a write in flight when the loop stopped still lands; a resumed finished run wrote nothing
        state.checkpoint.files = writer.close() or state.checkpoint.files
        bar.close()
        stop.restore()
        tracker.finish(0 if state.status in ("complete", "stopped") else 1)
        if world_size > 1 and dist.is_initialized():
            check_ranks_agree(raw_model, rank, world_size)
    return state


# ---- helpers, in the order the loop uses them ----


def init_distributed() -> tuple[int, int, int]:
    """(rank, world_size, local_rank); joins the process group when launched by torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    if world_size > 1:
        return dist.get_rank(), world_size, int(os.environ.get("LOCAL_RANK", "0"))
    return 0, 1, 0


def ensure_writable(run_dir: Path) -> None:
    """Fail now if the run directory can't be created or written; create nothing yet."""
    existing = run_dir.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(
            f"checkpoint.dir: can't write the run directory {run_dir} ({existing} is "
            f"{'not a directory' if not existing.is_dir() else 'not writable'})"
        )


def pick_device(cfg: RunConfig, local_rank: int) -> torch.device:
    want = cfg.train.device
    if want == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but no CUDA device is available")
    if want in ("auto", "cuda") and torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def configure_determinism(cfg: RunConfig, state: TrainState, device: torch.device) -> None:
    # CPU kernels give different bits with different thread counts: a resume reuses the first count.
    state.num_threads = state.num_threads or cfg.train.num_threads or torch.get_num_threads()
    torch.set_num_threads(state.num_threads)
    # The CPU kernels used here are deterministic already; the switch (which also imports inductor,
    # seconds of start-up) is for CUDA, where cuBLAS and cuDNN need it.
    if cfg.train.deterministic and device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _has_split(data: PreparedData, split: str) -> bool:
    return any(len(ds) for ds in data.splits.get(split, {}).values())


def build_optimizer(cfg: RunConfig, model: nn.Module) -> torch.optim.Optimizer:
    o = cfg.optimizer
    params = list(model.parameters())  # frozen ones too: freezing by step toggles requires_grad
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    if o.name == "adam":
        return torch.optim.Adam(params, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
    return torch.optim.AdamW(params, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)


class EMA:
    """Exponential moving average of the weights; validation and `best` use it when enabled."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].lerp_(v, 1.0 - self.decay)
            else:
                self.shadow[k].copy_(v)

    @contextlib.contextmanager
    def swapped_in(self, model: nn.Module) -> Iterator[None]:
        backup = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.shadow)
        try:
            yield
        finally:
            model.load_state_dict(backup)


def autocast_context(cfg: RunConfig, device: torch.device) -> Any:
    if cfg.train.precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if cfg.train.precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def planned_steps(cfg: RunConfig, batches_per_epoch: int) -> int:
    t = cfg.train
    by_epochs = math.ceil(batches_per_epoch * t.num_epochs / t.grad_accum_steps) if t.num_epochs else None
    candidates = [s for s in (t.max_steps, by_epochs) if s is not None]
    return min(candidates)


def val_interval(cfg: RunConfig, batches_per_epoch: int) -> int:
    if cfg.train.val_every_n_steps:
        return cfg.train.val_every_n_steps
    return max(1, math.ceil(batches_per_epoch / cfg.train.grad_accum_steps))  # once per epoch


def micro_batches(loader: MetaDataLoader, state: TrainState, num_epochs: int | None) -> Iterator[Any]:
    """Batches across epoch boundaries; state.epoch advances when the loader is exhausted."""
    while num_epochs is None or state.epoch < num_epochs:
        yield from loader
        state.epoch += 1
        loader.set_epoch(state.epoch)


def apply_freeze(model: nn.Module, cfg: RunConfig, step: int) -> None:
    for rule in cfg.model.freeze:
        frozen = rule.until_step is None or step < rule.until_step
        for name, p in model.named_parameters():
            if name.startswith(rule.prefix):
                p.requires_grad_(not frozen)


def lr_at(cfg: RunConfig, step: int, total: int, plateau_scale: float = 1.0) -> float:
    """The learning rate of `step`: a pure function of the step, so resume needs no scheduler state."""
    base, s = cfg.optimizer.lr, cfg.scheduler
    warm = s.warmup_steps
    if s.name == "onecycle" and warm == 0:
        warm = max(1, int(0.3 * total))
    if step < warm:
        start = base / 25 if s.name == "onecycle" else 0.0
        return start + (base - start) * (step + 1) / warm
    if s.name in ("constant", "plateau"):
        return base * plateau_scale
    progress = min(1.0, (step - warm) / max(1, total - warm))
    floor = s.min_lr_ratio
    if s.name == "linear":
        return base * (1.0 - (1.0 - floor) * progress)
    return base * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress)))  # cosine, onecycle


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = lr


def record(state: TrainState, tracker: Tracker, metrics: dict[str, float], step: int, rank: int) -> None:
    if rank != 0:
        return
    state.metrics.extend(MetricState(name=k, value=v, step=step) for k, v in metrics.items())
    tracker.log(metrics, step)


def out_of_memory_message(state: TrainState, device: torch.device, e: BaseException) -> str:
    cfg = state.config
    last = state.checkpoint.last_path
    kept = (
        f"the newest checkpoint {last} is kept: `a2b resume {state.run_dir}` continues from it"
        if last
        else "no checkpoint was written yet"
    )
    return (
        f"out of memory on {device} in step {state.global_step + 1} (data.batch_size="
        f"{cfg.data.batch_size}, train.grad_accum_steps={cfg.train.grad_accum_steps}); {kept}, or start "
        f"anew with a smaller batch size and more accumulation steps ({str(e).splitlines()[0][:200]})"
    )


def stop_on_nonfinite(state: TrainState, tracker: Tracker, step: int) -> TrainState:
    state.status = "stopped"
    state.message = (
        f"non-finite loss or gradient by step {step}: training stopped; the last good "
        f"checkpoint {state.checkpoint.last_path} is kept (lower the learning rate, check the data)"
    )
    log.error(state.message)
    return state


@torch.no_grad()
def evaluate_loader(
    model: nn.Module,
    loader: MetaDataLoader,
    loss_fn: Any,
    autocast: Any,
    device: torch.device,
    channels: list[str],
    prefix: str,
) -> dict[str, float]:
    model.eval()
    acc = MetricAccumulator(channels)
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        with autocast:
            pred = model(x)
        acc.update(pred.float(), y, loss_fn(pred, y))
    model.train()
    return acc.compute(prefix)


def validate_and_track_best(
    state: TrainState,
    cfg: RunConfig,
    model: nn.Module,
    ema: EMA | None,
    loader: MetaDataLoader | None,
    loss_fn: Any,
    autocast: Any,
    device: torch.device,
    tracker: Tracker,
    plateau: dict[str, Any],
    rank: int,
) -> bool:
    """Validate (rank 0), record metrics, update best/plateau/early-stopping. Returns: stop early?"""
    if rank != 0 or loader is None:
        return False
    with ema.swapped_in(model) if ema else contextlib.nullcontext():
        metrics = evaluate_loader(model, loader, loss_fn, autocast, device, cfg.data.channels, "val")
    record(state, tracker, metrics, state.global_step, rank)
    shown = {k: round(v, 4) for k, v in metrics.items() if "_" not in k}
    log.info("step %d (epoch %d): %s", state.global_step, state.epoch, shown)
    value = metrics.get(cfg.checkpoint.metric)
    if value is None or not math.isfinite(value):
        return False
    ck = state.checkpoint
    better = ck.best_value is None or (
        value > ck.best_value if cfg.checkpoint.mode == "max" else value < ck.best_value
    )
    if better:
        ck.best_value, ck.best_step = value, state.global_step
        state.bad_validations = 0
    else:
        state.bad_validations += 1
    if cfg.scheduler.name == "plateau":
        best = plateau["best"]
        improved = best is None or (value > best if cfg.checkpoint.mode == "max" else value < best)
        if improved:
            plateau["best"], plateau["bad"] = value, 0
        else:
            plateau["bad"] += 1
            if plateau["bad"] > cfg.scheduler.plateau_patience:
                plateau["scale"] *= cfg.scheduler.plateau_factor
                plateau["bad"] = 0
    patience = cfg.train.early_stopping_patience
    return patience is not None and state.bad_validations > patience


def broadcast_flag(flag: Any, world_size: int, device: torch.device) -> bool:
    """Every rank stops together: any rank's flag counts."""
    if world_size == 1:
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def check_ranks_agree(model: nn.Module, rank: int, world_size: int) -> None:
    """DDP keeps replicas identical; verify it at the end, so a silent desync can't go unnoticed."""
    digest = weights_digest(model)
    everyone: list[Any] = [None] * world_size
    dist.all_gather_object(everyone, digest)
    log.info("rank %d of %d: final weights sha256 %s", rank, world_size, digest)
    if len(set(everyone)) != 1:
        raise RuntimeError(f"ranks ended with different weights: {everyone}")


def weights_digest(model: nn.Module) -> str:
    import hashlib

    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# ---- checkpoints ----


def _ckpt_path(state: TrainState) -> str:
    return str(Path(state.run_dir) / checkpoint_name(state.global_step))


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], OptimizerState]:
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{idx}.{k}"] = v
            else:
                scalars.setdefault(str(idx), {})[k] = v
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    meta = OptimizerState(
        name=type(optimizer).__name__, param_groups=groups, scalar_state=scalars, lr=groups[0]["lr"]
    )
    return tensors, meta


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


def gather_rng(world_size: int) -> list[RNGState]:
    mine = RNGState.capture()
    if world_size == 1:
        return [mine]
    everyone: list[Any] = [None] * world_size
    dist.all_gather_object(everyone, mine.model_dump(mode="json"))
    return [RNGState.model_validate(r) for r in everyone]


@dataclass
class Checkpointed:
    """The live objects a checkpoint is saved from and restored into, beside the TrainState."""

    model: nn.Module  # unwrapped: no DDP or compile prefixes in the saved keys
    optimizer: torch.optim.Optimizer
    ema: EMA | None
    scaler: Any  # torch.amp.GradScaler for fp16, else None
    plateau: dict[str, Any]
    loader: MetaDataLoader
    rank: int


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


def save_checkpoint(state: TrainState, parts: Checkpointed, writer: CheckpointWriter, best: bool) -> None:
    model, optimizer, ema, scaler, plateau, loader, rank = astuple_shallow(parts)
    rngs = gather_rng(state.world_size)  # every rank takes part; only rank 0 writes
    if rank != 0:
        return
    cfg = state.config
    opt_tensors, opt_meta = optimizer_tensors(optimizer)
    opt_meta.scaler = scaler.state_dict() if scaler else None
    opt_meta.plateau = dict(plateau)
    io = model_io(cfg)
    first = next(model.parameters())
    state.rng = rngs
    state.optimizer = opt_meta
    state.model = ModelState(
        name=cfg.model.name,
        num_parameters=sum(p.numel() for p in model.parameters()),
        dtype=first.dtype,
        device=first.device,
        ema_file="ema.safetensors" if ema else None,
        input_shape=(io.in_frames, io.n_mels),
        output_shape=(io.out_steps, io.channels),
    )
    state.meta_loader = meta_loader_state(loader)
    path = Path(_ckpt_path(state))
    state.checkpoint.last_path = str(path)
    if best:
        state.checkpoint.best_path = str(path)
    tensors = {"model.safetensors": model.state_dict(), "optimizer.safetensors": opt_tensors}
    if ema:
        tensors["ema.safetensors"] = ema.shadow
    writer.save(state, path, tensors, best)


def write_checkpoint(
    state: TrainState, path: Path, tensors: dict[str, dict[str, torch.Tensor]], best: bool
) -> dict[str, str]:
    try:
        state.to_checkpoint(path, tensors)
    except OSError as e:  # disk full, permissions, a vanished run directory: name the checkpoint
        raise CheckpointError(f"{path}: the checkpoint could not be written ({e})") from e
    set_pointer(state.run_dir, "last", path)
    if best:
        set_pointer(state.run_dir, "best", path)
    prune_checkpoints(
        state.run_dir,
        state.config.checkpoint.keep_last,
        protect=[state.checkpoint.best_path, state.checkpoint.last_path],
    )
    return state.checkpoint.files


def astuple_shallow(parts: Checkpointed) -> tuple[Any, ...]:
    return tuple(getattr(parts, f.name) for f in fields(parts))  # dataclasses.astuple would deep-copy


def meta_loader_state(loader: MetaDataLoader) -> MetaDataLoaderState:
    sd = loader.state_dict()
    names = getattr(loader, "dataset_names", None) or [str(i) for i in range(len(loader.dataloaders))]
    loaders = [
        DataLoaderState(name=n, batches_consumed=c, num_batches=len(dl))
        for n, c, dl in zip(names, sd["consumed"], loader.dataloaders, strict=True)
    ]
    return MetaDataLoaderState(**sd, loaders=loaders)


def restore(state: TrainState, parts: Checkpointed) -> None:
    """Load everything the state points to; RNG last, so nothing built afterwards shifts it."""
    model, optimizer, ema, scaler, plateau, loader, rank = astuple_shallow(parts)
    ckpt = Path(state.checkpoint.last_path or "")
    model.load_state_dict(_checked_weights(load_tensors(ckpt, "model.safetensors", state), model, ckpt))
    assert state.optimizer is not None
    opt_tensors = load_tensors(ckpt, "optimizer.safetensors", state)
    load_optimizer(optimizer, _checked_optimizer(opt_tensors, optimizer, ckpt), state.optimizer)
    if ema and state.model and state.model.ema_file:
        name = state.model.ema_file
        ema.shadow = _checked_weights(load_tensors(ckpt, name, state), model, ckpt, name)
    if scaler and state.optimizer.scaler:
        scaler.load_state_dict(state.optimizer.scaler)
    plateau.update(state.optimizer.plateau)
    if state.meta_loader is not None:
        loader.load_state_dict(state.meta_loader.loader_state_dict())
    if rank < len(state.rng):
        state.rng[rank].restore()


def _checked_weights(
    tensors: dict[str, torch.Tensor], model: nn.Module, where: Path, name: str = "model.safetensors"
) -> dict[str, torch.Tensor]:
    """Refuse weights that don't fit this model, naming the keys and shapes."""
    own = model.state_dict()
    missing = sorted(set(own) - set(tensors))
    extra = sorted(set(tensors) - set(own))
    shapes = [
        f"{k}: {tuple(tensors[k].shape)} vs {tuple(own[k].shape)}"
        for k in own.keys() & tensors.keys()
        if tensors[k].shape != own[k].shape
    ]
    if missing or extra or shapes:
        raise CheckpointError(
            f"{where}/{name} does not fit model {type(model).__name__}: "
            f"missing keys {missing[:5]}, unexpected keys {extra[:5]}, wrong shapes {shapes[:5]}"
        )
    return tensors


def _checked_optimizer(
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
            f"{where}/optimizer.safetensors does not fit the optimizer of {len(params)} parameters: "
            f"unexpected keys {sorted(extra)[:5]}, wrong shapes {sorted(shapes)[:5]}"
        )
    return tensors


# ---- process plumbing ----


class StopRequest:
    """SIGTERM/SIGINT set a flag; the loop checkpoints at the next step boundary and stops."""

    def __init__(self) -> None:
        self.requested: int | None = None
        self._old: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.requested = signum

    def restore(self) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        self._old.clear()


def progress_bar(cfg: RunConfig, state: TrainState, total: int, rank: int) -> Any:
    from tqdm import tqdm

    show = cfg.train.progress_bar and rank == 0 and sys.stderr.isatty()
    return tqdm(total=total, initial=state.global_step, disable=not show, desc=cfg.name, unit="step")
