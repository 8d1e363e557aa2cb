"""Dagster layer: assets, checks, jobs, schedule, sensors and resources over the core library.

`a2b_pipeline.defs:defs` is the code location's single `Definitions` object. Importing this package
does not import torch: asset bodies import the heavy modules when they run.
"""

from a2b_pipeline.defs.definitions import build_defs, defs

__all__ = ["build_defs", "defs"]
