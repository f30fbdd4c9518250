#!/usr/bin/env bash
# lowsched as the node agent under Slurm (issue 12), on this host's hybrid cgroups: the
# distribution's Slurm (single node, proctrack/cgroup + task/cgroup, cgroup/v1 plugin), real
# memcached protected by lowsched, and sbatch'd stress-ng jobs with a fixed amount of work that
# take every core. Checks, in order:
#   1. lowsched finds the Slurm job (origin slurm) within a few seconds of its start;
#   2. lowsched's record shows the job found on its whole allocation and narrowed off the
#      service's core; if the controller shares that core while memcached is idle, a load step
#      takes it away again, else the job never has it under load (see the section's note);
#      never a core outside Slurm's allocation;
#   3. under a forced breach (a daemon restarted with a 1 us SLO: the service takes every
#      core) the job is frozen, squeue shows SUSPENDED, the node is drained with lowsched's
#      reason, and a new Slurm job stays pending because of the drain;
#   4. with a normal SLO again the job is RUNNING, the node resumed, the pending job starts,
#      both finish their work (their output says so) and Slurm's record shows the suspension;
#   5. lowsched's own jobs run beside Slurm's and succeed;
#   6. nothing is left behind (Slurm's and lowsched's cgroups, the drain, processes).
# Prints each check; exits 1 on any failure, 77 only if it cannot run at all.
set -uo pipefail
cd "$(dirname "$0")/../.."
say() { echo "60-slurm: $*"; }
[ "$(id -u)" -eq 0 ] || { say "needs root"; exit 77; }

# --- packages (idempotent) ------------------------------------------------------------------
missing=()
for p in slurm-wlm munge stress-ng memcached; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; } \
        || { say "cannot install ${missing[*]}"; exit 77; }
fi
cargo build --locked -q --bins || { say "FAILED: cargo build"; exit 1; }
bin=$PWD/target/debug/lowsched

# shellcheck source=tests/slurm/lib.sh
. tests/slurm/lib.sh

run=$(mktemp -d /tmp/lowsched-stage60.XXXXXX)
chmod 0755 "$run"
cg_root=lowsched-test-slurm-$$
daemon="" mc_pid="" loadgen=""
failures=0
ok() { say "ok: $*"; }
bad() { say "FAILED: $*"; failures=$((failures + 1)); }

stop_daemon() {
    [ -n "$daemon" ] || return 0
    kill -TERM "$daemon" 2>/dev/null
    wait "$daemon" 2>/dev/null
    daemon=""
}
cleanup() {
    [ -n "$loadgen" ] && kill -TERM "$loadgen" 2>/dev/null && wait "$loadgen" 2>/dev/null
    stop_daemon
    [ -n "$mc_pid" ] && kill -TERM "$mc_pid" 2>/dev/null
    slurm_stop
    remove_cg_root
    rm -rf -- "$run"
}
# lowsched's cgroup root stays after its daemon stops (the next one reuses it): the test
# removes it, which only works if no job group is left in it.
remove_cg_root() {
    local h
    for h in /sys/fs/cgroup/unified /sys/fs/cgroup/cpuset /sys/fs/cgroup/freezer; do
        [ -d "$h/$cg_root" ] && find "$h/$cg_root" -depth -type d -exec rmdir {} \; 2>/dev/null
    done
    return 0
}
trap cleanup EXIT

# --- memcached, Slurm -----------------------------------------------------------------------
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
memcached -u root -l 127.0.0.1 -p "$port" -t 1 -m 64 -P "$run/memcached.pid" -d
for _ in $(seq 50); do [ -s "$run/memcached.pid" ] && break; sleep 0.1; done
mc_pid=$(cat "$run/memcached.pid" 2>/dev/null) || { say "FAILED: memcached did not start"; exit 1; }
slurm_start 1 || { say "FAILED: Slurm did not start"; exit 1; }
node=${SLURM_NODE_NAMES[0]}
ncpus=$(slurm_host_ncpus)

