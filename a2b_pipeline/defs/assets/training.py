"""The training assets: a run of `train` per (config, data), and its best checkpoint, verified.

meta_loader_spec -> training_run -> best_checkpoint
"""

import time
from pathlib import Path
from typing import Any

from dagster import Config, Failure, MetadataValue
from pydantic import Field

from a2b_pipeline.defs.assets.data import meta_loader_spec
from a2b_pipeline.defs.common import plot_loss_curve, png_markdown, rounded, state_sha256
from a2b_pipeline.defs.template import AssetStep, Produced, experiment_asset

# A run launcher that understands these gives the training step a GPU: the k8s launcher reads
# `dagster-k8s/config` (as a job tag for the run pod; as an op tag with the k8s_job_executor), the
# run coordinator's tag concurrency limit on `gpu` keeps one GPU run per GPU (docker/dagster.yaml).
GPU_TAGS: dict[str, Any] = {
    "gpu": "1",
    "dagster-k8s/config": {
        "container_config": {
            "resources": {"limits": {"nvidia.com/gpu": "1"}, "requests": {"nvidia.com/gpu": "1"}}
        }
    },
}
GPU_POOL = "gpu"  # op concurrency pool: `dagster instance concurrency set gpu 1` on a one-GPU host


class TrainingRunConfig(Config):
    fresh: bool = Field(
        default=False,
        description="Start a new run even if a run of this config and data exists (the old run directory is "
        "kept, renamed). Otherwise an interrupted run resumes from its last checkpoint and a complete one is "
        "reported as it is.",
    )


