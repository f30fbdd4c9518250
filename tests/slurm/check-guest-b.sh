#!/bin/bash
# Runs as root in QEMU guest B (systemd as PID 1, pure cgroup v2) with slurmd, slurmctld, munge
# and stress-ng in the image and lowsched installed by systemd/install.sh (tests/slurm/guest-b.sh,
# stage 62). Starts Slurm with the cgroup/v2 plugin, runs a stress-ng batch job that takes every
# core, then starts lowsched.service (memcached.service protected, [slurm] enabled = "auto")
# and checks, in order:
#   1. lowsched lists the job as slurm:N;
#   2. the job's cpuset loses the service's core when lowsched places the service (before: the
#      job has it; after: it is gone, the rest stays inside Slurm's allocation);
#   3. a forced breach (lowsched restarted with a 1 us SLO and every core for the service):
#      step_batch/user frozen (cgroup.events frozen 1, no CPU time used), squeue SUSPENDED, the
#      node drained with lowsched's reason;
#   4. the normal SLO again: RUNNING, thawed, the node resumed; the job completes its fixed
#      work; lowsched records it as succeeded; Slurm's record shows the suspension;
#   5. nothing is left behind (job groups, frozen groups, the drain).
# Prints every check; exits 0 only if all passed. Waits are generous (TCG), nothing asserts time.
set -u
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
failed=0 checks=0
t0=$(date +%s)
say() { echo "slurm-guest-b: $*"; }
ok() { checks=$((checks + 1)); say "ok: $1"; }
bad() { checks=$((checks + 1)); failed=$((failed + 1)); say "FAILED: $1"; }
die() { bad "$1"; journalctl --no-pager -b -u slurmd -u slurmctld -u lowsched -n 60; exit 1; }
# eventually SECS WHAT CMD...: CMD must succeed within SECS seconds (tried every 0.5 s).
eventually() {
    local secs=$1 what=$2 t=0; shift 2
    while ! "$@" >/dev/null 2>&1; do
        t=$((t + 1))
        if [ $t -gt $((secs * 2)) ]; then bad "$what (not within ${secs}s)"; return 1; fi
        sleep 0.5
    done
    ok "$what"
}
section() { echo "-- $* ($(( $(date +%s) - t0 )) s)"; }
# Expands a kernel cpu list ("0-2,5") into sorted numbers, one per line.
cpus() {
    local part IFS=,
    for part in $1; do
        case $part in
            *-*) seq "${part%-*}" "${part#*-}" ;;
            "") ;;
            *) echo "$part" ;;
        esac
    done | sort -n | tr '\n' ' '
}
has_cpu() { grep -qw -- "$2" <<<"$(cpus "$1")"; }
subset() {
    local c
    for c in $(cpus "$1"); do has_cpu "$2" "$c" || return 1; done
}
node=$(cut -d. -f1 /proc/sys/kernel/hostname)
toml=/etc/lowsched/lowsched.toml
status_service() { systemctl show -P StatusText lowsched | sed -n 's/.*memcached pid [0-9]* on \[\([^]]*\)\].*/\1/p'; }
status_row() { lowsched status 2>/dev/null | awk -v id="slurm:$1" '$1 == id'; }
status_state() { status_row "$1" | awk '{ print $3 }'; }
job_state() { squeue -h -j "$1" -o %T 2>/dev/null; }
node_state() { sinfo -h -N -n "$node" -o '%T|%E' 2>/dev/null; }
drained() { [[ "$(node_state)" =~ ^drain.*\|lowsched: ]]; }
not_drained() { ! [[ "$(node_state)" =~ ^drain ]]; }
# A field of `scontrol show job -o` (values may hold spaces: cut at the next known key).
job_field() { scontrol show job -o "$1" | grep -o " $2=[^ ]*" | cut -d= -f2-; }

# --- Slurm ------------------------------------------------------------------------------------
# The guest has no network but lo. glibc's getaddrinfo(AI_ADDRCONFIG), which Slurm uses,
# returns nothing for IPv4 names while the only IPv4 address is 127.0.0.1 ("Unable to
# resolve" the controller, slurmd failing at boot); any other address, even on lo, fixes it.
ip addr add 10.254.0.1/32 dev lo
section "Slurm (units at boot: munge dbus.socket slurmctld slurmd: $(systemctl is-active munge dbus.socket slurmctld slurmd | tr '\n' ' '))"
systemctl reset-failed slurmctld slurmd
systemctl restart slurmctld
for u in munge slurmctld slurmd; do
    systemctl is-active -q "$u" && continue
    timeout 120 systemctl start "$u" || die "$u did not start: $(systemctl --no-pager status "$u" | tail -n 5)"
