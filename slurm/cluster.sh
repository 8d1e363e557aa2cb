#!/usr/bin/env bash
# A two-node Slurm 22.05 cluster on this host, for tests and slurm/smoke-test.sh (needs root and Debian's
# slurm-wlm + munge). Everything lives in one directory: munged with its own socket, slurmctld, and two
# slurmd (nodes a2b-n1, a2b-n2, each with its own port, spool, pid and log file), all on free ports.
#
#   bash slurm/cluster.sh start DIR [CPUS_PER_NODE]   -> writes DIR/env (export SLURM_CONF=...), waits
#                                                        until both nodes are idle
#   bash slurm/cluster.sh stop DIR                    -> stops every daemon it started, by its pid file
#   bash slurm/cluster.sh install                     -> apt-get install slurm-wlm munge (root)
#
# Clients find the cluster through SLURM_CONF (`. DIR/env`): nothing under /etc/slurm is touched.
set -euo pipefail

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local limit=$1 what=$2
  shift 2
  for _ in $(seq $((limit * 5))); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "cluster.sh: $what not ready after ${limit}s" >&2
  return 1
}

install() {
  command -v slurmctld >/dev/null && command -v munged >/dev/null && return 0
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
}

start() {
  local dir=$1 cpus=${2:-1}
  [ "$(id -u)" = 0 ] || { echo "cluster.sh: run as root (slurmd starts jobs as their users)" >&2; return 1; }
  command -v slurmctld >/dev/null || { echo "cluster.sh: no slurmctld: bash slurm/cluster.sh install" >&2; return 1; }
  mkdir -p "$dir"/{state,spool,log,munge}
  dir=$(cd "$dir" && pwd)
  # munged refuses a key or socket directory others can write: its own directory, owned by munge.
  [ -f /etc/munge/munge.key ] || { mungekey --create >/dev/null 2>&1 || dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none; chown munge:munge /etc/munge/munge.key; chmod 600 /etc/munge/munge.key; }
  chown munge:munge "$dir/munge"
  chmod 755 "$dir/munge"
  chmod 755 "$dir"
  runuser -u munge -- munged --socket="$dir/munge/socket" --pid-file="$dir/munge/munged.pid" \
    --log-file="$dir/munge/munged.log" --seed-file="$dir/munge/seed" --key-file=/etc/munge/munge.key
  wait_for 10 munged test -S "$dir/munge/socket"

  local host ctld_port n1_port n2_port mem
  host=$(hostname -s)
  ctld_port=$(free_port)
  n1_port=$(free_port)
  n2_port=$(free_port)
  mem=$(($(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) / 4))
  cat >"$dir/slurm.conf" <<CONF
ClusterName=a2b
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/socket,cred_expire=10
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/%n
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd-%n.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd-%n.log
# No cgroups in a container: track processes by parent pid, no task binding, no accounting daemon.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
MpiDefault=none
ReturnToService=2
KillWait=20
MinJobAge=600
SchedulerParameters=defer_batch
NodeName=a2b-n1 NodeHostname=$host NodeAddr=127.0.0.1 Port=$n1_port CPUs=$cpus RealMemory=$mem State=UNKNOWN
NodeName=a2b-n2 NodeHostname=$host NodeAddr=127.0.0.1 Port=$n2_port CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=a2b-n[1-2] Default=YES MaxTime=INFINITE State=UP
CONF
  echo "export SLURM_CONF=$dir/slurm.conf" >"$dir/env"
  export SLURM_CONF=$dir/slurm.conf
  slurmctld -f "$SLURM_CONF"
  wait_for 20 slurmctld scontrol ping
  slurmd -f "$SLURM_CONF" -N a2b-n1
  slurmd -f "$SLURM_CONF" -N a2b-n2
  wait_for 30 "both nodes" bash -c '[ "$(sinfo -h -N -o "%T" | grep -c idle)" = 2 ]'
}

stop() {
  local dir=$1 pidfile pid jobs
  # Jobs first: a job's slurmstepd outlives its slurmd, so cancel every job and let the steps end.
  if [ -f "$dir/slurm.conf" ] && [ -f "$dir/slurmctld.pid" ] && kill -0 "$(cat "$dir/slurmctld.pid")" 2>/dev/null; then
    export SLURM_CONF=$dir/slurm.conf
    jobs=$(squeue -h -o %A 2>/dev/null || true)
    if [ -n "$jobs" ]; then
      scancel --full $jobs 2>/dev/null || true
      wait_for 40 "job cleanup" bash -c '[ -z "$(squeue -h -o %A)" ]' || true
    fi
  fi
  for pidfile in "$dir"/slurmd-*.pid "$dir"/slurmctld.pid "$dir"/munge/munged.pid; do
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null || continue
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
  done
}

case "${1:-}" in
  start) start "${2:?DIR}" "${3:-1}" ;;
  stop) stop "${2:?DIR}" ;;
  install) install ;;
  *) echo "usage: $0 start DIR [CPUS_PER_NODE] | stop DIR | install" >&2; exit 2 ;;
esac
