#!/usr/bin/env bash
# Stop the cluster of tests/slurm/start-cluster.sh: kill its daemons by their recorded PIDs
# and remove their pid files. Jobs still running are killed with slurmd.
set -euo pipefail

STATE=${SLABBENCH_SLURM_STATE:-/tmp/slabbench-slurm}
[ -s "$STATE/pids" ] || { echo "stop-cluster: nothing recorded in $STATE/pids"; exit 0; }

export SLURM_CONF=/etc/slurm/slurm.conf
scancel --user="$(id -un)" 2>/dev/null || true
# reverse start order: slurmd, slurmctld, munged
tac "$STATE/pids" | while read -r name pid; do
    kill "$pid" 2>/dev/null || continue
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
        echo "stop-cluster: $name (pid $pid) ignored SIGTERM for 10 s; sending SIGKILL" >&2
        kill -9 "$pid" 2>/dev/null || true
    fi
done
rm -f "$STATE/pids" "$STATE/slurmctld.pid" "$STATE/slurmd.pid" /run/munge/munged.pid /run/slurmctld.pid /run/slurmd.pid
echo "stop-cluster: stopped"
