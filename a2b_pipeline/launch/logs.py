"""The library's log lines in a Dagster run's log, wherever the work runs: in the run's own process (the
assets: `context.log`, defs/common.py) or in a Slurm job (a Pipes session's `log`, which writes the message
file the run reads: job.py)."""

from __future__ import annotations

import logging
from typing import Any


class ToDagsterLog(logging.Handler):
    """The library's log records -> a Dagster log (anything with `info`, `warning` and `error`)."""

    def __init__(self, log: Any):
        super().__init__(logging.INFO)
        self.log = log

    def emit(self, record: logging.LogRecord) -> None:
        level = "warning" if record.levelno == logging.WARNING else "info"
        if record.levelno >= logging.ERROR:
            level = "error"
        try:
            getattr(self.log, level)(f"{record.name}: {record.getMessage()}")
        except Exception:  # noqa: BLE001  (a full disk must not stop training)
            self.handleError(record)
