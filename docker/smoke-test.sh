#!/usr/bin/env bash
# The docker deployment, run for real: build, compose up, launch the whole graph through the UI's GraphQL
# API, check where and how it ran, restart the daemon during training, compose down. Needs a running
# engine with BuildKit, a compose client (`docker compose` or `docker-compose` 1.29), python3 and curl;
# not part of .ci/run (CI has no engine). Prints each step with its duration; exits 1 naming the step
# that failed (the services' logs are printed, and everything is removed unless A2B_SMOKE_KEEP=1).
#
#   bash docker/smoke-test.sh
#
# Settings (environment):
#   A2B_BASE_IMAGE, A2B_POSTGRES_IMAGE  local base images; made with docker/make-base-images.sh (root,
#                                       debootstrap) when missing. Default: the pinned official images.
#   A2B_TORCH_WHEEL   a torch wheel handed to the build (e.g. the CPU wheel from
#                     `pip download torch==2.13.0 --no-deps`); default: TORCH_SOURCE or PyPI's torch.
#   A2B_EXTRA_CA      a CA bundle for pip inside the build (a build secret), for TLS-intercepting networks.
#   A2B_RUN_GPUS      GPUs for GPU-tagged runs; default: all when the engine has the nvidia runtime, else none.
#   DOCKER            the docker client (default: docker).
#   A2B_SMOKE_TIMEOUT seconds a graph run may take (default 1200).
set -uo pipefail
cd "$(dirname "$0")/.."

DOCKER=${DOCKER:-docker}
IMAGE=${A2B_IMAGE:-a2b_pipeline:0.1.0}
PARTITION=demo
JOB=experiment_job
GRAPHQL=http://127.0.0.1:3000/graphql
RUN_TIMEOUT=${A2B_SMOKE_TIMEOUT:-1200}
WORK=$(mktemp -d /tmp/a2b-smoke.XXXXXX)
ENV_FILE=$WORK/.env
SUMMARY=()
STEP=0

log() { printf '    %s\n' "$*"; }
fail() {
  printf '    ERROR: %s\n' "$*"
  return 1
}
gql() { python3 docker/smoke_client.py "$GRAPHQL" "$@"; }
compose() { "${COMPOSE[@]}" -p a2b -f docker/docker-compose.yaml --env-file "$ENV_FILE" "$@"; }
# A command in the user-code service, which mounts the shared data volume at /data.
in_user_code() { compose exec -T user_code sh -c "$1"; }
psql_query() {
  compose exec -T postgres sh -c 'psql -v ON_ERROR_STOP=1 -At -U "$POSTGRES_USER" -d "$POSTGRES_DB" -c "$0"' "$1"
}
container_of() { "$DOCKER" ps -aq --filter "label=com.docker.compose.project=a2b" --filter "label=com.docker.compose.service=$1" | head -1; }

# Run containers the launcher started (labelled with their run id), then the compose services and volumes.
teardown() {
  local ids
  ids=$("$DOCKER" ps -aq --filter label=dagster/run_id --filter network=a2b_network 2>/dev/null)
  [ -n "$ids" ] && "$DOCKER" rm -f $ids >/dev/null
  compose down -v --remove-orphans 2>&1 | sed 's/^/    /'
}

run_step() {
  local name=$1 fn=$2 t0 t1 secs
  STEP=$((STEP + 1))
  printf '[%2d] %s\n' "$STEP" "$name"
  t0=$(date +%s.%N)
  "$fn"
  local rc=$?
  t1=$(date +%s.%N)
  secs=$(awk "BEGIN { printf \"%.1f\", $t1 - $t0 }")
  if [ $rc -ne 0 ]; then
    printf '[%2d] FAILED: %s (%ss)\n' "$STEP" "$name" "$secs"
    SUMMARY+=("$(printf '%2d  %-62s %8ss  FAILED' "$STEP" "$name" "$secs")")
    print_summary
    if [ -n "${COMPOSE:-}" ] && [ -f "$ENV_FILE" ]; then
      echo "--- service logs (last 60 lines each) ---"
      compose logs --no-color --tail 60 2>&1 | tail -300
      if [ "${A2B_SMOKE_KEEP:-0}" = 1 ]; then
        echo "A2B_SMOKE_KEEP=1: left running; remove with: docker compose -p a2b -f docker/docker-compose.yaml down -v"
      else
        teardown
      fi
    fi
    rm -rf "$WORK"
    echo "smoke test FAILED at step $STEP: $name"
    exit 1
  fi
  printf '[%2d] ok: %s (%ss)\n' "$STEP" "$name" "$secs"
  SUMMARY+=("$(printf '%2d  %-62s %8ss  ok' "$STEP" "$name" "$secs")")
}

