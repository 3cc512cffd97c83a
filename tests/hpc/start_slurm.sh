#!/usr/bin/env bash
# Start (or stop) a single-node SLURM cluster on localhost for tests: munged, slurmctld, slurmd.
#
#   tests/hpc/start_slurm.sh [--install] [start|stop|status]
#
# --install: apt-get install slurm-wlm and munge from Debian first (needs root).
# No accounting database (no slurmdbd): submit with --slurm-no-account and query with squeue.
# No cgroups (containers, gVisor): processes tracked by process group, no task affinity.
# The config goes to /etc/slurm/slurm.conf only when there is none or it is ours (marker line);
# on a machine with a real SLURM configuration this script refuses to touch it. `stop` removes
# it again: with a config whose controller is down, every SLURM client call waits ~9 s, and the
# SLURM executor plugin runs `scontrol show config` at each Snakemake start, local runs included.
# ECAFM_SLURM_CONF moves the config (tests of this script); the daemons then read it via SLURM_CONF.
set -euo pipefail

MARKER="# ecafm test cluster (tests/hpc/start_slurm.sh)"
CONF=${ECAFM_SLURM_CONF:-/etc/slurm/slurm.conf}
if [ -n "${ECAFM_SLURM_CONF:-}" ]; then export SLURM_CONF=$CONF; fi
STATE=${ECAFM_SLURM_STATE:-/var/lib/ecafm-slurm}
LOGS=${ECAFM_SLURM_LOGS:-/var/log/ecafm-slurm}

install=0
action=start
for arg in "$@"; do
    case $arg in
        --install) install=1 ;;
        start | stop | status) action=$arg ;;
        *) echo "usage: $0 [--install] [start|stop|status]" >&2; exit 2 ;;
    esac
done

die() { echo "start_slurm: $*" >&2; exit 1; }

stop() {
    # Daemons of this script only (by their pid files); wait until they are gone, so that a new
    # slurmctld can bind its port.
    for d in slurmd slurmctld; do
        [ -f "$STATE/$d.pid" ] || continue
        pid=$(cat "$STATE/$d.pid")
        if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$d" ]; then
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
            kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
        fi
        rm -f "$STATE/$d.pid"
    done
}

remove_conf() {
    # Only a config this script wrote (marker line); a real SLURM configuration stays.
    if [ -f "$CONF" ] && grep -qF "$MARKER" "$CONF"; then rm -f "$CONF"; fi
}

if [ "$action" = stop ]; then stop; remove_conf; exit 0; fi
if [ "$action" = status ]; then sinfo -h -o "%P %a %D %t %c %m"; exit 0; fi

[ "$(id -u)" = 0 ] || die "needs root (starts munged, slurmctld and slurmd)"

if [ "$install" = 1 ] && ! command -v slurmctld >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null || die "apt-get install slurm-wlm munge failed"
fi
for exe in munged slurmctld slurmd sinfo sbatch squeue; do
    command -v "$exe" >/dev/null || die "$exe not found (install slurm-wlm and munge, or pass --install)"
done

if [ -f "$CONF" ] && ! grep -qF "$MARKER" "$CONF"; then
    die "$CONF exists and is not ours: refusing to replace a real SLURM configuration"
fi

# -- munge: authentication between SLURM daemons and clients
mkdir -p /run/munge /var/log/munge /var/lib/munge /etc/munge
if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown -R munge:munge /run/munge /var/log/munge /var/lib/munge /etc/munge
chmod 0700 /etc/munge /var/lib/munge /var/log/munge
chmod 0755 /run/munge
chmod 0400 /etc/munge/munge.key
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    runuser -u munge -- munged --force || die "munged did not start (see /var/log/munge/munged.log)"
    for _ in $(seq 20); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.5; done
    munge -n | unmunge >/dev/null || die "munge round trip fails"
fi

# -- slurm.conf: one node, one partition, no accounting, no cgroups
cpus=$(nproc)
mem_mb=$(awk '/MemTotal/ {print int($2 / 1024 * 0.85)}' /proc/meminfo)
mkdir -p "$(dirname "$CONF")" "$STATE/ctld" "$STATE/d" "$LOGS"
cat >"$CONF" <<CONF
$MARKER
ClusterName=ecafm-test
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
ProctrackType=proctrack/pgid
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MinJobAge=600
SlurmdTimeout=60
InactiveLimit=0
KillWait=10
MpiDefault=none
NodeName=localhost NodeHostname=localhost CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF

stop
slurmctld -i || die "slurmctld did not start (see $LOGS/slurmctld.log)"
for _ in $(seq 30); do scontrol ping 2>/dev/null | grep -q "is UP" && break; sleep 0.5; done
scontrol ping | grep -q "is UP" || die "slurmctld does not answer (see $LOGS/slurmctld.log; another slurmctld on port 6817?)"
slurmd -N localhost || die "slurmd did not start (see $LOGS/slurmd.log)"

for _ in $(seq 60); do
    state=$(sinfo -h -n localhost -o %t 2>/dev/null || true)
    case $state in idle | mix | alloc) break ;; esac
    sleep 1
done
case $state in
    idle | mix | alloc) ;;
    *) scontrol update NodeName=localhost State=RESUME 2>/dev/null || true; sleep 2
       state=$(sinfo -h -n localhost -o %t 2>/dev/null || true) ;;
esac
case $state in
    idle | mix | alloc)
       out=$(timeout 60 srun -N1 -n1 -t 1 --mem 100 echo ok 2>&1) || die "node is $state but a test job does not run: $out"
       echo "start_slurm: node localhost is $state ($cpus CPUs, $mem_mb MB); a test job ran" ;;
    *) tail -n 20 "$LOGS/slurmctld.log" "$LOGS/slurmd.log" >&2 || true
       die "node localhost is '${state:-unknown}', not idle" ;;
esac
