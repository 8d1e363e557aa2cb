"""train(cfg) -> TrainState: the training loop, readable top to bottom.

Everything a step depends on is in the TrainState (config, step, epoch, RNG, loader positions, optimizer)
so that a run resumed from any checkpoint continues bit for bit. Saving and restoring the live objects is
checkpoint/checkpointer.py's; what evaluation shares with training (device, autocast, EMA, a pass over a
loader) is training/engine.py's.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from a2b_pipeline.checkpoint.checkpointer import Checkpointer, CheckpointWriter
from a2b_pipeline.checkpoint.directory import CheckpointError, checkpoint_name, list_checkpoints
from a2b_pipeline.checkpoint.lock import hold_run_dir
from a2b_pipeline.configs import ConfigError, RunConfig
from a2b_pipeline.data.meta_dataloader import MetaDataLoader
from a2b_pipeline.data.pipeline import (
    PreparedData,
    loader_weights,
    make_loader,
    prepare_data,
    save_norm_stats,
)
from a2b_pipeline.models import build_model, model_io
from a2b_pipeline.state import MetricRecord, RNGState, TrainState
from a2b_pipeline.training.distributed import StopRequest, broadcast_flag, check_ranks_agree, init_distributed
from a2b_pipeline.training.engine import EMA, autocast_context, evaluate_loader, pick_device
from a2b_pipeline.training.metrics import make_loss
from a2b_pipeline.training.preflight import check_runnable
from a2b_pipeline.training.progress import Progress
from a2b_pipeline.training.schedule import (
    apply_freeze,
    encoder_lr_at,
    lr_at,
    planned_steps,
    set_lr,
    val_interval,
)
from a2b_pipeline.training.tracking import Tracker

log = logging.getLogger("a2b_pipeline.train")

# A hook is called as hook(model, state) right after the model is built (before its weights are restored),
# e.g. to register forward hooks for profiling, or to inject faults in tests.
ModelHook = Callable[[nn.Module, TrainState], Any]


@dataclass
class Run:
    """Everything train() builds from the state's config, for the helpers of the loop."""

    cfg: RunConfig
    rank: int
    world_size: int
    device: torch.device
    model: nn.Module  # what the step calls: DDP- and compile-wrapped where configured
    raw_model: nn.Module
    optimizer: torch.optim.Optimizer
    ema: EMA | None
    scaler: Any  # torch.amp.GradScaler for fp16, else None
    plateau: dict[str, Any]
    train_loader: MetaDataLoader
    val_loader: MetaDataLoader | None
    loss_fn: Any
    autocast: Any
    tracker: Tracker
    checkpointer: Checkpointer
    total_steps: int

    def agree(self, flag: Any) -> bool:
        """Every rank acts together on a flag any rank raised (a collective under DDP)."""
        return broadcast_flag(flag, self.world_size, self.device)


def train(cfg: TrainState, *, model_hooks: Sequence[ModelHook] = ()) -> TrainState:
    """Train the run `cfg` (a TrainState: fresh from TrainState.from_config, or resumed with
    TrainState.from_checkpoint) to its end, a stop signal or a non-finite loss; return the final state:
    status, metric_state, model_state's best/last weight paths, checkpoint_state's checkpoint paths."""
    ensure_writable(cfg.run_dir)  # fail before any work, naming the path
    check_runnable(cfg.config)  # a model this machine can't hold is a config error, before any data
    with hold_run_dir(cfg.run_dir):  # one trainer per run directory (RunDirBusyError otherwise)
        return _train(cfg, model_hooks)


