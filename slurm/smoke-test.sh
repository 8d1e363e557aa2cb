#!/usr/bin/env bash
# Training as Slurm jobs, run for real on a two-node Slurm cluster on this host (slurm/cluster.sh: Debian's
# slurm-wlm 22.05 + munge, installed when missing), with Dagster (`dagster dev`: webserver, daemon, code
# server) launching the jobs through the UI's GraphQL API. Needs root. Prints each step with its duration;
# exits 1 naming the step that failed (the cluster's and Dagster's logs are printed); at the end, or on a
# failure, every process it started is stopped by its pid (A2B_SMOKE_KEEP=1 keeps the work directory).
#
#   bash slurm/smoke-test.sh
#
# Settings (environment): A2B_SMOKE_TIMEOUT seconds a run or backfill may take (default 900).
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
RUN_TIMEOUT=${A2B_SMOKE_TIMEOUT:-900}
WORK=$(mktemp -d /tmp/a2b-slurm-smoke.XXXXXX)
chmod 755 "$WORK"
CLUSTER=$WORK/cluster
DATA=$WORK/data
CONFIGS=$WORK/configs
export DAGSTER_HOME=$WORK/home
PY=$REPO/.venv/bin/python
SWEEP=(smoke.h8 smoke.h12 smoke.h16)
# The sweep, DDP and requeue runs execute their steps in the run worker (the launchpad's `in_process`
# executor: one Python start per run instead of one per step, minutes on 2 cores); the cancel run keeps the
# default multiprocess executor, where Terminate reaches the training step in a process of its own.
IN_PROCESS='{"execution": {"config": {"in_process": {}}}}'

DAGSTER_PID=
SUMMARY=()
STEP=0

log() { printf '    %s\n' "$*"; }
fail() {
  printf '    ERROR: %s\n' "$*"
  return 1
}
gql() { python3 slurm/smoke_client.py "$GRAPHQL" "$@"; }

stop_everything() {
  if [ -n "$DAGSTER_PID" ] && kill -0 "$DAGSTER_PID" 2>/dev/null; then
    kill -INT -- "-$DAGSTER_PID" 2>/dev/null # dagster dev (its own process group: setsid) stops on Ctrl-C
    for _ in $(seq 60); do kill -0 "$DAGSTER_PID" 2>/dev/null || break; sleep 0.5; done
    kill -KILL -- "-$DAGSTER_PID" 2>/dev/null
    wait "$DAGSTER_PID" 2>/dev/null
  fi
  [ -f "$CLUSTER/slurm.conf" ] && bash slurm/cluster.sh stop "$CLUSTER"
  if [ "${A2B_SMOKE_KEEP:-0}" = 1 ]; then echo "A2B_SMOKE_KEEP=1: kept $WORK"; else rm -rf "$WORK"; fi
}