# The daemon, protecting memcached, with Slurm's jobs as batch. $1: the SLO's p95 in µs; $2:
# the service's most cores (1 keeps a batch core whatever the host's noise does to latency;
# all of them lets a breach take every core from batch).
start_daemon() {
    cat >"$run/lowsched.toml" <<EOF
socket = "$run/lowsched.sock"
state_dir = "$run/state"
cgroup_root = "$cg_root"
[service]
enabled = "yes"
pid_file = "$run/memcached.pid"
address = "127.0.0.1:$port"
max_cores = $2
resume_latency_us = -1
[slo]
p95_us = $1
[slurm]
enabled = "yes"
node_name = "$node"
poll_ms = 500
drain_hold_s = 2.0
EOF
    "$bin" daemon --config "$run/lowsched.toml" >>"$run/daemon.log" 2>&1 &
    daemon=$!
    for _ in $(seq 100); do "$bin" --socket "$run/lowsched.sock" status >/dev/null 2>&1 && return 0; sleep 0.1; done
    say "FAILED: the daemon did not answer"; tail -n 20 "$run/daemon.log"; exit 1
}
ls_() { "$bin" --socket "$run/lowsched.sock" "$@"; }
# Waits up to $1 seconds for the command after it to succeed.
wait_for() {
    local secs=$1 i; shift
    for i in $(seq $((secs * 10))); do "$@" && return 0; sleep 0.1; done
    return 1
}
job_cpus() { cat "/sys/fs/cgroup/cpuset/slurm_$node/uid_0/job_$1/cpuset.cpus" 2>/dev/null; }
step_cpus() { cat "/sys/fs/cgroup/cpuset/slurm_$node/uid_0/job_$1/step_batch/cpuset.cpus" 2>/dev/null; }
freezer() { cat "/sys/fs/cgroup/freezer/slurm_$node/uid_0/job_$1/step_batch/freezer.state" 2>/dev/null; }
in_status() { ls_ status | grep -q "slurm:$1 "; }
status_of() { ls_ status | awk -v id="slurm:$1" '$1 == id { print $3 }'; }

# --- 1. a Slurm job that takes every core ----------------------------------------------------
mkdir -p "$run/out"
cat >"$run/job.sh" <<'EOF'
#!/bin/sh
echo "cpus at start: $(grep Cpus_allowed_list /proc/self/status | cut -f2)"
exec stress-ng --cpu "$SLURM_NTASKS" --cpu-method matrixprod --cpu-ops "$WORK" --metrics-brief
EOF
chmod +x "$run/job.sh"
start_daemon 800 1
job_a=$(WORK=20000 sbatch --parsable -n "$ncpus" -o "$run/out/a.txt" --export=ALL "$run/job.sh") \
    || { say "FAILED: sbatch"; exit 1; }
has_group() { [ -n "$(step_cpus "$job_a")" ]; }
wait_for 30 has_group || bad "Slurm job $job_a has no cgroup: $(squeue -h -j "$job_a" -o '%T %r')"
t0=$(date +%s%N)
alloc=$(scontrol show job -d "$job_a" | sed -n "s/.* Nodes=$node CPU_IDs=\([^ ]*\) .*/\1/p")
if wait_for 10 in_status "$job_a"; then
    ok "lowsched lists Slurm job $job_a as slurm:$job_a $(( ($(date +%s%N) - t0) / 1000000 )) ms after its cgroup appeared (allocation [$alloc]): $(ls_ status | grep "slurm:$job_a ")"
else
    bad "lowsched does not list slurm:$job_a"; ls_ status
fi
# lowsched's own jobs, beside Slurm's.
own=$(ls_ submit --name own-a -- stress-ng --cpu 1 --cpu-method fft --cpu-ops 1500)