print_summary() {
  echo "--- summary ---"
  printf '%s\n' "${SUMMARY[@]}"
}

# ---- steps ----

preflight() {
  "$DOCKER" version --format 'engine {{.Server.Version}} (API {{.Server.APIVersion}}), client {{.Client.Version}}' |
    sed 's/^/    /' || return 1
  if "$DOCKER" compose version >/dev/null 2>&1; then
    COMPOSE=("$DOCKER" compose)
  elif command -v docker-compose >/dev/null; then
    COMPOSE=(docker-compose)
  else
    fail "no compose client: install the compose plugin or docker-compose"
  fi
  log "compose: $("${COMPOSE[@]}" version 2>/dev/null | head -1)"
  command -v python3 >/dev/null || fail "python3 is needed for the GraphQL calls" || return 1
  command -v curl >/dev/null || fail "curl is needed" || return 1
  # The deployment's volumes and network have fixed names: never touch an existing deployment's data.
  for v in a2b_data a2b_postgres_data; do
    if "$DOCKER" volume inspect "$v" >/dev/null 2>&1; then
      fail "volume $v exists (a deployment on this engine?): remove it or run elsewhere"
      return 1
    fi
  done
  if curl -s -o /dev/null --max-time 2 http://127.0.0.1:3000/; then
    fail "something already listens on 127.0.0.1:3000"
    return 1
  fi
  if "$DOCKER" buildx version >/dev/null 2>&1; then
    BUILD=("$DOCKER" buildx build --load)
  else
    BUILD=(env DOCKER_BUILDKIT=1 "$DOCKER" build)
  fi
  log "build: ${BUILD[*]}"
  local gpus=${A2B_RUN_GPUS:-}
  if [ -z "$gpus" ]; then
    if "$DOCKER" info --format '{{json .Runtimes}}' | grep -q nvidia; then gpus=all; else gpus=none; fi
  fi
  local sock=/var/run/docker.sock
  cat >"$ENV_FILE" <<EOF
DAGSTER_POSTGRES_PASSWORD=smoke-$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')
A2B_IMAGE=$IMAGE
A2B_POSTGRES_IMAGE=${A2B_POSTGRES_IMAGE:-}
A2B_RUN_GPUS=$gpus
DOCKER_GID=$(stat -c %g "$sock" 2>/dev/null || echo 0)
A2B_WANDB_MODE=offline
EOF
  log "GPUs for GPU-tagged runs: $gpus; docker socket group: $(grep DOCKER_GID "$ENV_FILE" | cut -d= -f2)"
}

base_images() {
  local missing=0
  for img in ${A2B_BASE_IMAGE:-} ${A2B_POSTGRES_IMAGE:-}; do
    if "$DOCKER" image inspect "$img" >/dev/null 2>&1; then log "$img: present"; else missing=1; fi
  done
  if [ $missing = 1 ]; then
    log "making the missing base images from Debian packages (docker/make-base-images.sh)"
    DOCKER=$DOCKER bash docker/make-base-images.sh 2>&1 | sed 's/^/    /'
    [ "${PIPESTATUS[0]}" = 0 ] || return 1
  fi
  [ -n "${A2B_BASE_IMAGE:-}" ] || log "base image: the Dockerfile's default (pinned official Python image)"
  [ -n "${A2B_POSTGRES_IMAGE:-}" ] || log "postgres image: the compose file's default (pinned official image)"
}

