"""The Dagster GraphQL calls docker/smoke-test.sh makes, as the UI makes them (Python stdlib only, so the
smoke test needs nothing installed on the host but an engine and python3).

    python3 docker/smoke_client.py URL wait-web TIMEOUT
    python3 docker/smoke_client.py URL add-partition PARTITION
    python3 docker/smoke_client.py URL sensor-status SENSOR            -> its status (RUNNING/STOPPED)
    python3 docker/smoke_client.py URL launch JOB PARTITION [--fresh]  -> run id (--fresh: training_run fresh)
    python3 docker/smoke_client.py URL launch-assets PARTITION ASSET... -> run id ("Materialize selected")
    python3 docker/smoke_client.py URL sensor-ticked SENSOR SINCE AFTER TIMEOUT
        -> its ticks since SINCE (unix time): none failed, and one evaluated after AFTER (waits up to TIMEOUT)
    python3 docker/smoke_client.py URL job-runs JOB                    -> the ids of every run of the job
    python3 docker/smoke_client.py URL wait-run RUN_ID TIMEOUT         -> the run id that finished it
    python3 docker/smoke_client.py URL status RUN_ID                   -> status
    python3 docker/smoke_client.py URL tag RUN_ID KEY                  -> tag value
    python3 docker/smoke_client.py URL runs RUN_ID                     -> the run and its retries
    python3 docker/smoke_client.py URL metadata ASSET LABEL RUN_ID...  -> the value, from the newest run
    python3 docker/smoke_client.py URL metrics RUN_ID                  -> JSON of the finite test metrics
"""

from __future__ import annotations

import json
import math
import sys
import time
import urllib.error
import urllib.request

LOCATION = "a2b_pipeline"
REPOSITORY = "__repository__"  # what Dagster names the repository of a Definitions object
DONE = {"SUCCESS", "FAILURE", "CANCELED"}


class SmokeError(Exception):
    pass


def gql(url: str, query: str, **variables) -> dict:
    body = json.dumps({"query": query, "variables": variables}).encode()
    req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        reply = json.load(resp)
    if reply.get("errors"):
        raise SmokeError(f"GraphQL errors: {reply['errors']}")
    return reply["data"]


def _expect(result: dict, typename: str) -> dict:
    if result["__typename"] != typename:
        raise SmokeError(f"expected {typename}, got {json.dumps(result)[:2000]}")
    return result


def wait_web(url: str, timeout: float) -> str:
    """Until the webserver answers and has loaded the code location."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            data = gql(
                url,
                """{ version workspaceOrError { __typename ... on Workspace { locationEntries {
                     name locationOrLoadError { __typename ... on PythonError { message } } } } } }""",
            )
            entries = data["workspaceOrError"].get("locationEntries", [])
            states = {e["name"]: e["locationOrLoadError"] for e in entries}
            loc = states.get(LOCATION)
            if loc and loc["__typename"] == "RepositoryLocation":
                return f"dagster {data['version']}, code location {LOCATION} loaded"
            last = f"code location: {loc}"
        except (urllib.error.URLError, ConnectionError, OSError, SmokeError) as e:
            last = str(e)
        time.sleep(2)
    raise SmokeError(f"webserver not ready after {timeout:.0f}s: {last}")


def add_partition(url: str, partition: str) -> str:
    data = gql(
        url,
        """mutation($sel: RepositorySelector!, $name: String!, $key: String!) {
             addDynamicPartition(repositorySelector: $sel, partitionsDefName: $name, partitionKey: $key) {
               __typename ... on AddDynamicPartitionSuccess { partitionKey }
               ... on DuplicateDynamicPartitionError { partitionName }
               ... on PythonError { message } ... on UnauthorizedError { message } } }""",
        sel={"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY},
        name="experiments",
        key=partition,
    )["addDynamicPartition"]
    if data["__typename"] not in ("AddDynamicPartitionSuccess", "DuplicateDynamicPartitionError"):
        raise SmokeError(f"addDynamicPartition: {data}")
    return partition


def sensor_status(url: str, name: str) -> str:
    """The sensor's state, as the UI's sensor page shows it (the smoke test runs with them as shipped)."""
    sensor = gql(
        url,
        """query($sel: SensorSelector!) { sensorOrError(sensorSelector: $sel) {
             __typename ... on Sensor { sensorState { status } } ... on PythonError { message } } }""",
        sel={"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY, "sensorName": name},
    )["sensorOrError"]
    return _expect(sensor, "Sensor")["sensorState"]["status"]


# One experiment's asset chain, upstream first (a2b_pipeline/defs): what "Materialize all" selects.
EXPERIMENT_ASSETS = [
    "corpus_manifest",
    "dataset_splits",
    "meta_loader_spec",
    "training_run",
    "best_checkpoint",
    "evaluation",
]


def _launch_run(url: str, selector: dict, partition: str, run_config: dict | None) -> str:
    """One launchRun, as the UI sends it for a partition; the new run's id."""
    data = gql(
        url,
        """mutation($params: ExecutionParams!) { launchRun(executionParams: $params) {
             __typename ... on LaunchRunSuccess { run { runId } }
             ... on PythonError { message } ... on RunConfigValidationInvalid { errors { message } }
             ... on InvalidSubsetError { message } ... on UnauthorizedError { message } } }""",
        params={
            "selector": {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY, **selector},
            "runConfigData": run_config or {},
            "mode": "default",
            "executionMetadata": {"tags": [{"key": "dagster/partition", "value": partition}]},
        },
    )["launchRun"]
    return _expect(data, "LaunchRunSuccess")["run"]["runId"]