run_step() {
  local name=$1 fn=$2 t0 t1 secs rc
  STEP=$((STEP + 1))
  printf '[%2d] %s\n' "$STEP" "$name"
  t0=$(date +%s.%N)
  "$fn"
  rc=$?
  t1=$(date +%s.%N)
  secs=$(awk "BEGIN { printf \"%.1f\", $t1 - $t0 }")
  if [ $rc -ne 0 ]; then
    printf '[%2d] FAILED: %s (%ss)\n' "$STEP" "$name" "$secs"
    SUMMARY+=("$(printf '%2d  %-58s %8ss  FAILED' "$STEP" "$name" "$secs")")
    print_summary
    echo "--- logs (last 40 lines each) ---"
    for f in "$CLUSTER"/log/*.log "$WORK"/dagster.log; do
      [ -f "$f" ] && { echo "== $f"; tail -40 "$f"; }
    done
    stop_everything
    echo "slurm smoke test FAILED at step $STEP: $name"
    exit 1
  fi
  printf '[%2d] ok: %s (%ss)\n' "$STEP" "$name" "$secs"
  SUMMARY+=("$(printf '%2d  %-58s %8ss  ok' "$STEP" "$name" "$secs")")
}

print_summary() {
  echo "--- summary ---"
  printf '%s\n' "${SUMMARY[@]}"
}

# ---- steps ----

preflight() {
  [ "$(id -u)" = 0 ] || fail "run as root: slurmd starts jobs as their users, munged runs as user munge" || return 1
  command -v python3 >/dev/null || fail "python3 is needed" || return 1
  bash slurm/cluster.sh install || fail "apt-get install slurm-wlm munge failed" || return 1
  log "$(slurmctld -V), $(munged -V 2>&1 | head -1)"
  bash scripts/setup.sh | sed 's/^/    /'
  [ -x "$PY" ] || fail "no $PY after scripts/setup.sh"
}

start_cluster() {
  bash slurm/cluster.sh start "$CLUSTER" 1 || return 1
  # shellcheck disable=SC1091
  . "$CLUSTER/env"
  sinfo -N -o '%N %T %c %m' | sed 's/^/    /'
}

# A tiny experiment on two synthetic corpora (written on first use), CPU, one thread.
write_configs() {
  mkdir -p "$CONFIGS/sweeps" "$DATA" "$DAGSTER_HOME"
  cat >"$WORK/base.yaml" <<YAML
name: smoke
seed: 0
data:
  datasets:
    - {name: synA, type: synthetic, root: data/synA, synthetic: {subjects: 4, recordings_per_subject: 2, seconds: 16, seed: 1}}
    - {name: synB, type: synthetic, root: data/synB, weight: 0.5, synthetic: {subjects: 4, recordings_per_subject: 2, seconds: 16, seed: 2}}
  channels: [eda, hr]
  batch_size: 4
  n_mels: 16
  cache_dir: cache
model: {name: conv_gru, conv_channels: 8, hidden: 8, dropout: 0.0}
scheduler: {name: constant}
train: {max_steps: 30, num_epochs: null, device: cpu, num_threads: 1, log_every_n_steps: 5, val_every_n_steps: 10, progress_bar: false}
checkpoint: {dir: runs, every_n_steps: 10, keep_last: 3}
tracking: {wandb_mode: disabled}
YAML
  cat >"$CONFIGS/sweeps/smoke.yaml" <<YAML
description: three GRU widths, each a Slurm job
base: ../../base.yaml
grid:
  model.hidden: {h8: 8, h12: 12, h16: 16}
YAML
  "$PY" - "$WORK/base.yaml" "$CONFIGS" <<'PYTHON' || return 1
import sys
from pathlib import Path
import yaml
base = yaml.safe_load(Path(sys.argv[1]).read_text())
def variant(name, **train):
    cfg = {**base, "name": name, "train": {**base["train"], **train}}
    cfg["checkpoint"] = {**base["checkpoint"], "every_n_steps": 20}
    (Path(sys.argv[2]) / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
variant("ddp")
variant("requeue", max_steps=600)
variant("cancel", max_steps=1000000)
PYTHON
  cat >"$DAGSTER_HOME/dagster.yaml" <<YAML
telemetry: {enabled: false}
run_coordinator: {module: dagster, class: QueuedRunCoordinator}
concurrency:
  runs: {max_concurrent_runs: 6}
  # training_run is in pool gpu: at most 2 training steps, so 2 Slurm jobs, at once
  pools: {default_limit: 2}
YAML
  ls "$CONFIGS" "$CONFIGS/sweeps" | sed 's/^/    /'
}

start_dagster() {
  PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  GRAPHQL=http://127.0.0.1:$PORT/graphql
  # The code location's resources from the environment: training runs as Slurm jobs, polled every second.
  A2B_LAUNCH=slurm A2B_SLURM_POLL_SECONDS=1 A2B_DATA_ROOT=$DATA A2B_CONFIGS_DIR=$CONFIGS \
    A2B_WANDB_MODE=disabled A2B_DEVICE=cpu A2B_PROGRESS_SECONDS=5 \
    setsid "$REPO/.venv/bin/dagster" dev -p "$PORT" -w workspace.yaml >"$WORK/dagster.log" 2>&1 &
  DAGSTER_PID=$!
  log "dagster dev: pid $DAGSTER_PID, $GRAPHQL"
  gql wait-web 180 | sed 's/^/    /' || return 1
  for p in "${SWEEP[@]}" ddp requeue cancel; do gql add-partition "$p" >/dev/null || return 1; done
  # corpus_change_sensor would refresh every experiment that shares the corpora once they exist
  log "corpus_change_sensor: $(gql stop-sensor corpus_change_sensor)"
}

max_jobs() { # watch squeue while $1 runs: the most a2b jobs at once, in $WORK/max_jobs
  local most=0 n
  while kill -0 "$1" 2>/dev/null; do
    n=$(squeue -h -o %j | grep -c '^a2b:smoke' || true)
    [ "$n" -gt "$most" ] && most=$n && echo "$most" >"$WORK/max_jobs"
    sleep 0.5
  done
}

sweep_backfill() {
  local id waiter
  id=$(gql backfill "$IN_PROCESS" "${SWEEP[@]}") || return 1
  log "backfill $id over ${SWEEP[*]}"
  echo 0 >"$WORK/max_jobs"
  gql wait-backfill "$id" "$RUN_TIMEOUT" >"$WORK/sweep_runs" &
  waiter=$!
  max_jobs "$waiter"
  wait "$waiter" || return 1
  log "most Slurm jobs of the sweep at once: $(cat "$WORK/max_jobs") (pool gpu limit 2)"
  [ "$(cat "$WORK/max_jobs")" -ge 1 ] && [ "$(cat "$WORK/max_jobs")" -le 2 ] || fail "concurrency bound not kept"
  local run job
  for run in $(cat "$WORK/sweep_runs"); do
    job=$(gql metadata training_run slurm_job_id "$run" 2>/dev/null) || continue
    log "run ${run:0:8}: Slurm job $job, $(scontrol show job -o "$job" | grep -o 'JobState=[A-Z]*')"
  done
}

leaderboard_fills_in() {
  local csv=$DATA/data/leaderboard/leaderboard.csv
  for _ in $(seq 90); do
    if [ -f "$csv" ] && [ "$(grep -E '^(smoke\.h8|smoke\.h12|smoke\.h16),' "$csv" | grep -vcE 'missing|not evaluated|running|failed')" = 3 ]; then
      grep -E '^(experiment|smoke\.)' "$csv" | cut -c1-150 | sed 's/^/    /'
      return 0
    fi
    sleep 2
  done
  fail "the leaderboard has no evaluated row for each sweep experiment: $(cat "$csv" 2>/dev/null | head -5)"
}

two_node_ddp() {
  local config run
  config='{"execution": {"config": {"in_process": {}}}, "resources": {"compute": {"config": {"device": "cpu", "launch": "slurm", "slurm": {"nodes": 2, "poll_seconds": 1}}}}}'
  run=$(gql launch-assets "$config" ddp corpus_manifest dataset_splits meta_loader_spec training_run) || return 1
  gql wait-run "$run" "$RUN_TIMEOUT" >/dev/null || return 1
  local world nodes
  world=$(gql metadata training_run world_size "$run") || return 1
  nodes=$(gql metadata training_run slurm_nodes "$run") || return 1
  log "run ${run:0:8}: world size $world on $nodes"
  [ "$world" = 2 ] && [ "$nodes" = "a2b-n[1-2]" ] || fail "expected 2 ranks on a2b-n[1-2]"
  grep -h "final weights sha256" "$(gql metadata training_run job_log "$run")" | sed 's/^.*rank/    rank/'
}

checkpoint_past() { # checkpoint_past EXPERIMENT STEP: a committed checkpoint beyond STEP exists
  local d
  for d in "$DATA"/runs/"$1"/train-*/step_*; do
    [ -f "$d/train_state.json" ] && [ "$((10#${d##*step_}))" -gt "$2" ] && return 0
  done
  return 1
}

