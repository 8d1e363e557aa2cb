"""The experiment partitions: one per run config (the sensor registers each `configs/<name>.yaml`)."""

from dagster import DynamicPartitionsDefinition

experiments = DynamicPartitionsDefinition(name="experiments")

GROUP = "a2b"