def launch(url: str, job: str, partition: str, fresh: bool = False) -> str:
    """What the UI's launchpad sends for a partitioned job: the job, its partition tag, and an empty config
    (or training_run's `fresh: true`, as typed into the launchpad)."""
    fresh_config = {"ops": {"training_run": {"config": {"fresh": True}}}}
    return _launch_run(url, {"jobName": job}, partition, fresh_config if fresh else None)


def asset_checks(url: str, assets: list[str]) -> list[dict]:
    """The checks of the assets, as handles: "Materialize selected" runs them with their assets (an asset
    that produces its checks' results can't be materialized without them)."""
    nodes = gql(
        url,
        """query($keys: [AssetKeyInput!]) { assetNodes(assetKeys: $keys) { assetKey { path }
             assetChecksOrError { __typename ... on AssetChecks { checks { name } } } } }""",
        keys=[{"path": [a]} for a in assets],
    )["assetNodes"]
    return [
        {"assetKey": {"path": n["assetKey"]["path"]}, "name": c["name"]}
        for n in nodes
        for c in n["assetChecksOrError"].get("checks", [])
    ]


def launch_assets(url: str, partition: str, assets: list[str], run_config: dict | None = None) -> str:
    """What the UI sends for "Materialize selected" on a partition: the implicit asset job, the assets and
    their checks (with the launchpad's run config, resources' settings too, when given)."""
    selector = {
        "jobName": "__ASSET_JOB",
        "assetSelection": [{"path": [a]} for a in assets],
        "assetCheckSelection": asset_checks(url, assets),
    }
    return _launch_run(url, selector, partition, run_config)