@dataclass(frozen=True)
class TrainOutput:
    """What the seed's Scratch has `fit()` return: the metrics, the checkpoints written and the best one's
    path. A view of the TrainState `train` returns (kept as `state`), not a loop of its own."""

    metrics: dict[str, float | int]  # the newest value of every train/... and val/... metric
    paths_to_artifacts: list[Path]  # the run's checkpoint directories on disk, oldest first
    best_checkpoint_path: Path | None  # by checkpoint.metric; None before a validation
    state: TrainState

    @classmethod
    def of(cls, state: TrainState) -> TrainOutput:
        return cls(
            metrics=dict(state.metric_state.metrics),
            paths_to_artifacts=list(state.checkpoint_state.checkpoint_paths),
            best_checkpoint_path=state.best_checkpoint,
            state=state,
        )


def fit(cfg: TrainState, *, model_hooks: Sequence[ModelHook] = ()) -> TrainOutput:
    """The seed's `fit()`: `train`, seen as a TrainOutput."""
    return TrainOutput.of(train(cfg, model_hooks=model_hooks))


def _train(state: TrainState, model_hooks: Sequence[ModelHook]) -> TrainState:
    """The loop, in one piece on purpose (about 80 lines): what a step does and when it logs, validates,
    checkpoints and stops reads top to bottom here; the helpers below do one thing each."""
    run = setup(state, model_hooks)
    step, end = state.global_step, run.total_steps
    if step > end:  # else it "completes" untrained, naming a checkpoint after that step
        raise CheckpointError(f"{state.run_dir}: global_step {step} is past the run's end ({end} steps)")
    stop = StopRequest()
    batches = micro_batches(run.train_loader, state, run.cfg.train.num_epochs)
    nonfinite = torch.zeros((), dtype=torch.bool, device=run.device)  # read at log steps: no per-step sync
    state.status, state.stop_reason, state.message = "in_progress", None, ""
    bar = progress_bar(run.cfg, state, run.total_steps, run.rank)
    log.info(
        "training %s on %s: step %d of %d, run dir %s",
        run.cfg.name,
        run.device,
        state.global_step,
        run.total_steps,
        state.run_dir,
    )

    run.model.train()  # once: validation (evaluate_loader) switches the model back to train mode itself
    try:
        while state.global_step < run.total_steps:
            step_loss = train_step(state, run, batches)
            if step_loss is None:
                break  # the configured number of epochs is done
            nonfinite |= step_loss[1]
            state.global_step += 1
            step = state.global_step
            bar.update(1)

            cfg_ = run.cfg
            log_now = step % cfg_.train.log_every_n_steps == 0 or step == run.total_steps
            validate_now = step % val_interval(cfg_, len(run.train_loader)) == 0 or step == run.total_steps
            every = cfg_.checkpoint.every_n_steps
            due = log_now or validate_now or bool(every and step % every == 0)
            # Ranks agree on a signal at steps they all sync at anyway; one process checks every step.
            stop_now = run.agree(stop.requested) if run.world_size == 1 or due else False
            save_now = validate_now or stop_now or bool(every and step % every == 0)
            # the only host syncs: at log and checkpoint steps
            if (log_now or save_now) and run.agree(nonfinite):
                return stop_on_nonfinite(state, step)
            if log_now:
                metrics = {
                    "train/loss": float(step_loss[0]),
                    "train/lr": run.optimizer.param_groups[0]["lr"],
                    "train/epoch": float(state.epoch),
                }
                record(state, run, metrics)
                bar.set_postfix(loss=f"{metrics['train/loss']:.4f}")
            early_stop = run.agree(validate_and_track_best(state, run)) if validate_now else False
            if stop_now:
                state.status, state.stop_reason = "stopped", "signal"
                state.message = f"stopped by signal {stop.requested} at step {step}; resume with `a2b resume`"
                log.warning(state.message)
            elif early_stop:
                state.status = "complete"
                state.message = (
                    f"early stopping at step {step}: {cfg_.checkpoint.metric} did not improve "
                    f"for {state.bad_validations} validations"
                )
                log.info(state.message)
            elif step >= run.total_steps:
                state.status = "complete"
            if save_now or state.status != "in_progress":
                run.checkpointer.save(state, best=state.checkpoint_state.best_step == step)
            if state.status != "in_progress":
                break
        if state.status == "in_progress":  # nothing left to do (a finished run resumed, or epochs ran out)
            state.status = "complete"
            if state.last_checkpoint != state.run_dir / checkpoint_name(state.global_step):
                run.checkpointer.save(state, best=False)
        run.checkpointer.writer.wait()  # the last checkpoint is on disk; a failed write fails the run
    except BaseException as e:
        state.status = "stopped"
        state.stop_reason = "signal" if isinstance(e, KeyboardInterrupt) else "error"
        state.message = f"{type(e).__name__}: {e}"
        if isinstance(e, torch.cuda.OutOfMemoryError):  # the step is lost, the last checkpoint is not
            state.stop_reason, state.message = "out_of_memory", out_of_memory_message(state, run.device, e)
            log.error(state.message)
            raise torch.cuda.OutOfMemoryError(state.message) from e
        raise
    finally:
        finish(state, run, stop, bar)
    return state