# --- 2. load step -------------------------------------------------------------------------
# Before and after. The controller starts on its top rung (the service alone on its core:
# safe until readings say otherwise), so lowsched narrows the job off the service's core as
# soon as it finds it: its own record (events.log) shows the job found on Slurm's whole
# allocation and narrowed. The job gets that core back only if the controller steps down to
# the shared rung, which needs the recent and the window p95 under a quarter of the SLO
# (200 us) for hold_down_ms. On this shared host that was never seen (runs of 2026-12-07: no
# rung change in events.log, also with a 5 ms SLO). A daemon with record_turns, memcached
# idle and no Slurm job at all showed why: the service's core 100% busy with other users'
# builds (service_core_util 1.0, load 8) and the probe's p95 2-5 ms. So: if the job holds
# its whole allocation for 3 s
# within 10 s, the load step must take the service's core from it (a real before/after);
# otherwise the stage says so and checks the nearest honest thing, that the job never has
# the service's core while the load runs.
full() { [ "$(job_cpus "$job_a")" = "$alloc" ] && [ "$(step_cpus "$job_a")" = "$alloc" ]; }
held_idle() { local i; for i in $(seq 30); do full || return 1; sleep 0.1; done; }
narrowed() { local c; c=$(job_cpus "$job_a"); [ -n "$c" ] && [ "$c" != "$alloc" ] && [ "$(step_cpus "$job_a")" = "$c" ]; }
found_on=$(grep -a " start slurm:$job_a " "$run/state/events.log" | head -n1 | awk '{ print $4 }')
first_cut=$(grep -a " update_cores slurm:$job_a " "$run/state/events.log" | head -n1 | awk '{ print $4 }')
svc_core=$(grep -ao 'memcached pid [0-9]* on \[[^]]*\]' "$run/daemon.log" | tail -n 1 | sed 's/.*\[\([0-9]*\).*/\1/')
if [ -n "$found_on" ] && [ -n "$first_cut" ] && [ "$found_on" != "$first_cut" ]; then
    ok "before/after in lowsched's record: slurm:$job_a found on $found_on (Slurm's allocation [$alloc]), narrowed to $first_cut off the service's core $svc_core (events.log)"
else
    bad "events.log does not show slurm:$job_a found on its allocation and narrowed: start '$found_on', first update_cores '$first_cut'"
fi
before_ok=0
wait_for 10 full && held_idle && before_ok=1
events_before=$(wc -l <"$run/state/events.log")
"$bin" loadgen --server "127.0.0.1:$port" --qps 10000 --duration 8 --cpu $((ncpus - 1)) >"$run/loadgen.txt" 2>&1 &
loadgen=$!
t_load=$(date +%s%N)
if [ $before_ok = 1 ]; then
    ok "before the load (memcached idle, the controller on its shared rung): job $job_a holds its whole allocation [$alloc] (job_$job_a and step_batch) for 3 s"
    if wait_for 20 narrowed; then
        c=$(job_cpus "$job_a")
        ms=$(( ($(date +%s%N) - t_load) / 1000000 ))
        climb=$(tail -n +"$((events_before + 1))" "$run/state/events.log" | grep -m1 -o '\(grow\|undo\) rung [0-9]*->[0-9]*: .*' | cut -c1-160)
        ok "after: under load (loadgen 10k QPS) job $job_a narrowed from [$alloc] to [$c] ${ms} ms after the load started; the climb: ${climb:-none in events.log}"
    else
        bad "load step: job $job_a's cpuset stayed [$(job_cpus "$job_a")] (step_batch [$(step_cpus "$job_a")])"
    fi
else
    say "note: the controller stayed on its top rung with memcached idle (no step down within 10 s; events.log: $(grep -c 'rung' "$run/state/events.log") rung changes), so the job never had the service's core back and the load step cannot take it: checking that it never has it under load"
    had_core=0
    while kill -0 "$loadgen" 2>/dev/null; do
        c=$(job_cpus "$job_a")
        [ -n "$c" ] && [ "$c" != "${c#*"$svc_core"}" ] && [ "$c" = "$alloc" ] && had_core=1
        sleep 0.1
    done
    [ $had_core = 0 ] && ok "under load (loadgen 10k QPS, 8 s) job $job_a never had the service's core $svc_core: [$(job_cpus "$job_a")] of [$alloc]" \
        || bad "under load job $job_a had its whole allocation [$alloc] with the service on $svc_core"
