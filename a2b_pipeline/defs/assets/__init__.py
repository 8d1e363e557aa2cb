"""The six assets of an experiment, one partition per run config, split by concern:

    data.py        corpus_manifest -> dataset_splits -> meta_loader_spec
    training.py    -> training_run -> best_checkpoint
    evaluation.py  -> evaluation

and beside them cv.py (fold_training_run -> fold_evaluation -> cv_summary) and leaderboard.py. Each
experiment asset is an `@experiment_asset` (defs/template.py, whose docstring says how to add one): its
body calls the core and returns what it produced; the template loads the experiment, reads the upstream
records as the instance recorded them, and writes this materialization's record, TrainState and lineage
metadata. Files go under `<checkpoint.dir>/<experiment>/dagster/<asset>/`, never tensors through an IO
manager.
"""

from a2b_pipeline.defs.assets.data import corpus_manifest, dataset_splits, meta_loader_spec
from a2b_pipeline.defs.assets.evaluation import evaluation
from a2b_pipeline.defs.assets.training import best_checkpoint, training_run
from a2b_pipeline.defs.partitions import GROUP, experiments

ASSETS = [corpus_manifest, dataset_splits, meta_loader_spec, training_run, best_checkpoint, evaluation]

__all__ = [
    "ASSETS",
    "GROUP",
    "best_checkpoint",
    "corpus_manifest",
    "dataset_splits",
    "evaluation",
    "experiments",
    "meta_loader_spec",
    "training_run",
]
