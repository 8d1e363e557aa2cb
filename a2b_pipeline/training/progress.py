"""Training progress as a person follows it: a tqdm bar on a terminal, log lines everywhere else.

Without a terminal (a Dagster run, a log file, CI) a line goes to the `a2b_pipeline.training.progress`
logger at most every `A2B_PROGRESS_SECONDS` (default 10 s): step, share done, last logged loss, rate and
ETA. Dagster forwards it to the run's log. On a terminal the bar shows the same and no lines are logged.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

log = logging.getLogger("a2b_pipeline.training.progress")

DEFAULT_EVERY_S = 10.0


def _every_s() -> float:
    try:
        return max(0.0, float(os.environ.get("A2B_PROGRESS_SECONDS", DEFAULT_EVERY_S)))
    except ValueError:
        return DEFAULT_EVERY_S


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _unsized_terminal() -> dict[str, int]:
    """tqdm's size for a terminal that reports 0 rows or columns (a pseudo-terminal nobody sized:
    `docker run -t`, `script`, some CI runners), where it drew nothing at all; {} (follow the terminal's
    own size) otherwise."""
    try:
        size = os.get_terminal_size(sys.stderr.fileno())
    except (OSError, ValueError):
        return {}
    return {**({} if size.columns else {"ncols": 80}), **({} if size.lines else {"nrows": 24})}


class Progress:
    """tqdm's `update` / `set_postfix` / `close`, for the training loop. `enabled`: this rank reports."""

    def __init__(self, name: str, total: int, initial: int, *, enabled: bool, bar: bool | None = None):
        from tqdm import tqdm

        self.name, self.total, self.step = name, total, initial
        self.enabled = enabled
        show_bar = enabled and (sys.stderr.isatty() if bar is None else bar)
        self.bar = tqdm(
            total=total, initial=initial, disable=not show_bar, desc=name, unit="step", **_unsized_terminal()
        )
        self.lines = enabled and not show_bar
        self.every_s = _every_s()
        self.loss: float | None = None
        self.start_step, self.start_t = initial, time.monotonic()
        self.last_t = self.start_t

    def update(self, n: int = 1) -> None:
        self.step += n
        self.bar.update(n)
        now = time.monotonic()
        if self.lines and (now - self.last_t >= self.every_s or self.step >= self.total):
            self.last_t = now
            log.info(self.line(now))

    def set_postfix(self, loss: str | float | None = None, **_: Any) -> None:
        if loss is not None:
            self.loss = float(loss)
            self.bar.set_postfix(loss=f"{self.loss:.4f}")

    def line(self, now: float) -> str:
        done, elapsed = self.step - self.start_step, now - self.start_t
        rate = done / elapsed if elapsed > 0 else 0.0
        parts = [f"step {self.step}/{self.total} ({100 * self.step / max(1, self.total):.0f}%)"]
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4f}")
        if rate > 0:
            parts.append(f"{rate:.2f} steps/s")
            parts.append(f"ETA {_clock((self.total - self.step) / rate)}")
        return f"{self.name}: " + " · ".join(parts)

    def close(self) -> None:
        self.bar.close()