done
idle() { [ "$(sinfo -h -N -o %t)" = idle ]; }
eventually 300 "node $node idle; slurmd in $(cut -d: -f3 /proc/"$(pidof slurmd)"/cgroup)" idle || die "no idle node: $(node_state)"
systemctl is-active -q lowsched && die "lowsched.service runs before the check started it"

# --- the Slurm job ----------------------------------------------------------------------------
# Until /run/slurm-check/go exists the job keeps every core busy with short stress-ng runs;
# then it does a fixed amount of work and its output says whether that completed.
mkdir -p /run/slurm-check
cat >/run/slurm-check/job.sh <<'JOB'
#!/bin/sh
echo "cpus at start: $(grep Cpus_allowed_list /proc/self/status | cut -f2)"
while [ ! -e /run/slurm-check/go ]; do
    stress-ng --cpu "$SLURM_NTASKS" --cpu-method fft --cpu-ops 5 -q
done
echo "cpus at the fixed work: $(grep Cpus_allowed_list /proc/self/status | cut -f2)"
exec stress-ng --cpu "$SLURM_NTASKS" --cpu-method fft --cpu-ops 200 --metrics-brief
JOB
chmod +x /run/slurm-check/job.sh
ncpus=$(nproc)
id=$(sbatch --parsable -n "$ncpus" -o /run/slurm-check/out.txt /run/slurm-check/job.sh) || die "sbatch"
running() { [ "$(job_state "$id")" = RUNNING ]; }
eventually 120 "Slurm job $id RUNNING on every core (-n $ncpus)" running || die "job $id: $(squeue -h -j "$id" -o '%T %r')"
job_dir="" user=""
find_groups() {
    job_dir=$(find /sys/fs/cgroup/system.slice -maxdepth 2 -type d -name "job_$id" | head -n1)
    user=$job_dir/step_batch/user
    [ -n "$job_dir" ] && [ -d "$user" ] && [ -n "$(cat "$user"/*/cgroup.procs 2>/dev/null)" ]
}
eventually 60 "job $id's groups under the cgroup/v2 plugin's scope" find_groups || die "no job_$id/step_batch/user"
say "    ${job_dir#/sys/fs/cgroup}: cpuset.cpus=$(cat "$job_dir/cpuset.cpus")"
alloc=$(scontrol show job -d "$id" | sed -n "s/.* Nodes=$node CPU_IDs=\([^ ]*\) .*/\1/p")
before=$(cat "$job_dir/cpuset.cpus.effective")
[ "$(cpus "$before")" = "$(cpus "$alloc")" ] && ok "before lowsched: job_$id's cpuset [$before] = Slurm's allocation [$alloc]" \
    || bad "before lowsched: job_$id's cpuset [$before], allocation [$alloc]"

# --- lowsched ---------------------------------------------------------------------------------
section "lowsched.service with [slurm] enabled = auto"
cp "$toml" /run/slurm-check/lowsched.toml.normal
systemctl start lowsched || die "systemctl start lowsched"
eventually 60 "lowsched found slurmd and the cgroup/v2 layout" \
    sh -c "journalctl -b -u lowsched -o cat | grep -q 'Slurm jobs as batch: node $node, cgroup/v2 layout'"