requeue_mid_training() {
  local run job
  run=$(gql launch-assets "$IN_PROCESS" requeue corpus_manifest dataset_splits meta_loader_spec training_run) || return 1
  for _ in $(seq 600); do checkpoint_past requeue 40 && break; sleep 0.2; done
  checkpoint_past requeue 40 || fail "no checkpoint past step 40" || return 1
  job=$(squeue -h -o '%A %j' | awk '$2 == "a2b:requeue" {print $1}')
  [ -n "$job" ] || fail "no Slurm job a2b:requeue in squeue" || return 1
  scontrol requeue "$job" || return 1
  log "scontrol requeue $job at $(ls -d "$DATA"/runs/requeue/train-*/step_* | tail -1 | xargs basename)"
  for _ in $(seq 60); do scontrol show job -o "$job" | grep -q 'Restarts=1' && break; sleep 0.5; done
  # skip Slurm's short hold of a requeued job, but only once its last run has ended on the node, and not in
  # that second: slurmd refuses a credential no newer than the one it revoked (FAILED, "credential revoked")
  for _ in $(seq 120); do scontrol show job -o "$job" | grep -Eq 'JobState=(PENDING|RUNNING) ' && break; sleep 0.5; done
  scontrol update JobId="$job" StartTime=now+1
  gql wait-run "$run" "$RUN_TIMEOUT" >/dev/null || return 1
  local restarts job_dir run_dir
  restarts=$(gql metadata training_run slurm_restarts "$run") || return 1
  run_dir=$(gql metadata training_run run_dir "$run") || return 1
  job_dir=$(dirname "$(gql metadata training_run job_log "$run")")
  log "run ${run:0:8}: Slurm job $job completed after $restarts requeue(s)"
  [ "$restarts" -ge 1 ] || fail "the job was not requeued" || return 1
  log "the same config without interruption, for comparison"
  "$PY" -m a2b_pipeline.cli train "$job_dir/config.yaml" --run-dir "$WORK/uninterrupted" >/dev/null 2>"$WORK/uninterrupted.log" ||
    fail "the uninterrupted run failed: $(tail -5 "$WORK/uninterrupted.log")" || return 1
  "$PY" - "$run_dir" "$WORK/uninterrupted" <<'PYTHON'
import sys
import torch
from a2b_pipeline.checkpoint.store import load_tensors
from a2b_pipeline.state import TrainState
def weights(run_dir):
    state = TrainState.from_checkpoint(run_dir)
    return state.global_step, load_tensors(state.last_checkpoint, "model.safetensors", state)
(steps_a, a), (steps_b, b) = weights(sys.argv[1]), weights(sys.argv[2])
same = steps_a == steps_b and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
print(f"    final weights after step {steps_a} (requeued) and {steps_b} (uninterrupted): {'equal' if same else 'DIFFERENT'}")
sys.exit(0 if same else 1)
PYTHON
}

