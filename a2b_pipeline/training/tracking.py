"""wandb tracking: offline by default, disabled in tests, one run id for the life of a TrainState."""

from __future__ import annotations

import os
import uuid
from typing import Any

from a2b_pipeline.configs import RunConfig

STEP_KEY = "trainer/global_step"


MODES = ("online", "offline", "disabled")


def wandb_mode(cfg: RunConfig) -> str:
    """The mode a run is tracked in: the environment's WANDB_MODE (or WANDB_DISABLED) wins over the config's
    `tracking.wandb_mode`, as wandb users expect: `WANDB_MODE=disabled` or `offline` keeps the API key and
    the run's data on this machine whatever a config says. An unknown value is an error, not a fallback."""
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    if os.environ.get("WANDB_DISABLED", "").strip().lower() in ("1", "true", "yes"):
        env = "disabled"
    if not env:
        return cfg.tracking.wandb_mode
    env = {"dryrun": "offline", "run": "online"}.get(env, env)  # wandb's legacy spellings
    if env not in MODES:
        raise ValueError(f"environment WANDB_MODE={env!r}: expected one of {MODES}")
    return env


class Tracker:
    """A thin wandb wrapper. Only rank 0 tracks; `disabled` never imports wandb."""

    def __init__(self, cfg: RunConfig, run_dir: str, run_id: str | None, rank: int = 0):
        self.run: Any = None
        self.run_id = run_id
        self.run_path: str | None = None
        self.mode = wandb_mode(cfg)
        if rank != 0 or self.mode == "disabled":
            return
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        self.run_id = run_id or uuid.uuid4().hex[:12]  # stored in TrainState, reused on resume
        t = cfg.tracking
        self.run = wandb.init(
            project=t.project,
            entity=t.entity,
            name=t.run_name or f"{cfg.name}-{cfg.config_hash()}",
            id=self.run_id,
            resume="allow",  # a resumed TrainState continues the same wandb run
            mode=self.mode,
            dir=run_dir,
            config=cfg.model_dump(mode="json"),
            tags=t.tags,
        )
        # Log against our own step axis: wandb drops rows whose internal step goes backwards,
        # which would lose the steps replayed after a crash between checkpoints.
        self.run.define_metric(STEP_KEY)
        self.run.define_metric("*", step_metric=STEP_KEY)
        entity = self.run.entity or t.entity or "offline"
        self.run_path = f"{entity}/{t.project}/{self.run_id}"

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self.run is not None:
            self.run.log({**metrics, STEP_KEY: step})

    def finish(self, exit_code: int = 0) -> None:
        if self.run is not None:
            self.run.finish(exit_code=exit_code)
            self.run = None
