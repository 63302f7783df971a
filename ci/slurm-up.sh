#!/usr/bin/env bash
# Start a one-node SLURM cluster on this machine (Debian 12, as root, no systemd needed):
# munged, slurmctld and slurmd, with one partition named like the placeholder in
# profiles/slurm/config.yaml, so `snakemake --profile profiles/slurm` needs no override.
# Recipe and its traps: docs/slurm.md. Stop everything with ci/slurm-down.sh.
#
# Idempotent-ish: packages are installed only when missing, a daemon whose PID file points to
# a live process is left running, and the node is waited for until it is idle.
#
# Environment:
#   SLURM_PARTITION    partition name (default: debug, the profile's placeholder)
#   SLURM_REAL_MEMORY  memory of the node in MB (default: 80% of what `slurmd -C` reports)
#   SLURM_GPUS         GPUs the node declares (default: 4). They are bookkeeping only (gres without
#                      device files): sbatch --gpus=N is accepted and counted, no GPU is needed.
set -euo pipefail

PARTITION=${SLURM_PARTITION:-debug}
GPUS=${SLURM_GPUS:-4}

if [ "$(id -u)" -ne 0 ]; then
    echo "ci/slurm-up.sh: must run as root (it installs packages and starts daemons); run it with sudo" >&2
    exit 1
fi

alive() { # alive PIDFILE: the PID file exists and its process runs
    [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

# 1. Packages (6 .debs, about 3 MB). Package scripts cannot start daemons here; we do it below.
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sinfo >/dev/null ||
    ! command -v munged >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update >/dev/null
    apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
fi

# 2. munge (authentication between the SLURM daemons and commands).
[ -s /etc/munge/munge.key ] || runuser -u munge -- mungekey --create
install -d -o munge -g munge -m 0755 /run/munge
if ! alive /run/munge/munged.pid; then
    rm -f /run/munge/munged.pid
    runuser -u munge -- /usr/sbin/munged # daemonizes; PID in /run/munge/munged.pid
fi
munge -n | unmunge >/dev/null

# 3. slurm.conf: one node called localhost (slurmd -N localhost), whatever the hostname is.
install -d -o slurm -g slurm /var/spool/slurmctld /var/log/slurm
install -d /var/spool/slurmd
if [ -n "${SLURM_REAL_MEMORY:-}" ]; then
    real_memory=$SLURM_REAL_MEMORY
else
    # RealMemory above what slurmd detects drains the node; keep a margin for the OS.
    detected=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
    real_memory=$((detected * 8 / 10))
fi
# GPUs for bookkeeping: slurmd wants a character device per GPU; each is a copy of /dev/null.
gres_types="" node_gres=""
if [ "$GPUS" -gt 0 ]; then
    for i in $(seq 0 $((GPUS - 1))); do
        f=/var/spool/slurmd/fake-gpu$i
        [ -c "$f" ] || { rm -f "$f"; mknod "$f" c 1 3; } || { GPUS=0; break; }
    done
fi
if [ "$GPUS" -gt 0 ]; then
    gres_types="GresTypes=gpu"
    node_gres="Gres=gpu:$GPUS"
    echo "NodeName=localhost Name=gpu File=/var/spool/slurmd/fake-gpu[0-$((GPUS - 1))]" >/etc/slurm/gres.conf
else
    echo "ci/slurm-up.sh: no GPUs declared (SLURM_GPUS=0 or mknod failed)" >&2
    rm -f /etc/slurm/gres.conf
fi
# the machine's cores; not `nproc`, which obeys OMP_NUM_THREADS (CI may set it to 1)
cpus=$(getconf _NPROCESSORS_ONLN)
cat >/etc/slurm/slurm.conf <<EOF
# Written by ci/slurm-up.sh: a one-node cluster on localhost for testing (docs/slurm.md).
ClusterName=localcluster
SlurmctldHost=localhost
SlurmUser=slurm
AuthType=auth/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=500
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
# No slurmdbd: sacct does not work, so Snakemake must poll with squeue, which sees finished
# jobs for MinJobAge seconds (keep it >= 3 x --slurm-init-seconds-before-status-checks).
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=300
$gres_types
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$real_memory $node_gres State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF

# 4. Controller and node daemons (both daemonize and write their PID files).
if ! alive /run/slurmctld.pid; then
    rm -f /run/slurmctld.pid
    slurmctld
fi
if ! alive /run/slurmd.pid; then
    rm -f /run/slurmd.pid
    slurmd -N localhost
fi

state=""
for _ in $(seq 1 60); do
    state=$(sinfo -h -n localhost -o %T 2>/dev/null || true)
    [ "$state" = idle ] && break
    # a drain recorded by an earlier configuration (saved state) is stale: resume the node
    case "$state" in drained | draining | drain) scontrol update NodeName=localhost State=RESUME || true ;; esac
    sleep 0.5
done
if [ "$state" != idle ]; then
    echo "ci/slurm-up.sh: node 'localhost' is '${state:-unreachable}' instead of idle after 30 s;" \
        "see /var/log/slurm/slurmctld.log and /var/log/slurm/slurmd.log" >&2
    tail -n 5 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
    exit 1
fi
sinfo