build_image() {
  local args=(-f docker/Dockerfile -t "$IMAGE")
  [ -n "${A2B_BASE_IMAGE:-}" ] && args+=(--build-arg "BASE_IMAGE=$A2B_BASE_IMAGE")
  if [ -n "${A2B_TORCH_WHEEL:-}" ]; then
    [ -f "$A2B_TORCH_WHEEL" ] || fail "A2B_TORCH_WHEEL=$A2B_TORCH_WHEEL is not a file" || return 1
    local name
    name=$(basename "$A2B_TORCH_WHEEL")
    [ -f "docker/wheels/$name" ] || cp "$A2B_TORCH_WHEEL" docker/wheels/
    args+=(--build-arg "TORCH_SOURCE=/opt/wheels/$name")
    log "torch from $name"
  elif [ -n "${TORCH_SOURCE:-}" ]; then
    args+=(--build-arg "TORCH_SOURCE=$TORCH_SOURCE")
  fi
  [ -n "${TORCH_INDEX_URL:-}" ] && args+=(--build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL")
  [ -n "${A2B_EXTRA_CA:-}" ] && args+=(--secret "id=extra_ca,src=$A2B_EXTRA_CA")
  "${BUILD[@]}" "${args[@]}" . >"$WORK/build.log" 2>&1 || {
    tail -40 "$WORK/build.log"
    return 1
  }
  log "$IMAGE: $("$DOCKER" image inspect "$IMAGE" --format '{{.Id}} {{.Size}} bytes, user {{.Config.User}}')"
}

compose_up() {
  compose up -d 2>&1 | sed 's/^/    /'
  [ "${PIPESTATUS[0]}" = 0 ] || return 1
  compose ps 2>&1 | sed 's/^/    /'
}

wait_webserver() {
  local ready
  ready=$(gql wait-web 300) || return 1
  log "$ready"
  log "GET http://127.0.0.1:3000/server_info: $(curl -sf --max-time 10 http://127.0.0.1:3000/server_info)"
}

deployment_guarantees() {
  local svc cid user mounts
  for svc in postgres user_code webserver daemon; do
    cid=$(container_of "$svc")
    [ -n "$cid" ] || fail "no container for service $svc" || return 1
    user=$("$DOCKER" exec "$cid" id -un) || return 1
    [ "$user" != root ] || fail "$svc runs as root" || return 1
    mounts=$("$DOCKER" inspect "$cid" --format '{{range .Mounts}}{{.Source}}:{{.Destination}} {{end}}')
    if [[ "$mounts" == *docker.sock* ]]; then
      [ "$svc" = daemon ] || fail "$svc has the docker socket mounted" || return 1
    elif [ "$svc" = daemon ]; then
      fail "the daemon has no docker socket: it cannot launch runs" || return 1
    fi
    log "$svc: user $user ($("$DOCKER" exec "$cid" id -u)), image $("$DOCKER" inspect "$cid" --format '{{.Config.Image}}')$([[ "$mounts" == *docker.sock* ]] && echo ', docker socket')"
  done
  local ports
  ports=$("$DOCKER" ps --filter label=com.docker.compose.project=a2b --format '{{.Ports}}' | grep -o '[0-9.]*:[0-9]*->' | sort -u | tr '\n' ' ')
  [ "$ports" = "127.0.0.1:3000-> " ] || fail "published ports: '$ports' (expected only 127.0.0.1:3000)" || return 1
  log "published: ${ports% }"
}

register_partition() {
  local added sensor status
  added=$(gql add-partition "$PARTITION") || return 1
  log "partition $added registered (addDynamicPartition, as the launchpad's 'Add partition')"
  # The sensors run as shipped: the corpus sensor must not chase the pipeline's own writes (no refresh
  # runs appear while this test runs; checked after the launches).
  for sensor in experiment_configs_sensor corpus_change_sensor; do
    status=$(gql sensor-status "$sensor") || return 1
    [ "$status" = RUNNING ] || fail "$sensor is $status, not RUNNING as shipped" || return 1
    log "$sensor: $status (as shipped)"
  done
}

RUN_A=""
RUN_A_CHAIN=()
launch_graph() {
  RUN_A=$(gql launch "$JOB" "$PARTITION") || return 1
  log "run $RUN_A launched ($JOB, partition $PARTITION)"
  local done_by
  done_by=$(gql wait-run "$RUN_A" "$RUN_TIMEOUT") || return 1
  read -ra RUN_A_CHAIN <<<"$(gql runs "$RUN_A")"
  log "SUCCESS (run $done_by; runs in the chain: ${#RUN_A_CHAIN[@]})"
}

check_run_container() {
  local cid labels
  cid=$(gql tag "$RUN_A" docker/container_id)
  [ -n "$cid" ] || fail "run $RUN_A has no docker/container_id tag: not launched by the docker run launcher" || return 1
  labels=$("$DOCKER" inspect "$cid" --format '{{index .Config.Labels "dagster/run_id"}} {{index .Config.Labels "com.docker.compose.service"}}') ||
    return 1
  [ "${labels%% *}" = "$RUN_A" ] || fail "container $cid is labelled run '${labels%% *}', not $RUN_A" || return 1
  [ -z "${labels#* }" ] || fail "the run executed in compose service ${labels#* }, not its own container" || return 1
  for svc in user_code webserver daemon; do
    [ "$(container_of $svc | cut -c1-12)" != "$(echo "$cid" | cut -c1-12)" ] || fail "run container is $svc" || return 1
  done
  log "$("$DOCKER" inspect "$cid" --format 'container {{.Name}} ({{slice .Id 0 12}}): image {{.Config.Image}}, cmd {{index .Config.Cmd 0}} {{index .Config.Cmd 1}} {{index .Config.Cmd 2}}, exited {{.State.ExitCode}}, network {{.HostConfig.NetworkMode}}')"
  local user gpus mounts
  user=$("$DOCKER" inspect "$IMAGE" --format '{{.Config.User}}')
  [ "$("$DOCKER" inspect "$cid" --format '{{.Config.User}}')" = "$user" ] && [ "$user" = a2b ] ||
    fail "run container user is not a2b" || return 1
  mounts=$("$DOCKER" inspect "$cid" --format '{{range .Mounts}}{{.Name}}:{{.Destination}} {{end}}')
  [[ "$mounts" != *docker.sock* ]] || fail "the run container has the docker socket" || return 1
  gpus=$("$DOCKER" inspect "$cid" --format '{{json .HostConfig.DeviceRequests}}')
  log "user $user, mounts: ${mounts% }, device requests: $gpus (A2B_RUN_GPUS=$(grep A2B_RUN_GPUS "$ENV_FILE" | cut -d= -f2), run tag gpu=$(gql tag "$RUN_A" gpu))"
}

check_postgres() {
  local ids status events
  ids=$(printf "'%s'," "${RUN_A_CHAIN[@]}")
  ids=${ids%,}
  status=$(psql_query "select run_id || ' ' || status from runs where run_id in ($ids) order by create_timestamp") ||
    return 1
  log "runs table: $(echo "$status" | tr '\n' ';')"
  echo "$status" | grep -q " SUCCESS$" || fail "no SUCCESS run in Postgres" || return 1
  events=$(psql_query "select asset_key, count(*) from event_logs where run_id in ($ids)
    and dagster_event_type = 'ASSET_MATERIALIZATION' group by asset_key order by asset_key") || return 1
  log "asset materializations in event_logs: $(echo "$events" | tr '\n' ' ')"
  local assets
  assets=$(echo "$events" | grep -c .)
  [ "$assets" = 6 ] || fail "expected the 6 assets' materializations, found $assets" || return 1
  log "event_logs rows for the run: $(psql_query "select count(*) from event_logs where run_id in ($ids)")"
}

METRICS_A=""
check_metrics() {
  METRICS_A=$(gql metrics "${RUN_A_CHAIN[-1]}") || return 1
  log "evaluation: $METRICS_A"
}

RUN_DIR=""
check_checkpoints() {
  RUN_DIR=$(gql metadata training_run run_dir "${RUN_A_CHAIN[@]}") || return 1
  log "run directory (training_run metadata): $RUN_DIR"
  local listing
  listing=$(in_user_code "cd '$RUN_DIR' && ls -ld last best step_* && stat -c '%U %s %n' step_*/*") || return 1
  echo "$listing" | sed 's/^/      /'
  for f in model.safetensors optimizer.safetensors train_state.json; do
    echo "$listing" | grep -q "step_[0-9]*/$f$" || fail "no $f in a checkpoint" || return 1
  done
  ! echo "$listing" | grep -q '^root ' || fail "checkpoint files owned by root" || return 1
}

RUN_B=""
restart_during_training() {
  # Training anew (a plain relaunch would report the complete run): `fresh: true` trains in a new run
  # directory beside the first one, which stays as it is; a retry of this launch must resume there.
  local first_dir="$RUN_DIR" first_sums
  first_sums=$(in_user_code "cd '$first_dir' && sha256sum step_*/* evaluation-test.json") || return 1
  RUN_DIR="$first_dir.attempt-2"
  RUN_B=$(gql launch "$JOB" "$PARTITION" --fresh) || return 1
  log "run $RUN_B launched (training_run fresh: true; trains in $RUN_DIR)"
  local cid="" t=0 ckpt=""
  while [ -z "$ckpt" ]; do
    [ $t -lt 900 ] || fail "no checkpoint in $RUN_DIR after 900s" || return 1
    [ -n "$cid" ] || cid=$(gql tag "$RUN_B" docker/container_id)
    if [ -n "$cid" ]; then
      ckpt=$("$DOCKER" exec "$cid" sh -c "ls -d '$RUN_DIR'/step_* 2>/dev/null | head -1" 2>/dev/null)
      [ "$("$DOCKER" inspect "$cid" --format '{{.State.Running}}' 2>/dev/null)" = true ] ||
        fail "run container stopped before its first checkpoint" || return 1
    fi
    sleep 1
    t=$((t + 1))
  done
  log "training in container ${cid:0:12}; first checkpoint: $(basename "$ckpt")"
  # 1. A plain restart: the run lives in its own container, so it goes on without the daemon.
  log "docker compose restart daemon"
  compose restart daemon 2>&1 | sed 's/^/    /'
  [ "$("$DOCKER" inspect "$cid" --format '{{.State.Running}} {{.State.ExitCode}}')" != "false 0" ] ||
    log "(training finished during the restart)"
  log "after the restart: run $(gql status "$RUN_B"), its container running: $("$DOCKER" inspect "$cid" --format '{{.State.Running}}')"
  # 2. A restart during which the run's container dies (as in a host or OOM kill): the daemon's run
  # monitoring must notice when it is back, and the run continue from the checkpoint.
  log "docker compose stop daemon; the run's container is killed meanwhile; docker compose start daemon"
  compose stop daemon 2>&1 | sed 's/^/    /'
  "$DOCKER" kill "$cid" >/dev/null || return 1
  log "status while the daemon was down: $(gql status "$RUN_B")"
  compose start daemon 2>&1 | sed 's/^/    /'
  local done_by chain
  done_by=$(gql wait-run "$RUN_B" "$RUN_TIMEOUT") || return 1
  read -ra chain <<<"$(gql runs "$RUN_B")"
  local n_containers
  n_containers=$("$DOCKER" ps -aq --filter "label=dagster/run_id=$RUN_B" | wc -l)
  log "SUCCESS (finished by run $done_by; runs: ${#chain[@]}; containers of run $RUN_B: $n_containers)"
  local resumed
  resumed=$(gql metadata training_run resumed_from_step "${chain[@]}") || return 1
  log "training_run resumed from step $resumed"
  [ "$resumed" -gt 0 ] || fail "training started over instead of resuming from its checkpoint" || return 1
  local metrics_b
  metrics_b=$(gql metrics "${chain[-1]}") || return 1
  log "evaluation after the restart: $metrics_b"
  log "evaluation uninterrupted:     $METRICS_A"
  [ "$metrics_b" = "$METRICS_A" ] || fail "final metrics differ from the uninterrupted run's" || return 1
  # the first run's files, which its materializations recorded, are as they were
  [ "$(in_user_code "cd '$first_dir' && sha256sum step_*/* evaluation-test.json")" = "$first_sums" ] ||
    fail "the fresh relaunch changed the first run's files in $first_dir" || return 1
  log "first run's checkpoints and report unchanged in $first_dir"
}

no_refresh_storm() {
  # The sensors ran as shipped all along: the pipeline's own writes (the synthesized corpus) never made the
  # corpus sensor ask for a data refresh.
  local refreshes
  refreshes=$(gql job-runs data_refresh_job) || return 1
  [ -z "$refreshes" ] || fail "the sensors launched data_refresh_job runs: $refreshes" || return 1
  log "no data_refresh_job run (corpus_change_sensor as shipped)"
}

compose_down() {
  teardown
  ! "$DOCKER" volume inspect a2b_data >/dev/null 2>&1 || fail "volume a2b_data is still there" || return 1
}

t_start=$(date +%s)
echo "a2b docker smoke test: $(date -u '+%Y-%m-%d %H:%M:%S UTC'), $(git rev-parse --short HEAD 2>/dev/null || echo 'no git')"
run_step "preflight: engine, compose client, free names and port" preflight
run_step "base images (A2B_BASE_IMAGE / A2B_POSTGRES_IMAGE)" base_images
run_step "build the image $IMAGE (BuildKit)" build_image
run_step "docker compose up -d" compose_up
run_step "wait for the webserver on 127.0.0.1:3000 and the code location" wait_webserver
run_step "deployment: non-root users, docker socket only in the daemon, ports" deployment_guarantees
run_step "register partition $PARTITION, the sensors running as shipped (GraphQL)" register_partition
run_step "launch $JOB for $PARTITION (GraphQL launchRun) and wait for success" launch_graph
run_step "the run executed in its own container started by the run launcher" check_run_container
run_step "the run and its asset events are in Postgres (SQL)" check_postgres
run_step "evaluation metrics are finite" check_metrics
run_step "checkpoint files on the shared volume" check_checkpoints
run_step "daemon restart during training: resume, metrics equal the uninterrupted run" restart_during_training
run_step "no refresh run from the sensors" no_refresh_storm
run_step "docker compose down -v" compose_down
rm -rf "$WORK"
print_summary
echo "smoke test passed in $(($(date +%s) - t_start))s"
