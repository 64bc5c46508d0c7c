#!/usr/bin/env bash
# Start a real single-node SLURM cluster on this machine, on loopback, for tests/test_slurm.py.
#
#   sudo tests/slurm/start-cluster.sh     # prints the SLURM_CONF to export, waits for an idle node
#   sudo tests/slurm/stop-cluster.sh
#
# Needs root and Debian/Ubuntu (installs munge, slurmctld, slurmd and slurm-client with apt-get
# when missing). Works without systemd: munged, slurmctld and slurmd run in the foreground mode
# in the background, their PIDs recorded in $SLABBENCH_SLURM_STATE (default /tmp/slabbench-slurm).
# No accounting daemon: submit with `--slurm-status-command squeue` (sacct would fail).
# The node is `hostname -s` at 127.0.0.1 with the CPUs slurmd detects and a little less memory
# than it detects; the configuration is /etc/slurm/slurm.conf (client tools read it there),
# written only when absent or written by this script before.
set -euo pipefail

STATE=${SLABBENCH_SLURM_STATE:-/tmp/slabbench-slurm}
CONF=/etc/slurm/slurm.conf
MARK="# written by slabbench tests/slurm/start-cluster.sh"
# completed jobs stay visible to squeue this long (s); the executor's squeue status needs them
# visible for at least three status intervals
MIN_JOB_AGE=${SLABBENCH_SLURM_MIN_JOB_AGE:-300}

die() { echo "start-cluster: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (it installs packages and starts munged, slurmctld and slurmd)"

if [ -s "$STATE/pids" ]; then
    while read -r name pid; do
        kill -0 "$pid" 2>/dev/null || die "$STATE/pids lists $name (pid $pid), which is gone: run tests/slurm/stop-cluster.sh first"
    done < "$STATE/pids"
    echo "start-cluster: already running (pids in $STATE/pids)"
    echo "export SLURM_CONF=$CONF"
    exit 0
fi

missing=()
for bin in munged:munge slurmctld:slurmctld slurmd:slurmd sbatch:slurm-client; do
    command -v "${bin%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${bin%%:*}" ] || missing+=("${bin##*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
    command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get to install them"
    echo "start-cluster: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null || die "apt-get update failed"
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null || die "apt-get install ${missing[*]} failed"
fi

[ -s /etc/munge/munge.key ] || die "/etc/munge/munge.key is missing (the munge package creates it; try: mungekey --create)"
if [ -e "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
    die "$CONF exists and was not written by this script; not touching a real cluster's configuration"
fi

mkdir -p "$STATE/ctld" "$STATE/spool" /run/munge /etc/slurm
chown munge:munge /run/munge
chmod 0755 /run/munge
: > "$STATE/pids"

host=$(hostname -s)
# what slurmd detects: "NodeName=vm CPUs=2 Boards=1 SocketsPerBoard=1 ... RealMemory=24105"
detected=$(/usr/sbin/slurmd -C | head -n 1)
[[ "$detected" == NodeName=* ]] || die "slurmd -C printed no node line: $detected"
real_mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<< "$detected")
[ -n "$real_mem" ] || die "no RealMemory in: $detected"
node_mem=$(( real_mem * 9 / 10 ))
hw=$(tr ' ' '\n' <<< "$detected" | grep -E '^(CPUs|Boards|SocketsPerBoard|CoresPerSocket|ThreadsPerCore)=' | xargs)

cat > "$CONF" <<EOF
$MARK
ClusterName=slabbench
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MailProg=/bin/true
MinJobAge=$MIN_JOB_AGE
KillWait=5
NodeName=$host NodeAddr=127.0.0.1 $hw RealMemory=$node_mem State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF

start() {  # name, command...: run in the background, record the pid
    local name=$1; shift
    "$@" > "$STATE/$name.out" 2>&1 < /dev/null &
    echo "$name $!" >> "$STATE/pids"
}
start munged setpriv --reuid=munge --regid=munge --init-groups /usr/sbin/munged -F
for _ in $(seq 50); do [ -S /run/munge/munge.socket.2 ] && break; sleep 0.1; done
munge -n < /dev/null | unmunge > /dev/null || die "munged does not answer; see $STATE/munged.out"
start slurmctld /usr/sbin/slurmctld -D -f "$CONF"
start slurmd /usr/sbin/slurmd -D -f "$CONF"

export SLURM_CONF=$CONF
state=""
for _ in $(seq 120); do
    state=$(sinfo -h -n "$host" -o %T 2>/dev/null || true)
    [ "$state" = idle ] && break
    while read -r name pid; do
        kill -0 "$pid" 2>/dev/null || die "$name exited; see $STATE/$name.out and $STATE/$name.log"
    done < "$STATE/pids"
    sleep 0.5
done
[ "$state" = idle ] || die "node $host is '${state:-unknown}' after 60 s, not idle; see $STATE/slurmctld.log and $STATE/slurmd.log"
echo "start-cluster: node $host idle ($hw RealMemory=$node_mem)"
echo "export SLURM_CONF=$CONF"