# ---- setup ----


def setup(state: TrainState, model_hooks: Sequence[ModelHook]) -> Run:
    """Build (or restore) everything the loop needs from the state; fail before any work where possible."""
    cfg = state.config
    rank, world_size, local_rank = init_distributed()
    resuming = state.model_state.model_loaded
    if resuming and state.world_size != world_size:
        raise CheckpointError(
            f"{state.last_checkpoint}: written with world size {state.world_size}, resumed with {world_size}"
        )
    state.world_size = world_size
    check_schedules_fit(cfg, world_size)
    device = pick_device(cfg, local_rank)
    configure_determinism(cfg, state, device)
    if not resuming:  # a fresh run starts from the state's seeded generators (each rank its own seed)
        (state.rng_state if rank == 0 else RNGState.seeded(state.rng_state.seed + rank)).restore()

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
    val_loader = make_loader(data, cfg, "val") if rank == 0 and has_split(data, "val") else None
    io = model_io(cfg)
    raw_model = build_model(cfg.model, io).to(device)
    for hook in model_hooks:
        hook(raw_model, state)
    optimizer = build_optimizer(cfg, raw_model)
    ema = EMA(raw_model, cfg.train.ema_decay) if cfg.train.ema_decay else None
    scaler = torch.amp.GradScaler(device.type) if cfg.train.precision == "fp16" else None
    plateau: dict[str, Any] = {"scale": 1.0, "best": None, "bad": 0}
    writer = CheckpointWriter(background=cfg.checkpoint.async_write and rank == 0)
    checkpointer = Checkpointer(raw_model, optimizer, ema, scaler, plateau, train_loader, rank, writer)
    if resuming:
        checkpointer.restore(state)
    else:
        train_loader.set_epoch(state.epoch)
    model: nn.Module = raw_model
    if world_size > 1:
        model = nn.parallel.DistributedDataParallel(
            raw_model, device_ids=[local_rank] if device.type == "cuda" else None
        )
    if cfg.train.compile:
        model = torch.compile(model)  # the checkpoint keeps raw_model's keys (no `_orig_mod.`)
    tracker = Tracker(cfg, str(state.run_dir), state.wandb_run_id, rank)
    state.wandb_run_id, state.wandb_run_path = tracker.run_id, tracker.run_path
    return Run(
        cfg=cfg,
        rank=rank,
        world_size=world_size,
        device=device,
        model=model,
        raw_model=raw_model,
        optimizer=optimizer,
        ema=ema,
        scaler=scaler,
        plateau=plateau,
        train_loader=train_loader,
        val_loader=val_loader,
        loss_fn=make_loss(cfg.train.loss, io.channels),
        autocast=autocast_context(cfg, device),
        tracker=tracker,
        checkpointer=checkpointer,
        total_steps=planned_steps(cfg, len(train_loader)),
    )