fi
c=$(job_cpus "$job_a")
grep -q "^$c" <<<"$(python3 -c "
a=set(); c=set()
def parse(s, out):
    for part in s.split(','):
        lo, _, hi = part.partition('-'); out.update(range(int(lo), int(hi or lo) + 1))
parse('$alloc', a); parse('$c', c); print('$c' if c <= a else 'outside')")" \
    && ok "its cores [$c] stay inside Slurm's allocation [$alloc]" || bad "cores [$c] outside [$alloc]"
wait "$loadgen" 2>/dev/null; loadgen=""

# --- 3. forced breach ---------------------------------------------------------------------
stop_daemon
start_daemon 1 "$ncpus"
is_frozen() { [ "$(freezer "$job_a")" = FROZEN ]; }
if wait_for 20 is_frozen; then
    ok "breach: job $job_a frozen (freezer.state FROZEN); lowsched status: $(status_of "$job_a")"
else
    bad "breach: job $job_a not frozen (freezer.state $(freezer "$job_a"))"
fi
ps_states=$(ps -o stat= -p "$(paste -sd, "/sys/fs/cgroup/freezer/slurm_$node/uid_0/job_$job_a/step_batch/cgroup.procs")" 2>/dev/null | cut -c1 | sort -u | tr -d '\n')
[ "$ps_states" = D ] && ok "every process of the job is frozen (ps state D)" || bad "job processes in states '$ps_states'"
if slurm_wait_state "$job_a" SUSPENDED 15; then
    ok "squeue shows job $job_a SUSPENDED"
else
    bad "squeue shows job $job_a $(slurm_job_state "$job_a"), not SUSPENDED"
fi
drained() { [[ "$(slurm_node_state "$node")" =~ ^drain.*\|lowsched: ]]; }
if wait_for 15 drained; then
    ok "node $node drained: $(slurm_node_state "$node")"
else
    bad "node $node not drained by lowsched: $(slurm_node_state "$node")"
fi
job_b=$(WORK=2000 sbatch --parsable -n "$ncpus" -o "$run/out/b.txt" --export=ALL "$run/job.sh")
own_b=$(ls_ submit --name own-b -- stress-ng --cpu 1 --cpu-method fft --cpu-ops 1500)
sleep 3
reason_b=$(squeue -h -j "$job_b" -o '%T|%r')
[[ "$reason_b" =~ ^PENDING\|.*DRAIN ]] && ok "new Slurm job $job_b held while drained: $reason_b" \
    || bad "new Slurm job $job_b: $reason_b (want PENDING because of the drain)"

# --- 4. back to normal ------------------------------------------------------------------------
stop_daemon
start_daemon 800 1
slurm_wait_state "$job_a" RUNNING 30 && [ "$(freezer "$job_a")" = THAWED ] \
    && ok "job $job_a RUNNING and thawed again" || bad "job $job_a: $(slurm_job_state "$job_a"), freezer $(freezer "$job_a")"
not_drained() { ! [[ "$(slurm_node_state "$node")" =~ ^drain ]]; }
wait_for 30 not_drained \
    && ok "node $node resumed: $(slurm_node_state "$node")" || bad "node still $(slurm_node_state "$node")"
timeout 300 "$bin" --socket "$run/lowsched.sock" wait "$own" >/dev/null && ok "lowsched's own job $own succeeded beside Slurm's" || bad "own job $own: $(ls_ status "$own")"
timeout 300 "$bin" --socket "$run/lowsched.sock" wait "$own_b" >/dev/null && ok "lowsched's own job $own_b succeeded" || bad "own job $own_b: $(ls_ status "$own_b")"
gone() { [ -z "$(slurm_job_state "$1")" ]; }
for j in "$job_a" "$job_b"; do
    wait_for 300 gone "$j" || bad "Slurm job $j did not finish"
done
for j in a b; do
    grep -q "successful run completed" "$run/out/$j.txt" \
        && ok "Slurm job $j finished its work: $(grep -o 'successful run completed.*' "$run/out/$j.txt")" \
        || { bad "Slurm job $j output:"; cat "$run/out/$j.txt"; }
