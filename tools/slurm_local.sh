#!/usr/bin/env bash
# A one-node Slurm (munge + slurmctld + slurmd) in a folder of its own, for the tests and for trying a sweep:
#   tools/slurm_local.sh start DIR    # installs slurm-wlm + munge when missing (needs root and apt-get),
#                                     # writes DIR/slurm.conf, starts the daemons; prints `export SLURM_CONF=...`
#   export SLURM_CONF=DIR/slurm.conf  # then sbatch/squeue/scontrol and `hydra/launcher=slurm` use it
#   tools/slurm_local.sh stop DIR     # cancels its jobs, stops exactly the daemons whose pid files are in DIR
# The node is this machine (address 127.0.0.1, CPUs and memory as found), reached on two free ports chosen at
# start; its own random munge key authenticates every message (Slurm 22.05 has no listen-address option).
# No cgroups (proctrack/linuxproc, task/none) and no accounting database: `sacct` answers "accounting storage
# is disabled", so dsaml's sweep launcher reads job states from `squeue` (src/hydra_plugins/dsaml_launchers/);
# finished jobs are written to DIR/jobcomp.txt (jobcomp/filetxt) and stay visible to squeue for MinJobAge=3600 s.
# Exit codes: 0 started/stopped, 3 Slurm cannot be provided here (one line on stderr says why).
set -euo pipefail
usage="usage: tools/slurm_local.sh start|stop DIR"
action=${1:?$usage}
dir=${2:?$usage}

unavailable() { echo "Slurm unavailable: $*" >&2; exit 3; }

install_slurm() {
  local need=()
  for tool in munged slurmctld slurmd sbatch; do command -v "$tool" >/dev/null 2>&1 || need+=("$tool"); done
  [ ${#need[@]} -eq 0 ] && return 0
  [ "$(id -u)" = 0 ] || unavailable "${need[*]} missing and not root (apt-get install slurmctld slurmd slurm-client munge)"
  command -v apt-get >/dev/null 2>&1 || unavailable "${need[*]} missing and no apt-get"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      slurmctld slurmd slurm-client munge >/dev/null; } 2>/dev/null \
    || unavailable "apt-get could not install slurmctld slurmd slurm-client munge (no registry?)"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_for() {  # wait_for SECONDS COMMAND...: until COMMAND succeeds
  local seconds=$1; shift
  for _ in $(seq "$((seconds * 5))"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  return 1
}

start() {
  [ "$(id -u)" = 0 ] || unavailable "the daemons run as root here (slurmd starts jobs as their user); not root"
  install_slurm
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  if alive "$dir/slurmctld.pid" || alive "$dir/slurmd.pid"; then
    echo "Slurm already running in $dir" >&2; echo "export SLURM_CONF=$dir/slurm.conf"; return 0
  fi
  chmod 700 "$dir"
  mkdir -p "$dir/state" "$dir/spool" "$dir/munge"
  chmod 700 "$dir/munge"
  [ -f "$dir/munge/munge.key" ] || { head -c 1024 /dev/urandom > "$dir/munge/munge.key"; chmod 400 "$dir/munge/munge.key"; }
  local host cpus mem ctld_port slurmd_port
  host=$(hostname -s)
  cpus=$(nproc)
  mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 3 / 4 ))  # MB Slurm may hand out
  ctld_port=$(free_port)
  slurmd_port=$(free_port)
  while [ "$slurmd_port" = "$ctld_port" ]; do slurmd_port=$(free_port); done
  cat > "$dir/slurm.conf" <<EOF
# Written by tools/slurm_local.sh: one node ($host = 127.0.0.1) for tests and trial sweeps.
ClusterName=dsamllocal
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.socket
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$dir/jobcomp.txt
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
MinJobAge=3600
KillWait=5
JobRequeue=1
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
  cat > "$dir/cgroup.conf" <<EOF
# Unused (proctrack/linuxproc, task/none): present so that no plugin looks for /etc/slurm/cgroup.conf.
CgroupPlugin=autodetect
EOF
  export SLURM_CONF=$dir/slurm.conf
  munged --force --socket="$dir/munge/munge.socket" --key-file="$dir/munge/munge.key" \
    --pid-file="$dir/munged.pid" --log-file="$dir/munged.log" --seed-file="$dir/munge/munged.seed" \
    || unavailable "munged did not start (see $dir/munged.log)"
  wait_for 10 test -S "$dir/munge/munge.socket" || unavailable "munged did not open its socket (see $dir/munged.log)"
  slurmctld -f "$dir/slurm.conf" || unavailable "slurmctld did not start (see $dir/slurmctld.log)"
  slurmd -f "$dir/slurm.conf" -N "$host" || unavailable "slurmd did not start (see $dir/slurmd.log)"
  wait_for 30 sh -c "sinfo -h -N -o %t | grep -qx idle" \
    || unavailable "the node did not become idle within 30 s (see $dir/slurmctld.log, $dir/slurmd.log)"
  echo "export SLURM_CONF=$dir/slurm.conf"
}

stop() {
  [ -d "$dir" ] || return 0
  dir=$(cd "$dir" && pwd)
  if alive "$dir/slurmctld.pid" && [ -f "$dir/slurm.conf" ]; then  # jobs' processes outlive slurmd
    SLURM_CONF=$dir/slurm.conf scancel --full --quiet --user="$(id -un)" 2>/dev/null || true
    wait_for 15 sh -c "[ -z \"\$(SLURM_CONF=$dir/slurm.conf squeue -h -o %i)\" ]" || true
  fi
  for daemon in slurmd slurmctld munged; do
    local pidfile=$dir/$daemon.pid
    alive "$pidfile" || { rm -f "$pidfile"; continue; }
    local pid
    pid=$(cat "$pidfile")
    kill "$pid"
    wait_for 15 sh -c "! kill -0 $pid" || kill -9 "$pid" 2>/dev/null || true
    rm -f "$pidfile"
  done
}

case "$action" in
  start) start ;;
  stop) stop ;;
  *) echo "$usage" >&2; exit 2 ;;
esac
