# Starts and stops a throw-away Slurm (the distribution's slurm-wlm + munge) on this host, for
# test stages (sourced, not run). Everything Slurm writes lives in a scratch directory; the
# client tools find the config through $SLURM_CONF, which slurm_start exports.
#
#   . tests/slurm/lib.sh
#   slurm_start [NODES]       # 1 (default): one node named `hostname -s`; 2: nodes n1, n2 on
#                             # this host (multiple-slurmd), each with all CPUs
#   sbatch ...; squeue ...    # as usual
#   slurm_stop                # daemons stopped, their cgroups and scratch dir removed
#
# Needs root. Settings follow tests/slurm/README.md: proctrack/cgroup, task/cgroup, CR_Core, and a
# cgroup.conf that constrains cores only (the host's v1 memory hierarchy is never touched).
# shellcheck shell=bash

SLURM_LIB_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SLURM_CTLD_PORT=${SLURM_CTLD_PORT:-6817}
SLURM_SLURMD_PORT=${SLURM_SLURMD_PORT:-6818}
SLURM_DIR=""
SLURM_NODE_NAMES=()
SLURM_PIDS=()
SLURM_OWN_MUNGED=""

slurm_say() { echo "slurm: $*" >&2; }

# The CPU ids of this host, in the kernel's list format, and their count.
slurm_host_cpus() { cat /sys/devices/system/cpu/online; }
slurm_host_ncpus() { nproc --all; }

# Starts munged unless one already answers; remembers whether it is ours.
slurm_start_munge() {
    if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
        return 0
    fi
    if [ ! -s /etc/munge/munge.key ]; then
        install -d -o munge -g munge -m 0700 /etc/munge
        (umask 0377 && dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none)
        chown munge:munge /etc/munge/munge.key
    fi
    install -d -o munge -g munge -m 0711 /run/munge
    install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
    runuser -u munge -- /usr/sbin/munged || { slurm_say "munged did not start"; return 1; }
    SLURM_OWN_MUNGED=$(cat /run/munge/munged.pid 2>/dev/null || true)
    local i
    for i in $(seq 50); do
        munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    slurm_say "munged does not answer"
    return 1
}

# Writes slurm.conf and cgroup.conf for NODES nodes into $SLURM_DIR.
slurm_write_conf() {
    local nodes=$1 host ncpus i
    host=$(hostname -s)
    ncpus=$(slurm_host_ncpus)
    mkdir -p "$SLURM_DIR"/{state,log}
    SLURM_NODE_NAMES=()
    {
        echo "ClusterName=lowsched-test"
        echo "SlurmctldHost=$host"
        echo "SlurmctldPort=$SLURM_CTLD_PORT"
        echo "SlurmdPort=$SLURM_SLURMD_PORT"
        echo "SlurmUser=root"
        echo "AuthType=auth/munge"
        echo "StateSaveLocation=$SLURM_DIR/state"
        echo "SlurmdSpoolDir=$SLURM_DIR/spool-%n"
        echo "SlurmctldPidFile=$SLURM_DIR/slurmctld.pid"
        echo "SlurmdPidFile=$SLURM_DIR/slurmd-%n.pid"
        echo "SlurmctldLogFile=$SLURM_DIR/log/slurmctld.log"
        echo "SlurmdLogFile=$SLURM_DIR/log/slurmd-%n.log"
        echo "ProctrackType=proctrack/cgroup"
        echo "TaskPlugin=task/cgroup,task/affinity"
        echo "SelectType=select/cons_tres"
        echo "SelectTypeParameters=CR_Core"
        echo "JobAcctGatherType=jobacct_gather/none"
        echo "AccountingStorageType=accounting_storage/none"
        echo "SchedulerParameters=batch_sched_delay=0,sched_min_interval=0"
        echo "SchedulerType=sched/backfill"
        echo "ReturnToService=2"
        echo "MpiDefault=none"
        echo "SlurmdTimeout=30"
        echo "InactiveLimit=0"
        echo "KillWait=5"
        echo "MinJobAge=3600"
        if [ "$nodes" -eq 1 ]; then
            SLURM_NODE_NAMES=("$host")
            echo "NodeName=$host CPUs=$ncpus State=UNKNOWN"
        else
            for i in $(seq "$nodes"); do
                SLURM_NODE_NAMES+=("n$i")
                echo "NodeName=n$i NodeHostname=$host NodeAddr=127.0.0.1 Port=$((SLURM_SLURMD_PORT + i)) CPUs=$ncpus State=UNKNOWN"
            done
        fi
        echo "PartitionName=batch Nodes=ALL Default=YES MaxTime=INFINITE State=UP"
    } >"$SLURM_DIR/slurm.conf"
    cat >"$SLURM_DIR/cgroup.conf" <<'EOF'
CgroupPlugin=autodetect
ConstrainCores=yes
ConstrainRAMSpace=no
ConstrainSwapSpace=no
ConstrainDevices=no
EOF
}

# Waits until every node is idle in sinfo (or the timeout, in seconds, passes).
slurm_wait_idle() {
    local timeout=${1:-30} deadline states
    deadline=$(( $(date +%s) + timeout ))
    while [ "$(date +%s)" -lt "$deadline" ]; do
        states=$(sinfo -h -N -o '%t' 2>/dev/null | sort -u | tr '\n' ' ')
        [ "$states" = "idle " ] && return 0
        sleep 0.2
    done
    slurm_say "nodes not idle after ${timeout}s: $(sinfo -h -N -o '%N %t %E' 2>&1 | tr '\n' ';')"
    return 1
}