worker_memory() { # the run worker (a child of the code server) and its step process, while they wait
  local server worker step
  server=$(pgrep -f "dagster api grpc.*$WORK" | head -1)
  worker=$(pgrep -P "$server" | head -1)
  step=$(pgrep -P "$worker" -f python | head -1)
  ps -o rss= -p "$worker" -p "${step:-$worker}" | awk '{s += $1} END {printf "run worker + step process %.0f MB RSS", s / 1024}'
}

cancel_from_dagster() {
  local run job status
  run=$(gql launch-assets '{}' cancel corpus_manifest dataset_splits meta_loader_spec training_run) || return 1
  for _ in $(seq 600); do
    job=$(squeue -h -t RUNNING -o '%A %j' | awk '$2 == "a2b:cancel" {print $1}')
    [ -n "$job" ] && break
    sleep 0.2
  done
  [ -n "$job" ] || fail "no running Slurm job a2b:cancel" || return 1
  log "waiting on the job: $(worker_memory)"
  log "Slurm job $job running; Terminate from Dagster: $(gql terminate "$run")"
  for _ in $(seq 120); do
    status=$(gql status "$run")
    [ "$status" = CANCELED ] && ! squeue -h -o %A | grep -qx "$job" && break
    sleep 0.5
  done
  log "run ${run:0:8}: $status; squeue: $(squeue -h -o %A | grep -cx "$job") job(s) $job; $(scontrol show job -o "$job" | grep -o 'JobState=[A-Z]*')"
  [ "$status" = CANCELED ] || fail "the run is $status, not CANCELED" || return 1
  ! squeue -h -o %A | grep -qx "$job" || fail "job $job is still in squeue"
}

overhead() {
  "$PY" bench/slurm_overhead.py --jobs 10 | sed 's/^/    /'
}

stop_all() {
  stop_everything
  local left
  left=$(pgrep -f "$WORK" || true)
  [ -z "$left" ] || fail "still running: $left"
}

trap 'echo "interrupted: stopping everything"; stop_everything; exit 1' INT TERM

run_step "preflight: root, Debian's slurm-wlm + munge, the venv" preflight
run_step "start the cluster: munged, slurmctld, slurmd a2b-n1 + a2b-n2" start_cluster
run_step "configs: a 3-experiment sweep, ddp, requeue, cancel" write_configs
run_step "dagster dev (launch: slurm) and the code location" start_dagster
run_step "sweep of 3 experiments as a GraphQL backfill, <= 2 jobs at once" sweep_backfill
run_step "the leaderboard fills in as the sweep's jobs finish" leaderboard_fills_in
run_step "a 2-node DDP experiment (srun, a rank per node)" two_node_ddp
run_step "scontrol requeue mid-training: weights = uninterrupted run's" requeue_mid_training
run_step "Terminate from Dagster: scancel, the job gone from squeue" cancel_from_dagster
run_step "launch and poll overhead per job (bench/slurm_overhead.py)" overhead
run_step "stop everything by pid" stop_all
print_summary
echo "slurm smoke test passed"