done
recorded_ok() { [ "$(ls_ status | awk -v id="slurm:$1" '$1 == id { print $3 }')" = succeeded ]; }
for j in "$job_a" "$job_b"; do
    wait_for 15 recorded_ok "$j" && ok "lowsched records slurm:$j as succeeded (Slurm's record: $(slurm_job_field "$j" JobState) $(slurm_job_field "$j" ExitCode))" \
        || bad "lowsched records slurm:$j as '$(ls_ status | awk -v id="slurm:$j" '$1 == id { print $3 }')'"
done
start=$(slurm_job_field "$job_a" StartTime); end=$(slurm_job_field "$job_a" EndTime)
runtime=$(slurm_job_field "$job_a" RunTime); susp=$(slurm_job_field "$job_a" SuspendTime)
wall=$(( $(date -d "$end" +%s) - $(date -d "$start" +%s) ))
rt=$(awk -F: '{ print $1 * 3600 + $2 * 60 + $3 }' <<<"${runtime##*-}")
if [ "$susp" != None ] && [ "$rt" -lt "$wall" ]; then
    ok "Slurm's record of $job_a: SuspendTime=$susp, RunTime=$runtime of ${wall}s wall (suspended time not charged)"
else
    bad "Slurm's record of $job_a: SuspendTime=$susp RunTime=$runtime wall ${wall}s"
fi
grep -q "slurm:$job_a" "$run/state/events.log" && ok "events.log has slurm:$job_a: $(grep -c "slurm:$job_a" "$run/state/events.log") lines" \
    || bad "events.log lacks slurm:$job_a"

# --- 6. nothing left behind -------------------------------------------------------------------
stop_daemon
[[ "$(slurm_node_state "$node")" =~ ^drain ]] && bad "node left drained" || ok "node not drained after the daemon stopped"
slurm_stop

# --- 7. two nodes on this host (multiple-slurmd): a drained node's new jobs go to the other ---
if slurm_start 2; then
    node=n1
    rm -rf -- "$run/state"
    start_daemon 1 "$ncpus"
    if wait_for 20 drained; then
        ok "two nodes: lowsched (node_name n1) drained n1: $(slurm_node_state n1)"
        ids=()
        for i in 1 2; do ids+=("$(WORK=500 sbatch --parsable -n 1 -o "$run/out/two-$i.txt" --export=ALL "$run/job.sh")"); done
        for j in "${ids[@]}"; do wait_for 60 gone "$j"; done
        where=$(for j in "${ids[@]}"; do slurm_job_field "$j" NodeList; done | sort -u | tr '\n' ' ')
        [ "$where" = "n2 " ] && ok "two nodes: jobs ${ids[*]} submitted while n1 was drained ran on n2" \
            || bad "two nodes: jobs ${ids[*]} ran on '$where'"
    else
        bad "two nodes: n1 not drained: $(slurm_node_state n1)"
    fi
    stop_daemon
    [[ "$(slurm_node_state n1)" =~ ^drain ]] && bad "n1 left drained" || ok "two nodes: n1 resumed when lowsched stopped"
    slurm_stop
else
    bad "two nodes: multiple-slurmd did not start"
fi
kill -TERM "$mc_pid" 2>/dev/null
mc_gone() { ! kill -0 "$mc_pid" 2>/dev/null; }
wait_for 10 mc_gone && mc_pid=""
remove_cg_root
left=$(find /sys/fs/cgroup/cpuset /sys/fs/cgroup/freezer -maxdepth 1 -name 'slurm*' 2>/dev/null
    find /sys/fs/cgroup/unified /sys/fs/cgroup/cpuset /sys/fs/cgroup/freezer -maxdepth 1 -name "$cg_root" 2>/dev/null)
[ -z "$left" ] && ok "no Slurm cgroups and no lowsched groups left" || bad "left behind: $left"
none_left() { ! pgrep -f "$run" >/dev/null; }
wait_for 10 none_left && ok "no process of the test left" || bad "processes left: $(pgrep -af "$run")"
if [ "$failures" -eq 0 ]; then say "passed"; exit 0; fi
say "$failures check(s) failed; daemon log:"; tail -n 40 "$run/daemon.log"
exit 1
