#!/usr/bin/env bash
# Stop the one-node SLURM cluster started by ci/slurm-up.sh: each daemon by its PID file
# (never by name), waiting up to 10 s for it to exit, and remove the PID file (a stale
# /run/slurmctld.pid breaks `apt-get purge slurmctld`). Safe to run when nothing is running.
set -uo pipefail

stop() { # stop PIDFILE
    local f=$1 p
    [ -s "$f" ] || return 0
    p=$(cat "$f")
    if kill "$p" 2>/dev/null; then
        for _ in $(seq 1 100); do
            kill -0 "$p" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$p" 2>/dev/null; then
            echo "ci/slurm-down.sh: PID $p ($f) still runs after 10 s; sending SIGKILL" >&2
            kill -9 "$p" 2>/dev/null || true
        fi
    fi
    rm -f "$f"
}

stop /run/slurmd.pid
stop /run/slurmctld.pid
stop /run/slurmdbd.pid # only when accounting was set up (docs/slurm.md)
stop /run/mysqld/mysqld.pid
stop /run/munge/munged.pid
