"""Jobs over the experiment partitions: the whole graph (GPU-tagged), and the cheap data refresh."""

from __future__ import annotations

import json

from dagster import AssetSelection, define_asset_job

from a2b_pipeline.defs.assets.training import GPU_TAGS
from a2b_pipeline.defs.partitions import GROUP

DATA_ASSETS = ["corpus_manifest", "dataset_splits", "meta_loader_spec"]

# Run-level tags: what a run coordinator (tag concurrency limit on `gpu`) and the k8s run launcher
# (`dagster-k8s/config` on the run pod) read. Tag values are strings, so the k8s config is JSON.
RUN_GPU_TAGS = {k: v if isinstance(v, str) else json.dumps(v) for k, v in GPU_TAGS.items()}

experiment_job = define_asset_job(
    "experiment_job",
    selection=AssetSelection.groups(GROUP),
    tags=RUN_GPU_TAGS,
    # shown (and editable) in the launchpad: set fresh to true to train anew instead of reusing a complete run
    config={"ops": {"training_run": {"config": {"fresh": False}}}},
    description="Materialize an experiment end to end: corpus, splits, loader spec, training, best "
    "checkpoint, evaluation (and their checks). Tagged for a GPU. Launch config `fresh: true` trains anew "
    "instead of reusing a complete run of the same config and data.",
)

data_refresh_job = define_asset_job(
    "data_refresh_job",
    selection=AssetSelection.assets(*DATA_ASSETS),
    description="Re-list, re-split and re-plan the data of an experiment (no training): downstream assets "
    "show as stale when the corpus or config changed.",
)

cv_job = define_asset_job(
    "cv_job",
    selection=AssetSelection.assets("fold_training_run", "fold_evaluation"),
    tags=RUN_GPU_TAGS,
    description="Train and evaluate folds of cross-validated experiments (experiment x fold partitions). "
    "cv_summary and the leaderboard follow by declarative automation.",
)

leaderboard_job = define_asset_job(
    "leaderboard_job",
    selection=AssetSelection.assets("leaderboard"),
    description="Rebuild the leaderboard (run by leaderboard_after_failure when an experiment's run fails; "
    "evaluations rebuild it by declarative automation).",
)
