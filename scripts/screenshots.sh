#!/usr/bin/env bash
# Screenshots of the Dagster UI after `a2b demo` plus one more experiment (the demo with a TCN trained for
# only 40 steps: not reliably better than its baselines, so its gate warns), taken with headless Chromium
# (Debian: `apt-get install chromium`):
#   asset_graph.png        the asset graph of the a2b group
#   evaluation_demo.png    the evaluation asset's page, partition demo (its plot is the first metadata row)
#   check_evaluation.png   the evaluation_metrics_ok check's page (one result per partition)
#   check_warning.png      the same check's result for demo_tcn: a warning, with the margins
#   training_run_demo.png  the training_run page, partition demo (loss curve first)
#   leaderboard.png        the leaderboard asset's page (table and plot)
#   runs.png               the runs list (a relaunch that reused a complete run carries a2b/reused_* tags)
# Usage, from the repository root:  [STEPS=N] bash scripts/screenshots.sh [OUT_DIR]   (default: screenshots/)
# Everything else (Dagster home, corpora, runs) goes to a temporary directory, removed at the end
# unless KEEP=1; run again with WORK=<that directory> and the demos reuse what is there (a relaunch:
# the pages then say "reused"). Binds 127.0.0.1 only.
set -euo pipefail

OUT=$(realpath -m "${1:-screenshots}")
REPO=$(cd "$(dirname "$0")/.." && pwd)
VENV_BIN=${VENV_BIN:-$REPO/.venv/bin}
CHROMIUM=${CHROMIUM:-$(command -v chromium || command -v chromium-browser || true)}
[ -n "$CHROMIUM" ] || { echo "no chromium: apt-get install chromium" >&2; exit 2; }
WORK=${WORK:-$(mktemp -d /tmp/a2b-screenshots.XXXXXX)}  # WORK=<dir of an earlier run> KEEP=1: run again there
PORT=${PORT:-$("$VENV_BIN/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}
mkdir -p "$OUT" "$WORK/configs"

cleanup() {
  [ -n "${SERVER:-}" ] && kill "$SERVER" 2>/dev/null && wait "$SERVER" 2>/dev/null
  [ "${KEEP:-0}" = 1 ] || rm -rf "$WORK"
}
trap cleanup EXIT

# two experiments: the demo (STEPS=N: only N training steps, for a quicker look), and the demo with a TCN
"$VENV_BIN/python" - "$REPO/configs/demo.yaml" "$WORK/configs/demo.yaml" "${STEPS:-}" <<'EOF'
import sys, yaml
cfg = yaml.safe_load(open(sys.argv[1]))
if sys.argv[3]:
    cfg["train"]["max_steps"] = int(sys.argv[3])
yaml.safe_dump(cfg, open(sys.argv[2], "w"), sort_keys=False)
EOF
"$VENV_BIN/python" - "$REPO/configs/demo.yaml" "$WORK/configs/demo_tcn.yaml" <<'EOF'
import sys, yaml
cfg = yaml.safe_load(open(sys.argv[1]))
cfg["name"], cfg["model"] = "demo_tcn", {"name": "tcn"}
cfg["train"].update(max_steps=40, val_every_n_steps=20)
cfg["checkpoint"]["every_n_steps"] = 20
yaml.safe_dump(cfg, open(sys.argv[2], "w"), sort_keys=False)
EOF

export DAGSTER_HOME=$WORK/home A2B_DATA_ROOT=$WORK/data A2B_CONFIGS_DIR=$WORK/configs A2B_WANDB_MODE=disabled
cd "$REPO"
for experiment in demo demo_tcn; do
  "$VENV_BIN/a2b" demo --experiment "$experiment" --dagster-home "$DAGSTER_HOME" --data-root "$A2B_DATA_ROOT"
done
# the leaderboard, as the automation sensor of `dagster dev` would build it
"$VENV_BIN/python" - <<'EOF'
from dagster import DagsterInstance, materialize
from a2b_pipeline.defs.assets import ASSETS
from a2b_pipeline.defs.assets.cv import CV_ASSETS
from a2b_pipeline.defs.assets.leaderboard import leaderboard
from a2b_pipeline.defs.resources import default_resources
with DagsterInstance.get() as instance:
    assets = [*ASSETS, *CV_ASSETS, leaderboard]
    assert materialize(assets, instance=instance, resources=default_resources(), selection=[leaderboard]).success
EOF

"$VENV_BIN/dagster-webserver" -h 127.0.0.1 -p "$PORT" -w "$REPO/workspace.yaml" > "$WORK/webserver.log" 2>&1 &
SERVER=$!
for _ in $(seq 1 180); do
  curl -fs "http://127.0.0.1:$PORT/server_info" > /dev/null 2>&1 && break
  sleep 1
done
curl -fs "http://127.0.0.1:$PORT/server_info" > /dev/null || { tail -20 "$WORK/webserver.log" >&2; exit 1; }

shot() {  # name, path, height
  "$CHROMIUM" --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size="1600,${3:-1000}" \
    --virtual-time-budget=25000 --screenshot="$OUT/$1.png" "http://127.0.0.1:$PORT$2" > /dev/null 2>&1
  echo "$OUT/$1.png"
}
shot asset_graph "/locations/a2b_pipeline/asset-groups/a2b" 900
shot evaluation_demo "/assets/evaluation?view=partitions&partition=demo" 1400
shot check_evaluation "/assets/evaluation?view=checks&checkDetail=evaluation_metrics_ok" 1100
shot check_warning "/assets/evaluation?view=checks&checkDetail=evaluation_metrics_ok&partition=demo_tcn" 1100
shot leaderboard "/assets/leaderboard" 1600
shot training_run_demo "/assets/training_run?view=partitions&partition=demo" 1400
shot runs "/runs" 900
