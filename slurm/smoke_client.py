"""The Dagster GraphQL calls slurm/smoke-test.sh makes, as the UI makes them; the shared ones (waiting for the
webserver, a partition, a run's status and metadata) are docker/smoke_client.py's. Python stdlib only.

    python3 slurm/smoke_client.py URL backfill CONFIG_JSON PARTITION...  -> backfill id (experiment assets)
    python3 slurm/smoke_client.py URL wait-backfill ID TIMEOUT         -> its run ids, once all succeeded
    python3 slurm/smoke_client.py URL launch-assets CONFIG_JSON PARTITION ASSET...  -> run id
    python3 slurm/smoke_client.py URL terminate RUN_ID                 -> the run's status after it
    (and every command of docker/smoke_client.py)
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "docker"))
import smoke_client as shared  # noqa: E402  (docker/smoke_client.py)
from smoke_client import EXPERIMENT_ASSETS, SmokeError, _expect, gql  # noqa: E402


def backfill(url: str, run_config: str, partitions: list[str]) -> str:
    """What "Materialize all" over selected partitions sends: an asset backfill of the experiment assets."""
    data = gql(
        url,
        """mutation($params: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $params) {
             __typename ... on LaunchBackfillSuccess { backfillId }
             ... on PythonError { message } ... on UnauthorizedError { message }
             ... on PartitionSetNotFoundError { message } ... on InvalidStepError { invalidStepKey }
             ... on InvalidOutputError { stepKey } } }""",
        params={
            "partitionNames": partitions,
            "assetSelection": [{"path": [a]} for a in EXPERIMENT_ASSETS],
            "fromFailure": False,
            "runConfigData": json.loads(run_config),
        },
    )["launchPartitionBackfill"]
    return _expect(data, "LaunchBackfillSuccess")["backfillId"]


def wait_backfill(url: str, backfill_id: str, timeout: float) -> list[str]:
    """Until the backfill is done; its runs must all have succeeded."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        data = gql(
            url,
            """query($id: String!) { partitionBackfillOrError(backfillId: $id) { __typename
                 ... on PartitionBackfill { status runs(limit: 100) { runId status } }
                 ... on PythonError { message } } }""",
            id=backfill_id,
        )
        b = _expect(data["partitionBackfillOrError"], "PartitionBackfill")
        runs = b["runs"]
        now = f"{b['status']}: " + ", ".join(f"{r['runId'][:8]} {r['status']}" for r in runs)
        if now != last:
            print(f"    backfill {now}", file=sys.stderr, flush=True)
            last = now
        if b["status"] in ("COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"):
            bad = [r for r in runs if r["status"] != "SUCCESS"]
            if b["status"] not in ("COMPLETED", "COMPLETED_SUCCESS") or bad:
                raise SmokeError(f"backfill {backfill_id} ended {b['status']}; runs not successful: {bad}")
            return [r["runId"] for r in runs]
        time.sleep(3)
    raise SmokeError(f"backfill {backfill_id} not done after {timeout:.0f}s ({last})")


def launch_assets(url: str, run_config: str, partition: str, assets: list[str]) -> str:
    """The launchpad: materialize assets of one partition (and their checks) with a run config."""
    return shared.launch_assets(url, partition, assets, json.loads(run_config))


def terminate(url: str, run_id: str) -> str:
    """The UI's Terminate button."""
    data = gql(
        url,
        """mutation($id: String!) { terminateRun(runId: $id) { __typename
             ... on TerminateRunSuccess { run { status } } ... on TerminateRunFailure { message }
             ... on RunNotFoundError { message } ... on PythonError { message }
             ... on UnauthorizedError { message } } }""",
        id=run_id,
    )["terminateRun"]
    return _expect(data, "TerminateRunSuccess")["run"]["status"]


def main(argv: list[str]) -> int:
    url, cmd, *args = argv
    try:
        if cmd == "backfill":
            print(backfill(url, args[0], args[1:]))
        elif cmd == "wait-backfill":
            print(" ".join(wait_backfill(url, args[0], float(args[1]))))
        elif cmd == "launch-assets":
            print(launch_assets(url, args[0], args[1], args[2:]))
        elif cmd == "terminate":
            print(terminate(url, args[0]))
        else:
            return shared.main(argv)
    except SmokeError as e:
        print(f"smoke_client {cmd}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