def sensor_ticks(url: str, name: str, since: float) -> list[dict]:
    sensor = gql(
        url,
        """query($sel: SensorSelector!, $since: Float) { sensorOrError(sensorSelector: $sel) {
             __typename ... on Sensor { sensorState { ticks(afterTimestamp: $since, limit: 500) {
               status timestamp skipReason runIds error { message } } } }
             ... on PythonError { message } } }""",
        sel={"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY, "sensorName": name},
        since=since,
    )["sensorOrError"]
    return _expect(sensor, "Sensor")["sensorState"]["ticks"]


def sensor_ticked(url: str, name: str, since: float, after: float, timeout: float) -> str:
    """The sensor evaluated (a tick that succeeded or skipped) after `after`, and none of its ticks since
    `since` failed: so a check that it requested nothing is not vacuous (a sensor that raises, or never
    ran, requests nothing either)."""
    deadline = time.monotonic() + timeout
    while True:
        ticks = sensor_ticks(url, name, since)
        failed = [t for t in ticks if t["status"] == "FAILURE"]
        if failed:
            raise SmokeError(
                f"{len(failed)} failed ticks, the last: {(failed[0]['error'] or {}).get('message')}"
            )
        done = [t for t in ticks if t["status"] in ("SUCCESS", "SKIPPED")]
        if any(t["timestamp"] > after for t in done):
            counts = {s: sum(t["status"] == s for t in ticks) for s in sorted({t["status"] for t in ticks})}
            newest = max(done, key=lambda t: t["timestamp"])
            at = time.strftime("%H:%M:%S", time.gmtime(newest["timestamp"]))
            what = newest["skipReason"] or "runs " + " ".join(newest["runIds"])
            return f"{len(ticks)} ticks {counts}, the newest at {at} UTC: {what}"
        if time.monotonic() > deadline:
            raise SmokeError(
                f"no completed tick after {after:.0f} within {timeout:.0f}s ({len(ticks)} ticks)"
            )
        time.sleep(5)


RUN_FIELDS = "runId status tags { key value }"


def run(url: str, run_id: str) -> dict:
    data = gql(
        url,
        f"query($id: ID!) {{ runOrError(runId: $id) {{ __typename ... on Run {{ {RUN_FIELDS} }} }} }}",
        id=run_id,
    )
    found = _expect(data["runOrError"], "Run")
    found["tags"] = {t["key"]: t["value"] for t in found["tags"]}
    return found


def runs(url: str, root_id: str) -> list[dict]:
    """The run and its automatic retries (tag dagster/root_run_id), oldest first."""
    data = gql(
        url,
        f"""query($tags: [ExecutionTag!]) {{ runsOrError(filter: {{tags: $tags}}) {{
              __typename ... on Runs {{ results {{ {RUN_FIELDS} }} }} }} }}""",
        tags=[{"key": "dagster/root_run_id", "value": root_id}],
    )
    retries = _expect(data["runsOrError"], "Runs")["results"]
    return [run(url, root_id), *[run(url, r["runId"]) for r in reversed(retries)]]


def job_runs(url: str, job: str) -> list[str]:
    """Every run of a job (as the Runs page filtered by job shows them)."""
    data = gql(
        url,
        """query($f: RunsFilter) { runsOrError(filter: $f) { __typename
             ... on Runs { results { runId } } ... on PythonError { message } } }""",
        f={"pipelineName": job},
    )["runsOrError"]
    return [r["runId"] for r in _expect(data, "Runs")["results"]]


def wait_run(url: str, run_id: str, timeout: float) -> str:
    """Until the run, or the last of its retries, finished; prints each status change to stderr."""
    deadline = time.monotonic() + timeout
    seen: dict[str, str] = {}
    while time.monotonic() < deadline:
        chain = runs(url, run_id)
        for r in chain:
            if seen.get(r["runId"]) != r["status"]:
                seen[r["runId"]] = r["status"]
                print(f"    run {r['runId'][:8]}: {r['status']}", file=sys.stderr, flush=True)
        last = chain[-1]
        if last["status"] == "SUCCESS":
            return last["runId"]
        # a failed run may still be retried by the daemon (run_retries): give it a little time
        if last["status"] in DONE and not _retry_pending(last):
            raise SmokeError(f"run {last['runId']} ended {last['status']}")
        time.sleep(3)
    raise SmokeError(f"run {run_id} not finished after {timeout:.0f}s (statuses: {seen})")


_failed_at: dict[str, float] = {}


def _retry_pending(r: dict) -> bool:
    if r["status"] != "FAILURE":
        return False
    first = _failed_at.setdefault(r["runId"], time.monotonic())
    return time.monotonic() - first < 90  # the daemon's retry loop runs every few seconds


def materializations(url: str, run_id: str) -> dict[str, dict]:
    """asset -> {label: value} of what the run materialized."""
    data = gql(
        url,
        """query($id: ID!) { runOrError(runId: $id) { __typename ... on Run { assetMaterializations {
             assetKey { path } partition metadataEntries { __typename label
               ... on FloatMetadataEntry { floatValue } ... on IntMetadataEntry { intValue }
               ... on PathMetadataEntry { path } ... on TextMetadataEntry { text }
               ... on BoolMetadataEntry { boolValue } } } } } }""",
        id=run_id,
    )
    out: dict[str, dict] = {}
    for m in _expect(data["runOrError"], "Run")["assetMaterializations"]:
        values = {}
        for e in m["metadataEntries"]:
            for key in ("floatValue", "intValue", "path", "text", "boolValue"):
                if key in e:
                    values[e["label"]] = e[key]
        out["/".join(m["assetKey"]["path"])] = values
    return out


def metadata(url: str, asset: str, label: str, run_ids: list[str]) -> str:
    for run_id in reversed(run_ids):
        values = materializations(url, run_id).get(asset)
        if values is not None and label in values:
            return str(values[label])
    raise SmokeError(f"no {asset} materialization with {label!r} in runs {run_ids}")


def metrics(url: str, run_id: str) -> dict[str, float]:
    """The evaluation's test metrics (float entries labelled test/...): at least one, all finite."""
    evaluation = materializations(url, run_id).get("evaluation")
    if evaluation is None:
        raise SmokeError(f"run {run_id} materialized no evaluation")
    found = {k: v for k, v in evaluation.items() if k.startswith("test/") and isinstance(v, (int, float))}
    nonfinite = {k: v for k, v in evaluation.items() if k.startswith("test/") and v is None}
    nonfinite.update({k: v for k, v in found.items() if not math.isfinite(v)})
    if not found or nonfinite:
        raise SmokeError(f"evaluation metrics: found {found}, not finite {nonfinite}")
    return found


def main(argv: list[str]) -> int:
    url, cmd, *args = argv
    try:
        if cmd == "wait-web":
            print(wait_web(url, float(args[0])))
        elif cmd == "add-partition":
            print(add_partition(url, args[0]))
        elif cmd == "sensor-status":
            print(sensor_status(url, args[0]))
        elif cmd == "launch":
            print(launch(url, args[0], args[1], fresh="--fresh" in args[2:]))
        elif cmd == "launch-assets":
            print(launch_assets(url, args[0], args[1:]))
        elif cmd == "sensor-ticked":
            print(sensor_ticked(url, args[0], float(args[1]), float(args[2]), float(args[3])))
        elif cmd == "job-runs":
            print(" ".join(job_runs(url, args[0])))
        elif cmd == "wait-run":
            print(wait_run(url, args[0], float(args[1])))
        elif cmd == "status":
            print(run(url, args[0])["status"])
        elif cmd == "tag":
            print(run(url, args[0])["tags"].get(args[1], ""))
        elif cmd == "runs":
            print(" ".join(r["runId"] for r in runs(url, args[0])))
        elif cmd == "metadata":
            print(metadata(url, args[0], args[1], args[2:]))
        elif cmd == "metrics":
            print(json.dumps(metrics(url, args[0]), sort_keys=True))
        else:
            raise SmokeError(f"unknown command {cmd}")
    except SmokeError as e:
        print(f"smoke_client {cmd}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