# Starts munged (if needed), slurmctld and one slurmd per node; waits for idle nodes.
slurm_start() {
    local nodes=${1:-1} n t0
    [ "$(id -u)" -eq 0 ] || { slurm_say "needs root"; return 1; }
    for n in slurmctld slurmd scontrol sbatch squeue sinfo munged; do
        command -v "$n" >/dev/null || { slurm_say "$n not found (apt-get install slurm-wlm munge)"; return 1; }
    done
    t0=$(date +%s%N)
    SLURM_DIR=$(mktemp -d /tmp/lowsched-slurm.XXXXXX)
    chmod 0755 "$SLURM_DIR"
    export SLURM_CONF=$SLURM_DIR/slurm.conf
    slurm_write_conf "$nodes"
    slurm_start_munge || return 1
    slurmctld -D -i -f "$SLURM_CONF" >"$SLURM_DIR/log/slurmctld.out" 2>&1 &
    SLURM_PIDS+=($!)
    for n in "${SLURM_NODE_NAMES[@]}"; do
        if [ "$nodes" -eq 1 ]; then
            slurmd -D -f "$SLURM_CONF" >"$SLURM_DIR/log/slurmd-$n.out" 2>&1 &
        else
            slurmd -D -N "$n" -f "$SLURM_CONF" >"$SLURM_DIR/log/slurmd-$n.out" 2>&1 &
        fi
        SLURM_PIDS+=($!)
    done
    if ! slurm_wait_idle 60; then
        slurm_say "logs: $SLURM_DIR/log"; tail -n 5 "$SLURM_DIR"/log/*.log >&2 || true
        return 1
    fi
    slurm_say "up: nodes ${SLURM_NODE_NAMES[*]} idle after $(( ($(date +%s%N) - t0) / 1000000 )) ms (scratch $SLURM_DIR)"
}

# The v1 groups Slurm made for NODE (cpuset and freezer), deepest first.
slurm_v1_groups() {
    local node=$1 h
    for h in cpuset freezer; do
        [ -d "/sys/fs/cgroup/$h/slurm_$node" ] && find "/sys/fs/cgroup/$h/slurm_$node" -depth -type d
        [ -d "/sys/fs/cgroup/$h/slurm" ] && find "/sys/fs/cgroup/$h/slurm" -depth -type d
    done
    return 0
}

# Cancels every job, stops the daemons, removes Slurm's cgroups and the scratch dir; stops
# munged only if slurm_start started it. Safe to call twice.
slurm_stop() {
    local p n g i
    if [ -n "$SLURM_DIR" ] && [ -n "${SLURM_CONF:-}" ]; then
        scancel --full --quiet --user=root 2>/dev/null || true
        for i in $(seq 50); do
            [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break
            sleep 0.2
        done
    fi
    for p in "${SLURM_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${SLURM_PIDS[@]}"; do
        for i in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    SLURM_PIDS=()
    # slurmstepds outlive slurmd by design; kill the ones of our jobs if any are left.
    for p in $(pgrep -x slurmstepd || true); do
        grep -q "$SLURM_DIR" "/proc/$p/cmdline" 2>/dev/null && kill -KILL "$p" 2>/dev/null
    done
    for n in "${SLURM_NODE_NAMES[@]}"; do
        for i in $(seq 50); do
            for g in $(slurm_v1_groups "$n"); do rmdir "$g" 2>/dev/null || true; done
            [ -z "$(slurm_v1_groups "$n")" ] && break
            sleep 0.1
        done
        [ -z "$(slurm_v1_groups "$n")" ] || slurm_say "left behind: $(slurm_v1_groups "$n" | tr '\n' ' ')"
    done
    if [ -n "$SLURM_OWN_MUNGED" ]; then
        kill -TERM "$SLURM_OWN_MUNGED" 2>/dev/null || true
        for i in $(seq 50); do kill -0 "$SLURM_OWN_MUNGED" 2>/dev/null || break; sleep 0.1; done
        SLURM_OWN_MUNGED=""
    fi
    if [ -n "$SLURM_DIR" ] && [ -z "${SLURM_KEEP_DIR:-}" ]; then
        rm -rf -- "$SLURM_DIR"
    fi
    SLURM_DIR=""
}

# The value of FIELD in `scontrol show job -o JOB` (empty if absent).
slurm_job_field() {
    scontrol show job -o "$1" 2>/dev/null | tr ' ' '\n' | sed -n "s/^$2=//p" | head -n1
}

# The job's state as squeue prints it (RUNNING, SUSPENDED, PENDING, ...; empty once gone).
slurm_job_state() { squeue -h -j "$1" -o %T 2>/dev/null; }

# Waits until JOB's squeue state is STATE (timeout seconds, default 30).
slurm_wait_state() {
    local job=$1 want=$2 timeout=${3:-30} deadline
    deadline=$(( $(date +%s) + timeout ))
    while [ "$(date +%s)" -lt "$deadline" ]; do
        [ "$(slurm_job_state "$job")" = "$want" ] && return 0
        sleep 0.1
    done
    return 1
}

# The node's state and reason: "STATE|REASON".
slurm_node_state() {
    sinfo -h -N -n "$1" -o '%T|%E' 2>/dev/null | head -n1
}
