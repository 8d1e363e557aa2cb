"""The training assets: a run of `train` per (config, data), and its best checkpoint, verified.

meta_loader_spec -> training_run -> best_checkpoint
"""

from collections.abc import Callable
from pathlib import Path
from typing import Any

from dagster import Config, Failure, MetadataValue
from pydantic import Field

from a2b_pipeline.checkpoint.directory import STATE_FILE
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
ON_A_GPU: dict[str, Any] = {"op_tags": GPU_TAGS, "pool": GPU_POOL}  # the @asset keywords of a training step


class TrainingRunConfig(Config):
    fresh: bool = Field(
        default=False,
        description="Start a new run even if a run of this config and data exists: in a new run directory "
        "(`<run dir>.attempt-<n>`); the earlier one stays where it is, so what earlier materializations "
        "recorded keeps its meaning. Otherwise an interrupted run resumes from its last checkpoint and a "
        "complete one is reported as it is.",
    )


def launch_id(context: Any) -> str:
    """The same for a run and its retries (re-executions): the root run's id."""
    return context.run.tags.get("dagster/root_run_id") or context.run.run_id


def _say_if_no_gpu(log: Any) -> None:
    """This asset asks for a GPU; with train.device auto a run that finds none says so (then uses the CPU)."""
    import torch

    if not torch.cuda.is_available():
        log.warning(
            "no GPU found (train.device: auto): training on the CPU. Check the run launcher's GPU request "
            "(docker: device_requests; k8s: nvidia.com/gpu), or set A2B_DEVICE=cpu to mean it."
        )


def run_where_configured(
    context: Any, cfg: Any, base: Path, *, fresh: bool, job_dir: Path, say: Callable[[str], None]
) -> tuple[Any, dict[str, Any]]:
    """runs.py decides (resume / report / refuse / a new directory for `fresh`, under the run's lock), then
    the training runs here or as a Slurm job (the `compute` resource's `launch`), which runs `a2b train` in
    the directory chosen. Returns runs.RunResult and the metadata the job reported."""
    from a2b_pipeline.configs import ConfigError
    from a2b_pipeline.runs import RunResult, prepare_run, run_training
    from a2b_pipeline.state import TrainState

    compute = context.resources.compute
    try:
        if compute.launch == "process":
            if cfg.train.device == "auto":
                _say_if_no_gpu(context.log)
            return run_training(cfg, base, fresh=fresh, launch=launch_id(context), say=say), {}
        start = prepare_run(cfg, base, fresh=fresh, launch=launch_id(context), say=say)
        if start.action == "complete":
            return RunResult(start.state, "complete", start.state.global_step), {}
        metadata = compute.train_elsewhere(context, cfg, start.run_dir, job_dir)
        state = TrainState.from_checkpoint(start.run_dir)
        return RunResult(state, start.action, start.state.global_step), metadata
    except ConfigError as e:  # a refusal (unreadable checkpoints, another config, a live owner)
        raise Failure(description=str(e)) from None


def slurm_job_dir(step: AssetStep) -> Path:
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


def _splits_data_version(step: AssetStep) -> str:
    """The data version dataset_splits recorded, which meta_loader_spec must have planned for."""
    data_version = step.upstream["dataset_splits"]["data_version"]
    if step.upstream["meta_loader_spec"]["data_version"] != data_version:
        raise Failure(
            "meta_loader_spec and dataset_splits disagree on the data version: materialize both again"
        )
    return data_version


def _run_record(state: Any, resumed_from: int) -> dict[str, Any]:
    """What training_run records of the run: best_checkpoint and the leaderboard read it."""
    last = state.last_checkpoint
    return {
        "config_hash": state.config_hash,
        "data_version": state.data_version,
        "run_dir": str(state.run_dir),
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
        "train_state": str((last or state.run_dir) / STATE_FILE),
        "wandb_run_path": state.wandb_run_path,
        "message": state.message,
    }