def _set_aside(run_dir: Path, step: AssetStep) -> None:
    aside = run_dir.with_name(f"{run_dir.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
    run_dir.rename(aside)
    step.log.info(f"fresh run requested: the previous run directory is now {aside}")


def _say_if_no_gpu(step: AssetStep) -> None:
    """This asset asks for a GPU; with train.device auto a run that finds none says so (then uses the CPU)."""
    import torch

    if step.exp.cfg.train.device == "auto" and not torch.cuda.is_available():
        step.log.warning(
            "no GPU found (train.device: auto): training on the CPU. Check the run launcher's GPU request "
            "(docker: device_requests; k8s: nvidia.com/gpu), or set A2B_DEVICE=cpu to mean it."
        )


def _job_dir(step: AssetStep) -> Path:
    """A launch's Slurm files (script, effective config, job log, Pipes files): one directory per Dagster
    run, beside the experiment's run directories on the shared filesystem."""
    return step.exp.dir / "slurm" / step.run_id


def _loss_curve(state: Any, name: str) -> dict[str, Any]:
    """The training_run page's loss curve (train and val loss over steps) and the last values, rounded."""
    history = [(m.name, m.step, m.value) for m in state.metric_history]
    png = plot_loss_curve(history, f"{name}: loss over steps (step {state.global_step})")
    last = {n: v for n, _, v in history if n.endswith("/loss")}  # history is in step order: the last wins
    return {
        "loss_curve": png_markdown(png, f"{name}: loss over steps"),
        **{f"last_{n.replace('/', '_')}": rounded(v) for n, v in sorted(last.items())},
    }


def _start_or_resume(step: AssetStep, run_dir: Path) -> tuple[Any, bool]:
    """The TrainState to train from: the run directory's newest checkpoint, or a new one. True when that
    checkpoint is a complete run (reported as it is, not trained again)."""
    from a2b_pipeline.configs import with_run_settings
    from a2b_pipeline.security import Grant, check_grant
    from a2b_pipeline.state import TrainState, list_checkpoints

    if not list_checkpoints(run_dir):
        step.log.info(f"starting a new run in {run_dir}")
        return TrainState.from_config(step.exp.cfg, run_dir=run_dir), False
    state = TrainState.from_checkpoint(run_dir)
    # the checkpoint's config reaches no further than the experiment's own config (#24)
    check_grant(state.config, Grant.from_config(step.exp.cfg, str(step.exp.config_file)), str(run_dir))
    state.config = with_run_settings(state.config, step.exp.cfg)
    if state.status == "complete":
        step.log.info(
            f"{run_dir} already holds a complete run of this config and data (step {state.global_step}); "
            "reporting it. Launch with config `fresh: true` to train again."
        )
        return state, True
    step.log.info(f"resuming {run_dir} from step {state.global_step} (status was {state.status!r})")
    return state, False


@experiment_asset(
    code_version="1",
    reads=["dataset_splits", "meta_loader_spec"],
    config=TrainingRunConfig,
    deps=[meta_loader_spec],
    kinds={"pytorch"},
    op_tags=GPU_TAGS,
    pool=GPU_POOL,
    description="Runs `train` for the experiment on the data dataset_splits recorded, in "
    "`<checkpoint.dir>/<experiment>/train-<config hash>-<data version>`; a relaunch after an interruption "
    "resumes from that directory's newest valid checkpoint.",
)
def training_run(step: AssetStep) -> Produced:
    from a2b_pipeline.rundir_lock import hold_run_dir
    from a2b_pipeline.state import TrainState
    from a2b_pipeline.train import train

    data_version = step.upstream["dataset_splits"]["data_version"]
    if step.upstream["meta_loader_spec"]["data_version"] != data_version:
        raise Failure(
            "meta_loader_spec and dataset_splits disagree on the data version: materialize both again"
        )
    run_dir = step.exp.run_dir(data_version)
    # One trainer per run directory (a scheduled retrain beside a UI launch): a live run is neither set
    # aside nor resumed under its owner's feet; the second launch fails naming the owner.
    if step.config.fresh and run_dir.exists():
        with hold_run_dir(run_dir):
            _set_aside(run_dir, step)
    compute = step.context.resources.compute
    job_metadata: dict[str, Any] = {}
    with hold_run_dir(run_dir):
        state, reused = _start_or_resume(step, run_dir)
        resumed_from = state.global_step
        if not reused and compute.launch == "process":
            _say_if_no_gpu(step)
            state = train(state)
    if not reused and compute.launch != "process":  # the job holds the run directory while it trains
        job_metadata = compute.train_elsewhere(step.context, step.exp.cfg, run_dir, _job_dir(step))
        state = TrainState.from_checkpoint(run_dir)

    last = state.last_checkpoint
    state_path = last / "train_state.json" if last else run_dir / "train_state.json"
    failure = None
    if state.status != "complete":
        # Not a materialization: the checkpoint is kept, and launching again resumes from it.
        failure = (
            f"training {state.status} at step {state.global_step}: {state.message}. Launch training_run "
            f"again to resume from {last} (or with config `fresh: true` to start over)."
        )
    elif state.data_version != data_version:
        step.log.warning(
            f"training read data version {state.data_version}, dataset_splits recorded {data_version}: "
            "the corpus changed while the run went on"
        )
    checkpoint_sha = state_sha256(last) if last else None
    return Produced(
        record={
            "config_hash": state.config_hash,
            "data_version": state.data_version,
            "run_dir": str(run_dir),
            "status": state.status,
            "stop_reason": state.stop_reason,
            "global_step": state.global_step,
            "resumed_from_step": resumed_from,
            "last_checkpoint": str(last) if last else None,
            "best_checkpoint": str(state.best_checkpoint or "") or None,
            "best_metric": state.checkpoint_state.best_metric,
            "best_value": state.checkpoint_state.best_value,
            "last_model_path": str(state.model_state.last_model_path),
            "best_model_path": str(state.model_state.best_model_path),
            "metric_state": state.metric_state.metrics,
            "train_state": str(state_path),
            "wandb_run_path": state.wandb_run_path,
            "message": state.message,
        },
        data_version=state.data_version,
        version_parts=[checkpoint_sha],
        metadata={
            **_loss_curve(state, step.exp.name),
            "run_dir": MetadataValue.path(str(run_dir)),
            "resumed_from_step": MetadataValue.int(resumed_from),
            "epoch": MetadataValue.int(state.epoch),
            "samples_seen": MetadataValue.int(state.samples_seen),
            **({"message": state.message} if state.message else {}),
            "data_version_matches_splits": state.data_version == data_version,
            **job_metadata,
        },
        state=state,
        state_path=state_path,
        checkpoint=last,
        failure=failure,
        reused=(
            f"yes: the complete run in {run_dir} (step {state.global_step}) was reported, not retrained "
            "(launch config `fresh: true` trains anew)"
            if reused
            else None
        ),
        trained=True,
    )


@experiment_asset(
    code_version="1",
    reads=["training_run"],
    deps=[training_run],
    kinds={"pytorch"},
    description="The training run's best checkpoint by `checkpoint.metric`, verified (every file's checksum) "
    "and pinned by the sha256 of its train_state.json.",
)
def best_checkpoint(step: AssetStep) -> Produced:
    from a2b_pipeline.state import CheckpointError, TrainState

    run = step.upstream["training_run"]
    chosen = run.get("best_checkpoint") or run.get("last_checkpoint")
    if not chosen:
        raise Failure(f"training_run [{step.exp.name}] recorded no checkpoint")
    ckpt = Path(chosen)
    try:
        state = TrainState.from_checkpoint(ckpt)  # checks every file's digest
    except CheckpointError as e:
        raise Failure(f"best checkpoint of {step.exp.name} does not verify: {e}") from None
    state_path = ckpt / "train_state.json"
    ckpt_sha = state_sha256(ckpt)
    return Produced(
        record={
            "config_hash": state.config_hash,
            "data_version": state.data_version,
            "checkpoint": str(ckpt),
            "checkpoint_sha256": ckpt_sha,
            "model_digest": state.checkpoint_state.files.get("model.safetensors"),
            "files": state.checkpoint_state.files,
            "step": state.global_step,
            "best_metric": state.checkpoint_state.best_metric,
            "best_value": state.checkpoint_state.best_value,
            "train_state": str(state_path),
            "wandb_run_path": state.wandb_run_path,
            "training_run": run["train_state"],
        },
        data_version=state.data_version,
        version_parts=[ckpt_sha],
        metadata={
            "step": MetadataValue.int(state.global_step),
            "best_value": rounded(state.checkpoint_state.best_value),
            "is_last_checkpoint": str(ckpt) == str(run.get("last_checkpoint")),
        },
        state=state,
        state_path=state_path,
        checkpoint=ckpt,
        trained=True,
    )
