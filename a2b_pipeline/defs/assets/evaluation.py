"""The evaluation asset: test metrics of the recorded best checkpoint and a plot of what it predicts.

best_checkpoint -> evaluation
"""

from pathlib import Path
from typing import Any

from dagster import Failure, MetadataValue, TableColumn, TableRecord, TableSchema

from a2b_pipeline.defs.common import (
    atomic_write,
    materialization_file,
    png_markdown,
    rounded,
    sha256_bytes,
    state_sha256,
)
from a2b_pipeline.defs.template import AssetStep, Produced, experiment_asset
from a2b_pipeline.files import MAX_RECORD_BYTES, read_bounded


def _verified_checkpoint(best: dict) -> tuple[Path, str]:
    """The checkpoint best_checkpoint recorded, with the sha256 of its train_state.json unchanged."""
    ckpt = Path(best["checkpoint"])
    try:
        ckpt_sha = state_sha256(ckpt)
    except OSError as e:
        raise Failure(
            f"{ckpt}: the recorded best checkpoint is gone ({e}); materialize training_run+"
        ) from None
    if ckpt_sha != best["checkpoint_sha256"]:
        raise Failure(f"{ckpt} changed since best_checkpoint recorded it (sha256 differs)")
    return ckpt, ckpt_sha


def _headline(report: dict) -> dict[str, MetadataValue]:
    """Whole-recording median Pearson r (mean over channels) of the model and each baseline
    (`recording_r/<predictor>`), and the model's margin over each baseline (`margin_r/<baseline>`), as
    numbers the UI can chart, under names short enough for its key column; undefined ones are left out
    (the summary says why)."""
    summary = report["summary"]
    out = {}
    for name, p in summary["predictors"].items():
        value = p["recording"]["pearson"]["mean"]["value"]
        if value is not None:
            out[f"recording_r/{name}"] = rounded(value)
    for name, levels in summary["margins"].items():
        value = levels["recording"]["pearson"]["mean"]["value"]
        if value is not None:
            out[f"margin_r/{name}"] = rounded(value)
    return out


def _summary_table(report: dict) -> MetadataValue:
    from a2b_pipeline.evaluation.evaluate import summary_rows

    columns, rows = summary_rows(report)
    return MetadataValue.table(
        [TableRecord(r) for r in rows], schema=TableSchema([TableColumn(c, "string") for c in columns])
    )


@experiment_asset(
    code_version="4",
    reads=["best_checkpoint"],
    kinds={"pytorch"},
    description="The best checkpoint (the one best_checkpoint recorded, verified by sha256) and its "
    "baselines (constant, other_listeners, audio_linear) on the test split: per channel, window and whole "
    "recording, with bootstrap intervals and the model's margins (the full report is in the record and in "
    "<run_dir>/evaluation-test.json); a plot of the model and the baselines on the same test recordings.",
)
def evaluation(step: AssetStep) -> Produced:
    from a2b_pipeline.evaluation.evaluate import summary_caption
    from a2b_pipeline.security import check_grant
    from a2b_pipeline.state import TrainState

    exp = step.exp
    ckpt, ckpt_sha = _verified_checkpoint(step.upstream["best_checkpoint"])
    state = TrainState.from_checkpoint(ckpt)
    check_grant(state.config, _grant(exp), str(ckpt))  # a checkpoint's config is data, not authority
    previous, reused = step.previous_record(), None
    if _same_inputs(previous, step, ckpt_sha):
        record = {k: v for k, v in previous.items() if k not in ("experiment", "code_version", "reused")}
        png = read_bounded(previous["plot"], MAX_RECORD_BYTES, "more than a plot takes")
        reused = (
            f"yes: checkpoint {ckpt.name} (sha256 {ckpt_sha[:12]}) was evaluated before with this code; "
            "its metrics and plot are reported again"
        )
    else:
        record, png = _evaluate(step, ckpt, ckpt_sha, state)
    metrics = record["metrics"]
    return Produced(
        record=record,
        version_parts=[ckpt_sha, metrics],
        metadata={
            "plot": png_markdown(png, f"{exp.name}: model and baselines vs true"),
            **{k: rounded(v) for k, v in sorted(metrics.items())},
            **_headline(record["report"]),
            # a table the UI renders inline (Markdown would hide behind "[Show Markdown]")
            "summary": _summary_table(record["report"]),
            "summary_about": summary_caption(record["report"]),
            "report_path": MetadataValue.path(record["report_path"]),
            "plot_path": MetadataValue.path(record["plot"]),
            "evaluated_data_version": record["evaluated_data_version"],
            "data_version_matches_training": record["evaluated_data_version"] == state.data_version,
        },
        state=state,
        checkpoint=ckpt,
        reused=reused,
    )


def _grant(exp: Any) -> Any:
    from a2b_pipeline.security import Grant

    return Grant.from_config(exp.cfg, str(exp.config_file))


def _same_inputs(previous: dict[str, Any] | None, step: AssetStep, ckpt_sha: str) -> bool:
    """The last evaluation of this partition read the same checkpoint with the same config and code."""
    return bool(
        previous
        and previous.get("checkpoint_sha256") == ckpt_sha
        and previous.get("config_hash") == step.exp.config_hash
        and previous.get("code_version") == step.code_version
        and Path(previous.get("plot", "")).is_file()
        and "report" in previous
    )


def _evaluate(step: AssetStep, ckpt: Path, ckpt_sha: str, state: Any) -> tuple[dict[str, Any], bytes]:
    """The core's evaluation of the checkpoint on the test split: (record, plot PNG)."""
    from a2b_pipeline.data.pipeline import prepare_data
    from a2b_pipeline.evaluation.evaluate import run_evaluation, write_report
    from a2b_pipeline.training.engine import pick_device

    exp = step.exp
    device = pick_device(exp.cfg, local_rank=0)  # the trainer's choice for this run's train.device
    data = prepare_data(state.config)
    result = run_evaluation(ckpt, "test", data=data, device=str(device), grant=_grant(exp))
    report_path = write_report(result.report)
    metrics = {k: float(v) for k, v in result.report["metrics"].items()}
    title = f"{exp.name}: step {state.global_step}, test " + ", ".join(
        f"{k.removeprefix('test/')}={v:.3f}" for k, v in metrics.items() if k.endswith("pearson")
    )
    png = result.plot(3, title)
    plot_path = materialization_file(exp, "evaluation", step.run_id, ".png")
    plot_sha = atomic_write(plot_path, png)
    record = {
        "config_hash": state.config_hash,
        "data_version": state.data_version,
        "evaluated_data_version": data.data_version,
        "checkpoint": str(ckpt),
        "checkpoint_sha256": ckpt_sha,
        "split": "test",
        "metrics": metrics,
        "plot": str(plot_path),
        "plot_sha256": plot_sha,
        "recordings_plotted": min(3, len(result.recordings)),
        "device": str(device),
        "report": result.report,
        "report_path": str(report_path),
        "report_sha256": sha256_bytes(read_bounded(report_path, MAX_RECORD_BYTES)),
    }
    return record, png