say "    journal: $(journalctl -b -u lowsched -o cat | grep -m1 'Slurm jobs as batch')"
listed() { [ -n "$(status_row "$id")" ]; }
eventually 30 "lowsched status lists slurm:$id (origin slurm)" listed
say "    $(lowsched status | head -n1)"
say "    $(status_row "$id")"
svc=""
placed() { svc=$(status_service); [ -n "$svc" ]; }
eventually 60 "memcached.service protected" placed
say "    service on core(s) [$svc]; $(systemctl show -P StatusText lowsched)"
narrowed() {
    local c; c=$(cat "$job_dir/cpuset.cpus")
    [ -n "$c" ] && ! has_cpu "$c" "${svc%%[-,]*}"
}
if eventually 60 "job_$id's cpuset lost the service's core ${svc%%[-,]*}" narrowed; then
    now=$(cat "$job_dir/cpuset.cpus")
    say "    job_$id [$before] -> [$now], step_batch [$(cat "$job_dir/step_batch/cpuset.cpus")]"
    subset "$now" "$alloc" && ok "its cores [$now] stay inside Slurm's allocation [$alloc]" || bad "cores [$now] outside [$alloc]"
    pid=$(head -n1 "$(dirname "$(grep -l . "$user"/*/cgroup.procs | head -n1)")/cgroup.procs")
    aff=$(sed -n 's/^Cpus_allowed_list:[[:space:]]*//p' "/proc/$pid/status" 2>/dev/null)
    has_cpu "$aff" "${svc%%[-,]*}" && bad "job process $pid still allowed [$aff]" || ok "job process $pid allowed [$aff] only"
fi

# --- forced breach ----------------------------------------------------------------------------
section "forced breach: SLO 1 us, the service may take every core"
sed -e "s/^max_cores = .*/max_cores = $ncpus/" -e 's/^p95_us = .*/p95_us = 1/' \
    /run/slurm-check/lowsched.toml.normal >"$toml"
systemctl restart lowsched || die "systemctl restart lowsched (breach)"
frozen() { grep -qx 'frozen 1' "$user/cgroup.events"; }
eventually 120 "job_$id/step_batch/user frozen (cgroup.events frozen 1)" frozen
say "    cgroup.freeze $(cat "$user/cgroup.freeze"); process states: $(for p in $(cat "$user"/*/cgroup.procs); do cut -d' ' -f3 "/proc/$p/stat"; done 2>/dev/null | sort | uniq -c | tr -s ' \n' ' ')"
u1=$(sed -n 's/^usage_usec //p' "$user/cpu.stat"); sleep 3; u2=$(sed -n 's/^usage_usec //p' "$user/cpu.stat")
[ $((u2 - u1)) -lt 10000 ] && ok "the job's processes use no CPU while frozen (usage_usec $u1 -> $u2 in 3 s)" \
    || bad "the job's processes ran while frozen: usage_usec $u1 -> $u2 in 3 s"
say "    slurmstepd in step_batch/slurm: frozen $(sed -n 's/^frozen //p' "$job_dir/step_batch/slurm/cgroup.events")"
suspended() { [ "$(job_state "$id")" = SUSPENDED ]; }
eventually 60 "squeue shows job $id SUSPENDED" suspended
eventually 60 "node drained by lowsched" drained
say "    sinfo: $(node_state)"
say "    lowsched: $(status_row "$id")"

# --- back to normal ---------------------------------------------------------------------------
section "normal SLO again"
cp /run/slurm-check/lowsched.toml.normal "$toml"
systemctl restart lowsched || die "systemctl restart lowsched (normal)"
thawed() { running && grep -qx 'frozen 0' "$user/cgroup.events"; }
eventually 60 "job $id RUNNING and thawed (frozen 0)" thawed
eventually 60 "node resumed" not_drained
say "    sinfo: $(node_state)"
touch /run/slurm-check/go
gone() { [ -z "$(job_state "$id")" ]; }
eventually 300 "job $id finished" gone
say "    output: $(grep -v 'stress-ng: metrc' /run/slurm-check/out.txt | tr '\n' ' ' | cut -c1-400)"
grep -q "successful run completed" /run/slurm-check/out.txt && ok "job $id finished its fixed work (successful run completed)" \
    || bad "job $id did not finish its work"
succeeded() { [ "$(status_state "$id")" = succeeded ]; }
eventually 30 "lowsched records slurm:$id as succeeded" succeeded
susp=$(job_field "$id" SuspendTime)
[ -n "$susp" ] && [ "$susp" != None ] && ok "Slurm's record: SuspendTime=$susp RunTime=$(job_field "$id" RunTime)" \
    || bad "Slurm's record has no SuspendTime ($susp)"
grep -ah "slurm:$id\|drain" /var/lib/lowsched/events.log 2>/dev/null | cut -c1-160 | sed 's/^/    events.log: /'

# --- nothing left -----------------------------------------------------------------------------
section "nothing left behind"
systemctl stop lowsched
not_drained && ok "node not drained after lowsched stopped: $(node_state)" || bad "node left $(node_state)"
no_job_groups() { [ -z "$(find /sys/fs/cgroup/system.slice -path '*slurmstepd.scope/job_*' -type d 2>/dev/null)" ]; }
eventually 30 "no job group left under the slurmstepd scope" no_job_groups \
    || say "    left: $(find /sys/fs/cgroup/system.slice -path '*slurmstepd.scope/job_*' -type d)"
frozen_left=$(grep -rlx 1 /sys/fs/cgroup --include=cgroup.freeze 2>/dev/null)
[ -z "$frozen_left" ] && ok "no cgroup left frozen" || bad "frozen: $frozen_left"
say "$checks checks, $failed failed, $(( $(date +%s) - t0 )) s"
[ "$failed" -eq 0 ]
