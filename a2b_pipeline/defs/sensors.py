"""Sensors: one registers run configs as experiment partitions, one notices changed corpora.

Both keep a JSON cursor (experiment -> fingerprint) and never read file contents beyond the configs:
the corpus sensor compares size + mtime (local) or size + ETag (object stores) of each dataset's
manifest, or of every file under a corpus root.
"""

import hashlib
import json

from dagster import (
    DefaultSensorStatus,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from a2b_pipeline.defs.common import corpus_fingerprint, corpus_sources
from a2b_pipeline.defs.jobs import data_refresh_job
from a2b_pipeline.defs.partitions import experiments
from a2b_pipeline.defs.resources import ExperimentStore


def _cursor(context: SensorEvaluationContext) -> dict[str, str]:
    try:
        value = json.loads(context.cursor or "{}")
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


@sensor(
    job=data_refresh_job,
    minimum_interval_seconds=30,
    default_status=DefaultSensorStatus.RUNNING,
    description="Registers each YAML under the configs dir as an experiment partition; when a registered "
    "config's content changes, refreshes that experiment's data assets (training then shows as stale).",
)
def experiment_configs_sensor(context: SensorEvaluationContext, store: ExperimentStore):
    seen = _cursor(context)
    known = set(context.instance.get_dynamic_partitions(experiments.name))
    now: dict[str, str] = {}
    for name in store.experiments():
        now[name] = hashlib.sha256(store.config_path(name).read_bytes()).hexdigest()
    new = sorted(set(now) - known)
    changed = sorted(k for k in now if k in known and k in seen and seen[k] != now[k])
    requests = [RunRequest(run_key=f"config-{k}-{now[k][:12]}", partition_key=k) for k in changed]
    if new:
        context.log.info(f"registering experiments: {new}")
    return SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[experiments.build_add_request(new)] if new else [],
        cursor=json.dumps(now, sort_keys=True),
    )


@sensor(
    job=data_refresh_job,
    minimum_interval_seconds=60,
    default_status=DefaultSensorStatus.RUNNING,
    description="Watches every registered experiment's corpus (manifest files, or the files under a corpus "
    "root: size + mtime/ETag) and refreshes its data assets when it changes.",
)
def corpus_change_sensor(context: SensorEvaluationContext, store: ExperimentStore):
    from a2b_pipeline.configs import ConfigError, load_config

    seen = _cursor(context)
    now: dict[str, str] = {}
    requests = []
    for name in context.instance.get_dynamic_partitions(experiments.name):
        try:
            cfg = store.rebase(load_config(store.config_path(name)))
            now[name] = corpus_fingerprint(cfg)
        except (ConfigError, OSError) as e:  # a broken config or an unreachable store: report, go on
            context.log.warning(f"{name}: corpus not checked: {e}")
            if name in seen:
                now[name] = seen[name]
            continue
        if name in seen and seen[name] != now[name]:
            context.log.info(f"{name}: corpus changed ({', '.join(corpus_sources(cfg).values())})")
            requests.append(RunRequest(run_key=f"corpus-{name}-{now[name][:12]}", partition_key=name))
    cursor = json.dumps(now, sort_keys=True)
    if not requests:
        return SensorResult(skip_reason=SkipReason("no corpus changed"), cursor=cursor)
    return SensorResult(run_requests=requests, cursor=cursor)
