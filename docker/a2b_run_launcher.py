"""The docker deployment's run launcher and instance class (docker/dagster.yaml names both).

- `GpuTaggedDockerRunLauncher`: dagster_docker's DockerRunLauncher, except that the GPU device request
  goes only to runs tagged for a GPU (`gpu` run tag: experiment_job, the retrain schedule) and to runs
  whose asset selection includes a GPU asset (a UI "Materialize" of training_run carries no job tags).
  Data-only runs (data_refresh_job, the sensors' runs) get no GPU. `gpus` says which GPUs: `all`, a
  count, device ids (`0,1`) or `none` (hosts without the NVIDIA Container Toolkit).
- `CancellableRunsInstance`: run workers watch their own run's status and stop when it turns CANCELING,
  so the UI can terminate a run although the webserver has no Docker socket (docker-compose.yaml): the
  launcher there only marks the run CANCELING, and the run stops itself (training saves a checkpoint).

Copied into the image at /opt/dagster/lib (on PYTHONPATH); it is deployment glue, not part of the package.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import docker.errors
from dagster import Array, Field, StringSource
from dagster._core.instance import DagsterInstance, InstanceRef
from dagster._core.storage.dagster_run import DagsterRun
from dagster_docker import DockerRunLauncher
from dagster_docker.container_context import DockerContainerContext


def gpu_device_requests(gpus: str) -> list[dict[str, Any]]:
    """docker-py `device_requests` for `gpus`: "all", "none", a count ("2") or device ids ("0,1")."""
    value = gpus.strip().lower()
    if value in ("", "none", "0"):
        return []
    request: dict[str, Any] = {"driver": "nvidia", "capabilities": [["gpu"]]}
    if value == "all":
        request["count"] = -1
    elif value.isdigit():
        request["count"] = int(value)
    else:
        ids = [d.strip() for d in value.split(",")]
        if not all(d.isdigit() for d in ids):
            raise ValueError(f"gpus must be all, none, a count or device ids like 0,1; got {gpus!r}")
        request["device_ids"] = ids
    return [request]


def wants_gpu(run: DagsterRun, gpu_tag: str, gpu_assets: list[str]) -> bool:
    """A run gets the GPU when it carries the GPU tag or materializes one of the GPU assets."""
    if run.tags.get(gpu_tag) not in (None, "", "0", "false"):
        return True
    selected = {key.to_user_string() for key in run.asset_selection or ()}
    return bool(selected & set(gpu_assets))


class GpuTaggedDockerRunLauncher(DockerRunLauncher):
    """DockerRunLauncher that requests GPUs for GPU-tagged runs only (see the module docstring)."""

    def __init__(
        self,
        inst_data=None,
        gpus: str = "all",
        gpu_tag: str = "gpu",
        gpu_assets: list[str] | None = None,
        **docker_config: Any,
    ):
        if "device_requests" in (docker_config.get("container_kwargs") or {}):
            raise ValueError(
                "set GPUs with `gpus`, not container_kwargs.device_requests (that gives every run all)"
            )
        super().__init__(inst_data=inst_data, **docker_config)
        self.gpu_tag = gpu_tag
        self.gpu_assets = list(gpu_assets or [])
        self.gpu_device_requests = gpu_device_requests(gpus)

    @classmethod
    def config_type(cls) -> dict[str, Field]:
        return {
            **DockerRunLauncher.config_type(),
            "gpus": Field(StringSource, is_required=False, default_value="all"),
            "gpu_tag": Field(str, is_required=False, default_value="gpu"),
            "gpu_assets": Field(Array(str), is_required=False, default_value=[]),
        }

    @classmethod
    def from_config_value(cls, inst_data, config_value: Mapping[str, Any]) -> GpuTaggedDockerRunLauncher:
        return cls(inst_data=inst_data, **config_value)

    def get_container_context(self, dagster_run: DagsterRun) -> DockerContainerContext:
        context = super().get_container_context(dagster_run)
        if self.gpu_device_requests and wants_gpu(dagster_run, self.gpu_tag, self.gpu_assets):
            gpu = DockerContainerContext(container_kwargs={"device_requests": self.gpu_device_requests})
            context = context.merge(gpu)
        return context

    def terminate(self, run_id: str) -> bool:
        try:
            return super().terminate(run_id)
        except docker.errors.DockerException:
            # No engine in this process (the webserver has no socket): super() has marked the run
            # CANCELING, which its run worker notices within cancellation_thread_poll_interval_seconds.
            run = self._instance.get_run_by_id(run_id)
            return run is not None and not run.is_finished


class CancellableRunsInstance(DagsterInstance):
    """A DagsterInstance whose run workers poll for CANCELING and interrupt themselves (see above)."""

    # Dagster asks a custom instance class for its own settings (none) and their defaults (the usual).
    @classmethod
    def config_schema(cls) -> dict:
        return {}

    @staticmethod
    def config_defaults(base_dir: str):
        return InstanceRef.config_defaults(base_dir)

    @property
    def should_start_background_run_thread(self) -> bool:
        return True