def _not_complete(state: Any) -> str | None:
    """Why a run that stopped is not a materialization (its checkpoint is kept: launching again resumes)."""
    if state.status == "complete":
        return None
    return (
        f"training {state.status} at step {state.global_step} ({state.stop_reason}): {state.message}. "
        f"Launching training_run again resumes from {state.last_checkpoint}"
        + (
            ": change what caused the stop first, or it stops the same way again"
            if state.stop_reason not in (None, "signal")
            else ""
        )
        + " (config `fresh: true` starts over in a new run directory)."
    )


@experiment_asset(
    code_version="1",
    reads=["dataset_splits", "meta_loader_spec"],
    config=TrainingRunConfig,
    deps=[meta_loader_spec],  # not dataset_splits: it is upstream of meta_loader_spec already
    kinds={"pytorch"},
    **ON_A_GPU,
    description="Runs `train` for the experiment on the data dataset_splits recorded, in "
    "`<checkpoint.dir>/<experiment>/train-<config hash>-<data version>`; a relaunch after an interruption "
    "resumes from that directory's newest valid checkpoint.",
)
def training_run(step: AssetStep) -> Produced:
    data_version = _splits_data_version(step)
    result, job_metadata = run_where_configured(
        step.context,
        step.exp.cfg,
        step.exp.run_dir(data_version),
        fresh=step.config.fresh,
        job_dir=slurm_job_dir(step),
        say=step.log.info,
    )
    state, last = result.state, result.state.last_checkpoint
    if state.status == "complete" and state.data_version != data_version:
        step.log.warning(
            f"training read data version {state.data_version}, dataset_splits recorded {data_version}: "
            "the corpus changed while the run went on"
        )
    return Produced(
        record=_run_record(state, result.from_step),
        version_parts=[state_sha256(last) if last else None],
        metadata={
            **_loss_curve(state, step.exp.name),
            "run_dir": MetadataValue.path(str(state.run_dir)),
            "resumed_from_step": MetadataValue.int(result.from_step),
            "epoch": MetadataValue.int(state.epoch),
            "samples_seen": MetadataValue.int(state.samples_seen),
            **({"message": state.message} if state.message else {}),
            "data_version_matches_splits": state.data_version == data_version,
            **job_metadata,
        },
        state=state,
        checkpoint=last,
        failure=_not_complete(state),
        reused=(
            f"yes: the complete run in {state.run_dir} (step {state.global_step}) was reported, not "
            "retrained (launch config `fresh: true` trains anew)"
            if result.action == "complete"
            else None
        ),
    )


@experiment_asset(
    code_version="1",
    reads=["training_run"],
    kinds={"pytorch"},
    description="The training run's best checkpoint by `checkpoint.metric`, verified (every file's checksum) "
    "and pinned by the sha256 of its train_state.json.",
)
def best_checkpoint(step: AssetStep) -> Produced:
    from a2b_pipeline.checkpoint.directory import CheckpointError
    from a2b_pipeline.state import TrainState

    run = step.upstream["training_run"]
    chosen = run.get("best_checkpoint") or run.get("last_checkpoint")
    if not chosen:
        raise Failure(f"training_run [{step.exp.name}] recorded no checkpoint")
    ckpt = Path(chosen)
    try:
        state = TrainState.from_checkpoint(ckpt)  # checks every file's digest
    except CheckpointError as e:
        raise Failure(f"best checkpoint of {step.exp.name} does not verify: {e}") from None
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
            "train_state": str(ckpt / STATE_FILE),
            "wandb_run_path": state.wandb_run_path,
            "training_run": run["train_state"],
        },
        version_parts=[ckpt_sha],
        metadata={
            "step": MetadataValue.int(state.global_step),
            "best_value": rounded(state.checkpoint_state.best_value),
            "is_last_checkpoint": str(ckpt) == str(run.get("last_checkpoint")),
        },
        state=state,
        checkpoint=ckpt,
    )
