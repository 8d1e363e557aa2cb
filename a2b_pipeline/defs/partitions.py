"""The experiment partitions: one per run config (the sensor registers each `configs/<name>.yaml` and
each experiment of a sweep under `configs/sweeps/`); for cross-validated configs (`data.split.folds`)
also experiment x fold, so one fold can be (re)run alone."""

import warnings

from dagster import DynamicPartitionsDefinition, MultiPartitionsDefinition, PreviewWarning

experiments = DynamicPartitionsDefinition(name="experiments")
cv_experiments = DynamicPartitionsDefinition(name="cv_experiments")  # configs with data.split.folds
folds = DynamicPartitionsDefinition(name="folds")  # "0" .. the largest folds - 1 among them
experiment_folds = MultiPartitionsDefinition({"experiment": cv_experiments, "fold": folds})

GROUP = "a2b"

# Checks are partitioned like their assets (each experiment's checks are its own); Dagster 1.13 calls that
# "preview" and says so on every import. Said once here, in the code that depends on it.
warnings.filterwarnings(
    "ignore", message="Specifying a partitions_def on an AssetCheckSpec", category=PreviewWarning
)