def check_schedules_fit(cfg: RunConfig, world_size: int) -> None:
    """DDP syncs the gradients of the parameters that were trainable when it started: an encoder whose
    layers unfreeze later would train apart on each rank."""
    ft = getattr(cfg.model, "finetune", None)
    if world_size > 1 and ft is not None and ft.after_step > 0:
        raise ConfigError(
            f"model.finetune.after_step={ft.after_step}: unfreezing during a run is not supported with "
            f"{world_size} processes (DDP); set after_step: 0 or train in one process"
        )


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


def has_split(data: PreparedData, split: str) -> bool:
    return any(len(ds) for ds in data.splits.get(split, {}).values())


def build_optimizer(cfg: RunConfig, model: nn.Module) -> torch.optim.Optimizer:
    o = cfg.optimizer
    params: Any = list(model.parameters())  # frozen ones too: freezing by step toggles requires_grad
    own = getattr(model, "encoder_parameters", None)
    encoder = own() if own is not None else []
    if encoder:  # a pretrained encoder learns at its own rate (schedule.encoder_lr_at)
        ids = {id(p) for p in encoder}
        params = [
            {"params": [p for p in params if id(p) not in ids]},
            {"params": encoder, "name": "encoder"},
        ]
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    if o.name == "adam":
        return torch.optim.Adam(params, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
    return torch.optim.AdamW(params, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)


# ---- one step ----


def train_step(
    state: TrainState, run: Run, batches: Iterator[Any]
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """One optimizer step over `grad_accum_steps` micro-batches: (mean loss, non-finite flag), both on the
    device (no host read), or None when the batches ran out before the step began."""
    cfg, raw_model, optimizer, scaler = run.cfg, run.raw_model, run.optimizer, run.scaler
    step = state.global_step
    apply_freeze(raw_model, cfg, step)
    run.train_loader.set_weights(loader_weights(run.train_loader, cfg, step))
    lr = lr_at(cfg, step, run.total_steps, run.plateau["scale"])
    set_lr(optimizer, lr, encoder_lr_at(cfg, step, lr))
    accum = cfg.train.grad_accum_steps
    names = run.train_loader.dataset_names
    step_loss: torch.Tensor | None = None  # summed on device
    got = 0
    for micro in range(accum):
        batch = next(batches, None)
        if batch is None:
            break
        x, y = (t.to(run.device, non_blocking=True) for t in batch)
        sync = micro == accum - 1 or run.world_size == 1
        with contextlib.nullcontext() if sync else run.model.no_sync(), run.autocast:
            loss = run.loss_fn(run.model(x), y)
        part = loss / accum if accum > 1 else loss  # x / 1 is x: one op fewer per step
        (scaler.scale(part) if scaler else part).backward()
        step_loss = loss.detach() if step_loss is None else step_loss + loss.detach()
        got += 1
        state.samples_seen += x.shape[0] * run.world_size
        drawn = names[run.train_loader.last_loader or 0]
        state.batches_drawn[drawn] = state.batches_drawn.get(drawn, 0) + 1
    if step_loss is None:
        return None
    if got > 1:
        step_loss = step_loss / got
    if got < accum:  # a short last accumulation: average over what it had
        for p in raw_model.parameters():
            if p.grad is not None:
                p.grad.mul_(accum / got)
    nonfinite = ~torch.isfinite(step_loss)
    if scaler:
        scaler.unscale_(optimizer)
    if cfg.train.grad_clip:
        norm = nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.train.grad_clip)
        if not scaler:  # fp16: the scaler skips non-finite steps itself
            nonfinite = nonfinite | ~torch.isfinite(norm)
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if run.ema:
        run.ema.update(raw_model)
    return step_loss, nonfinite


def micro_batches(loader: MetaDataLoader, state: TrainState, num_epochs: int | None) -> Iterator[Any]:
    """Batches across epoch boundaries; state.epoch advances when the loader is exhausted."""
    while num_epochs is None or state.epoch < num_epochs:
        yield from loader
        state.epoch += 1
        loader.set_epoch(state.epoch)


# ---- logging, validation, stopping ----


def record(state: TrainState, run: Run, metrics: dict[str, float]) -> None:
    """Newest values into metric_state, every value into the history, and to wandb (rank 0)."""
    if run.rank != 0:
        return
    step = state.global_step
    state.metric_state.metrics.update(metrics)
    state.metric_history.extend(MetricRecord(name=k, value=v, step=step) for k, v in metrics.items())
    run.tracker.log(metrics, step)


def validate_and_track_best(state: TrainState, run: Run) -> bool:
    """Validate (rank 0), record metrics, update best/plateau/early-stopping. Returns: stop early?"""
    cfg, model = run.cfg, run.raw_model
    if run.rank != 0 or run.val_loader is None:
        return False
    with run.ema.swapped_in(model) if run.ema else contextlib.nullcontext():
        metrics = evaluate_loader(
            model, run.val_loader, run.loss_fn, run.autocast, run.device, cfg.data.channels, "val"
        )
    record(state, run, metrics)
    shown = {k: round(v, 4) for k, v in metrics.items() if "_" not in k}
    log.info("step %d (epoch %d): %s", state.global_step, state.epoch, shown)
    value = metrics.get(cfg.checkpoint.metric)
    if value is None or not math.isfinite(value):
        return False
    ck = state.checkpoint_state
    if improves(value, ck.best_value, cfg.checkpoint.mode):
        ck.best_value, ck.best_step = value, state.global_step
        state.bad_validations = 0
    else:
        state.bad_validations += 1
    if cfg.scheduler.name == "plateau":
        plateau = run.plateau
        if improves(value, plateau["best"], cfg.checkpoint.mode):
            plateau["best"], plateau["bad"] = value, 0
        else:
            plateau["bad"] += 1
            if plateau["bad"] > cfg.scheduler.plateau_patience:
                plateau["scale"] *= cfg.scheduler.plateau_factor
                plateau["bad"] = 0
    patience = cfg.train.early_stopping_patience
    return patience is not None and state.bad_validations > patience


def improves(value: float, best: float | None, mode: str) -> bool:
    return best is None or (value > best if mode == "max" else value < best)


def stop_on_nonfinite(state: TrainState, step: int) -> TrainState:
    state.status, state.stop_reason = "stopped", "non_finite_loss"
    state.message = (
        f"non-finite loss or gradient by step {step}: training stopped; the last good "
        f"checkpoint {state.last_checkpoint} is kept (lower the learning rate, check the data)"
    )
    log.error(state.message)
    return state


def out_of_memory_message(state: TrainState, device: torch.device, e: BaseException) -> str:
    cfg = state.config
    last = state.last_checkpoint
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


def finish(state: TrainState, run: Run, stop: StopRequest, bar: Any) -> None:
    """Whatever way the loop ended: the write in flight lands, the state lists the run's checkpoints, the
    tracker and signal handlers are closed, and under DDP the replicas are checked to agree."""
    # a resumed finished run wrote nothing: it keeps its checkpoint's digests
    state.checkpoint_state.files = run.checkpointer.writer.close() or state.checkpoint_state.files
    if run.rank == 0:
        state.checkpoint_state.checkpoint_paths = list_checkpoints(state.run_dir)
        last = state.last_checkpoint
        state.checkpoint_state.steps_since_last_checkpoint = (
            state.global_step - int(last.name.removeprefix("step_")) if last else state.global_step
        )
    bar.close()
    stop.restore()
    run.tracker.finish(0 if state.stop_reason in (None, "signal", "non_finite_loss") else 1)
    if run.world_size > 1 and dist.is_initialized():
        check_ranks_agree(run.raw_model, run.rank, run.world_size)


def progress_bar(cfg: RunConfig, state: TrainState, total: int, rank: int) -> Progress:
    """A bar on a terminal (train.progress_bar), else a progress line every few seconds (progress.py)."""
    bar = None if cfg.train.progress_bar else False  # None: a bar when stderr is a terminal
    return Progress(cfg.name, total, state.global_step, enabled=rank == 0, bar=bar)
