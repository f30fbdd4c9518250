#!/bin/bash
# Stage 50's check, run as root inside guest B (systemd as PID 1, pure cgroup v2) once the boot
# reached multi-user.target. lowsched was installed by systemd/install.sh (default prefix
# /usr/local) and enabled; memcached.service has cgroups/memcached.service.d/lowsched.conf and
# /etc/lowsched/lowsched.toml is cgroups/lowsched-memcached.toml, as a user would copy them.
# Prints every check; exits 0 only if all passed. Waits are generous (TCG is slow), nothing
# asserts timing.
set -u
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
failed=0 checks=0
unit=lowsched.service
ok() { checks=$((checks + 1)); echo "  ok: $1"; }
bad() { checks=$((checks + 1)); failed=$((failed + 1)); echo "  FAILED: $1"; }
check() { # check WHAT CMD...: CMD must succeed
    local what=$1; shift
    if "$@"; then ok "$what"; else bad "$what"; fi
}
# eventually SECS WHAT CMD...: CMD must succeed within SECS seconds (tried every 0.5 s).
eventually() {
    local secs=$1 what=$2 t=0; shift 2
    while ! "$@" >/dev/null 2>&1; do
        t=$((t + 1))
        if [ $t -gt $((secs * 2)) ]; then bad "$what (not within ${secs}s)"; "$@"; return 1; fi
        sleep 0.5
    done
    ok "$what"
}
section() { echo "-- $* (uptime $(cut -d. -f1 /proc/uptime)s)"; }
show() { systemctl show -P "$1" "${2:-$unit}"; }
# Expands a kernel cpu list ("0-2,5") into sorted numbers, one per line.
cpus() {
    local part IFS=,
    for part in $1; do
        case $part in
            *-*) seq "${part%-*}" "${part#*-}" ;;
            "" | -) ;;
            *) echo "$part" ;;
        esac
    done | sort -n | tr '\n' ' '
}
same_cpus() { [ "$(cpus "$1")" = "$(cpus "$2")" ]; }
# subset A B: every cpu of list A is in list B.
subset() {
    local c
    for c in $(cpus "$1"); do
        grep -qw -- "$c" <<<"$(cpus "$2")" || return 1
    done
}
disjoint() {
    local c
    for c in $(cpus "$1"); do
        grep -qw -- "$c" <<<"$(cpus "$2")" && return 1
    done
    return 0
}
# job_field ID FIELD: a field of `lowsched status ID` ("state", "cores", "pids", "exit"); the
# detail view's "(asked N)" after what was given is left out.
job_field() { lowsched status "$1" 2>/dev/null | sed -n "s/^$2: *//p" | sed 's/ (asked [^)]*)$//'; }
job_state_is() { [ "$(job_field "$1" state)" = "$2" ]; }
job_running_with_cores() { job_state_is "$1" running && [ "$(job_field "$1" cores)" != - ]; }
main_pid() { show MainPID; }
# The daemon's STATUS= line: "N pending, N running, N paused; batch cores [..]; memcached pid P on [..], ..."
status_text() { show StatusText; }
status_batch() { status_text | sed -n 's/.*batch cores \[\([^]]*\)\].*/\1/p'; }
status_service() { status_text | sed -n 's/.*memcached pid [0-9]* on \[\([^]]*\)\].*/\1/p'; }
affinity() { sed -n 's/^Cpus_allowed_list:[[:space:]]*//p' "/proc/$1/status"; }
# Every thread of memcached has the affinity the daemon reports for it.
memcached_pinned() {
    local pid want t
    pid=$(cat /run/memcached/memcached.pid) || return 1
    want=$(status_service)
    [ -n "$want" ] || return 1
    for t in /proc/"$pid"/task/*; do
        same_cpus "$(sed -n 's/^Cpus_allowed_list:[[:space:]]*//p' "$t/status")" "$want" || return 1
    done
}
alive() { kill -0 "$1" 2>/dev/null; }
in_procs() { grep -qx "$1" "$2" 2>/dev/null; }
journal() { journalctl -b -u "$unit" --no-pager -o cat; }
journal_has() { journal | grep -q -- "$1"; }
# A job that runs until the file /run/lowsched-check/NAME.go exists, then exits with CODE.
submit_hold() {
    lowsched submit --name "hold-$1" -- sh -c "while [ ! -e /run/lowsched-check/$1.go ]; do sleep 0.2; done; exit $2"
}
# The job's main process: its pid in the job's task/ group (the waiter stays in job-ID/).
job_pid() { head -n1 "$cg/batch/job-$1/task/cgroup.procs" 2>/dev/null; }
# Job ID's cpuset, its processes' affinity and the daemon's view agree, and it is on batch cores
# apart from the service's when the service's cores are exclusive.
job_placed_right() {
    local id=$1 cores cpuset pid batch svc
    cores=$(job_field "$id" cores)
    cpuset=$(cat "$cg/batch/job-$id/cpuset.cpus")
    pid=$(job_pid "$id")
    batch=$(status_batch) svc=$(status_service)
    [ "$cores" != - ] && [ -n "$cpuset" ] && [ -n "$pid" ] || return 1
    same_cpus "$cores" "$cpuset" || { echo "    job $id: status cores [$cores], cpuset.cpus [$cpuset]"; return 1; }
    same_cpus "$(cat "$cg/batch/job-$id/cpuset.cpus.effective")" "$cpuset" || return 1
    same_cpus "$(affinity "$pid")" "$cpuset" || { echo "    job $id: pid $pid allowed [$(affinity "$pid")]"; return 1; }
    subset "$cpuset" "$batch" || { echo "    job $id: [$cpuset] not within batch cores [$batch]"; return 1; }
    if disjoint "$svc" "$batch"; then
        disjoint "$cpuset" "$svc" || { echo "    job $id: [$cpuset] overlaps the service's exclusive [$svc]"; return 1; }
    fi
}

h=/run/lowsched-check
mkdir -p $h
echo "check-systemd: lowsched under systemd $(systemctl --version | sed -n '1s/systemd \([0-9]*\).*/\1/p') on pure cgroup v2"

section "boot"
check "PID 1 is systemd; /sys/fs/cgroup is cgroup2 only" \
    sh -c '[ "$(cat /proc/1/comm)" = systemd ] && [ "$(stat -f -c %T /sys/fs/cgroup)" = cgroup2fs ] && ! grep -q " cgroup " /proc/mounts'
check "unit file from the install step: $(show FragmentPath)" test "$(show FragmentPath)" = /usr/local/lib/systemd/system/$unit
check "group lowsched made by sysusers.d at boot" sh -c 'getent group lowsched >/dev/null'
check "systemctl is-active lowsched" systemctl is-active --quiet $unit
check "Type=notify and READY=1 seen (SubState running, NRestarts 0)" \
    test "$(show Type)/$(show SubState)/$(show NRestarts)" = notify/running/0
ready_line=$(journal | grep -m1 'ready:')
check "READY=1 after the first allocation: $ready_line" sh -c "echo '$ready_line' | grep -q 'batch cores \[[0-9]'"
check "READY came with a STATUS= line: $(status_text)" sh -c 'systemctl show -P StatusText lowsched | grep -q "batch cores"'
check "daemon read /etc/lowsched/lowsched.toml" journal_has "config /etc/lowsched/lowsched.toml"
check "WatchdogSec=30s is passed on" test "$(show WatchdogUSec)" = 30s
watchdog0=$(show WatchdogTimestampMonotonic)
cg_rel=$(show ControlGroup)
cg=/sys/fs/cgroup$cg_rel
check "delegated: Delegate=yes, controllers $(show DelegateControllers)" test "$(show Delegate)" = yes
check "daemon (MainPID $(main_pid)) moved itself into $cg_rel/daemon" in_procs "$(main_pid)" "$cg/daemon/cgroup.procs"
check "no process left in the delegated root $cg_rel" test -z "$(cat "$cg/cgroup.procs")"
check "root and batch/ hand down cpuset and memory: [$(cat "$cg/cgroup.subtree_control")] [$(cat "$cg/batch/cgroup.subtree_control")]" \
    sh -c "grep -qw cpuset '$cg/cgroup.subtree_control' && grep -qw memory '$cg/cgroup.subtree_control' && grep -qw cpuset '$cg/batch/cgroup.subtree_control' && grep -qw memory '$cg/batch/cgroup.subtree_control'"
check "batch/ is an idle CPU group (cpu.idle 1), so SCHED_IDLE jobs yield to daemon/ and service/" \
    test "$(cat "$cg/batch/cpu.idle")" = 1
check "socket /run/lowsched/lowsched.sock: $(stat -c '%A %U:%G' /run/lowsched/lowsched.sock 2>&1)" \
    test "$(stat -c '%F %a %G' /run/lowsched/lowsched.sock 2>&1)" = "socket 660 lowsched"

section "protected service: memcached.service with cgroups/memcached.service.d/lowsched.conf"
check "memcached.service is active with the drop-in (CPUWeight=$(show CPUWeight memcached.service))" \
    sh -c 'systemctl is-active --quiet memcached && [ "$(systemctl show -P CPUWeight memcached)" = 10000 ]'
eventually 60 "lowsched found memcached (pid file or the unit's cgroup) and pins its threads" \
    sh -c "journalctl -b -u $unit -o cat | grep -qE 'protecting memcached \(pid [0-9]+, found by (pid file|cgroup).*pinning its threads'"
journal | grep -m1 'protecting memcached' | sed 's/^/    journal: /'
mc=$(cat /run/memcached/memcached.pid)
check "memcached (pid $mc) stays in its own unit's cgroup" in_procs "$mc" /sys/fs/cgroup/system.slice/memcached.service/cgroup.procs
eventually 60 "every memcached thread is pinned to the service's cores" memcached_pinned
svc_cpu=$(status_service | sed 's/[-,].*//')
eventually 30 "memcached's core ${svc_cpu:-?} polls when idle (PM QoS resume latency n/a)" \
    sh -c "[ \"\$(cat /sys/devices/system/cpu/cpu${svc_cpu:-x}/power/pm_qos_resume_latency_us)\" = n/a ]"
echo "    status: $(status_text)"

section "jobs submitted with the CLI"
a=$(submit_hold a 7)
check "submit printed job id '$a'" test -n "$a"
eventually 60 "job $a runs" job_running_with_cores "$a"
eventually 30 "job $a's process is in $cg_rel/batch/job-$a/task, its waiter in batch/job-$a" \
    sh -c "[ -n \"\$(head -n1 $cg/batch/job-$a/task/cgroup.procs)\" ] && [ -n \"\$(head -n1 $cg/batch/job-$a/cgroup.procs)\" ]"
eventually 60 "job $a: cpuset.cpus = status cores = its affinity, on batch cores" job_placed_right "$a"
m=$(lowsched submit --name oom --memory 32m -- tail /dev/zero)
eventually 120 "job $m (tail /dev/zero, --memory 32m) is killed at its limit (exit 'sig 9')" \
    sh -c "[ \"\$(lowsched status $m | sed -n 's/^exit: *//p')\" = 'sig 9' ]"
check "... by the memory cgroup's OOM killer: $(dmesg | grep -m1 'Memory cgroup out of memory' | cut -c1-90)" \
    sh -c 'dmesg | grep -q "Memory cgroup out of memory: Killed process [0-9]* (tail)"'
check "... and lowsched.service is unaffected (active, NRestarts 0, Result=success)" \
    test "$(show ActiveState)/$(show NRestarts)/$(show Result)" = active/0/success
useradd --system --no-create-home --groups lowsched lsmember && useradd --system --no-create-home lsother
uj=$(setpriv --reuid=lsmember --regid=lsmember --init-groups lowsched submit -- sh -c 'id -un')
check "a member of group lowsched submits through the socket (job '$uj')" test -n "$uj"
check "job $uj runs as that user and succeeds" \
    sh -c "timeout 60 lowsched wait $uj && lowsched status $uj | grep -q '^user: *lsmember '"
check "a user outside group lowsched cannot use the socket" \
    sh -c '! setpriv --reuid=lsother --regid=lsother --init-groups lowsched status >/dev/null 2>&1'
b=$(lowsched submit --name sleeper --cpus 2 -- sleep 600)
check "submit --cpus 2 printed job id '$b'" test -n "$b"
eventually 60 "job $b runs" job_running_with_cores "$b"
eventually 60 "job $b: cpuset.cpus = status cores = its affinity, on batch cores" job_placed_right "$b"
echo "    job $a on [$(cat "$cg/batch/job-$a/cpuset.cpus")], job $b on [$(cat "$cg/batch/job-$b/cpuset.cpus")]"
check "jobs $a and $b have disjoint cpusets" disjoint "$(cat "$cg/batch/job-$a/cpuset.cpus")" "$(cat "$cg/batch/job-$b/cpuset.cpus")"
p=$(lowsched submit --name later -- sleep 1)
check "job $p waits while jobs $a and $b hold the three batch cores: $(job_field "$p" state)" job_state_is "$p" pending
echo "    status: $(status_text)"

section "watchdog"
eventually 45 "WATCHDOG=1 keep-alives arrive (WatchdogTimestamp moves)" \
    sh -c "[ \"\$(systemctl show -P WatchdogTimestampMonotonic $unit)\" -gt $watchdog0 ]"

section "systemctl restart lowsched"
pid1=$(main_pid) pa=$(job_pid "$a")
check "systemctl restart lowsched" timeout 120 systemctl restart $unit
check "active again with a new daemon (MainPID $pid1 -> $(main_pid))" \
    sh -c "systemctl is-active --quiet $unit && [ \"\$(systemctl show -P MainPID $unit)\" != $pid1 ]"
check "ExecStopPost relaxed the subtree: $(journal | grep -m1 'relaxed' | cut -c1-90)" journal_has "relaxed $cg"
check "new daemon is in daemon/" in_procs "$(main_pid)" "$cg/daemon/cgroup.procs"
check "job $a's process $pa kept running in its group" in_procs "$pa" "$cg/batch/job-$a/task/cgroup.procs"
check "the new daemon adopted it: $(journal | grep 'recovered' | tail -n1)" \
    sh -c "journalctl -b -u $unit -o cat | grep 'recovered' | tail -n1 | grep -q ' [1-9][0-9]* adopted'"
eventually 60 "job $a runs again on its cores" job_running_with_cores "$a"
eventually 60 "job $a: cpuset put back, = status cores = affinity" job_placed_right "$a"
echo "    job $a on [$(cat "$cg/batch/job-$a/cpuset.cpus")]"
check "controllers enabled again: [$(cat "$cg/cgroup.subtree_control")]" grep -qw cpuset "$cg/batch/cgroup.subtree_control"
check "job $p is still pending" job_state_is "$p" pending
touch /run/lowsched-check/a.go
check "lowsched wait $a returns the job's exit code 7" sh -c "timeout 120 lowsched wait $a; [ \$? = 7 ]"
check "its exit is recorded: state $(job_field "$a" state), exit $(job_field "$a" exit)" \
    test "$(job_field "$a" state)/$(job_field "$a" exit)" = failed/7
check "job $p (pending across the restart) then runs and succeeds" timeout 120 lowsched wait "$p"

section "systemctl stop lowsched"
d=$(submit_hold d 5)
eventually 60 "job $d runs" job_running_with_cores "$d"
pd=$(job_pid "$d")
check "systemctl stop lowsched" timeout 120 systemctl stop $unit
check "the unit is inactive: $(show ActiveState)/$(show SubState) Result=$(show Result)" \
    test "$(show ActiveState)/$(show Result)" = inactive/success
check "every core has its idle states back: $(cat /sys/devices/system/cpu/cpu*/power/pm_qos_resume_latency_us | tr '\n' ' ')" \
    sh -c '! grep -qx n/a /sys/devices/system/cpu/cpu*/power/pm_qos_resume_latency_us'
check "the CLI gets no answer while it is stopped" sh -c '! lowsched status >/dev/null 2>&1'
check "job $d's process $pd keeps running in its group" \
    sh -c "kill -0 $pd && grep -qx $pd $cg/batch/job-$d/task/cgroup.procs"
check "job $b keeps running" test -n "$(job_pid "$b")"
check "the subtree is relaxed while stopped: subtree_control [$(cat "$cg/cgroup.subtree_control")]" \
    test -z "$(cat "$cg/cgroup.subtree_control")"
touch /run/lowsched-check/d.go
eventually 60 "job $d ends while no daemon runs" sh -c "! kill -0 $pd"
check "systemctl start lowsched" timeout 120 systemctl start $unit
check "active again" systemctl is-active --quiet $unit
eventually 60 "job $d's exit (5) that happened while stopped is recorded" \
    sh -c "[ \"\$(lowsched status $d | sed -n 's/^exit: *//p')\" = 5 ]"
eventually 60 "job $b runs again on its cores" job_placed_right "$b"

section "ending every job, then stopping (README)"
lowsched status | awk 'NR > 1 && ($3 == "pending" || $3 == "running" || $3 == "paused") { print $1 }' \
    | xargs -r -n1 lowsched cancel
check "every job is cancelled: $(lowsched status | awk 'NR > 1 { printf "%s=%s ", $1, $3 }')" \
    sh -c '! lowsched status | awk "NR > 1 { print \$3 }" | grep -qE "^(pending|running|paused)$"'
eventually 30 "no job group holds a process" sh -c "! grep -qx 'populated 1' $cg/batch/cgroup.events"
check "systemctl stop lowsched" timeout 120 systemctl stop $unit
check "the unit's cgroup is empty" sh -c "[ ! -e $cg/cgroup.events ] || grep -qx 'populated 0' $cg/cgroup.events"

section "systemd/install.sh on this system: uninstall, install again"
# Stage 50 put the repo's install files in /root/lowsched-src; the binaries come from this
# install, copied to where the script looks for a debug build.
src=/root/lowsched-src
install -D -m 0755 /usr/local/bin/lowsched "$src/target/debug/lowsched"
install -D -m 0755 /usr/local/bin/lowsched-shim "$src/target/debug/lowsched-shim"
check "systemctl start lowsched" timeout 120 systemctl start $unit
u=$(lowsched submit --name uninstall-guard -- sleep 600)
eventually 60 "job $u runs" job_running_with_cores "$u"
check "uninstall refuses while job $u runs, and leaves the unit active" \
    sh -c "! $src/systemd/install.sh uninstall PROFILE=debug >$h/uninstall.log 2>&1 && systemctl is-active --quiet $unit"
sed -n 's/^lowsched install: error: /    said: /p' $h/uninstall.log
lowsched cancel "$u"
check "uninstall after the job is cancelled" sh -c "$src/systemd/install.sh uninstall PROFILE=debug >$h/uninstall.log 2>&1"
sed 's/^/    /' $h/uninstall.log
check "... stopped and removed the unit, binaries, sysusers.d and tmpfiles.d entries, docs" \
    sh -c "! systemctl is-active --quiet $unit && ! systemctl cat $unit >/dev/null 2>&1 && [ ! -e /usr/local/bin/lowsched ] && [ ! -e /usr/local/bin/lowsched-shim ] && [ ! -e /usr/local/lib/sysusers.d/lowsched.conf ] && [ ! -e /usr/local/lib/tmpfiles.d/lowsched.conf ] && [ ! -e /usr/local/share/doc/lowsched ]"
check "... and kept the changed config, the state dir and the group" \
    sh -c "[ -f /etc/lowsched/lowsched.toml ] && [ -d /var/lib/lowsched ] && getent group lowsched >/dev/null"
check "install on the live system" sh -c "$src/systemd/install.sh PROFILE=debug >$h/install.log 2>&1"
sed 's/^/    /' $h/install.log
check "systemctl enable --now lowsched" sh -c "systemctl enable --now $unit 2>/dev/null"
check "active again, and the CLI answers" sh -c "systemctl is-active --quiet $unit && lowsched status >/dev/null"
check "systemctl stop lowsched" timeout 120 systemctl stop $unit

section "by hand: lowsched daemon started from this check's own (not delegated) service"
# The check runs in lowsched-vm-check.service ($INVOCATION_ID set, a .service group, no
# Delegate=): the daemon must not take that group, but use /sys/fs/cgroup/lowsched. A memcached
# in a scope (no service owns it) is moved into lowsched's service/ group.
printf '%s\n' "socket = \"$h/by-hand.sock\"" "state_dir = \"$h/state\"" "[service]" \
    "pid_file = \"$h/memcached.pid\"" "address = \"127.0.0.1:11311\"" "max_cores = 1" >$h/by-hand.toml
systemd-run --scope --quiet --unit=lowsched-check-memcached \
    memcached -u memcache -l 127.0.0.1 -p 11311 -m 16 >/dev/null 2>&1 &
eventually 30 "memcached started by hand in a scope (port 11311)" pgrep -f 'memcached .*-p 11311'
mh=$(pgrep -f 'memcached .*-p 11311' | head -n1)
echo "$mh" >$h/memcached.pid
lowsched daemon --config $h/by-hand.toml >$h/by-hand.log 2>&1 &
hd=$!
eventually 60 "the daemon is ready" grep -q 'ready:' $h/by-hand.log
grep -m1 'not delegated' $h/by-hand.log | sed 's/^/    log: /'
check "it saw that this check's group is not delegated" grep -q 'is not delegated' $h/by-hand.log
check "it moved itself into /sys/fs/cgroup/lowsched/daemon" in_procs "$hd" /sys/fs/cgroup/lowsched/daemon/cgroup.procs
check "this check's own group is untouched (no controllers turned on there, this shell still in it)" \
    sh -c "[ -z \"\$(cat /sys/fs/cgroup$(sed -n 's/^0:://p' /proc/$$/cgroup)/cgroup.subtree_control)\" ] && grep -qx $$ /sys/fs/cgroup$(sed -n 's/^0:://p' /proc/$$/cgroup)/cgroup.procs"
eventually 60 "memcached (pid $mh, in a scope) was moved into /sys/fs/cgroup/lowsched/service" \
    in_procs "$mh" /sys/fs/cgroup/lowsched/service/cgroup.procs
j=$(lowsched --socket $h/by-hand.sock submit -- sleep 600)
eventually 60 "job $j runs in /sys/fs/cgroup/lowsched/batch/job-$j/task" \
    sh -c "[ -n \"\$(cat /sys/fs/cgroup/lowsched/batch/job-$j/task/cgroup.procs)\" ]"
echo "    service/ on [$(cat /sys/fs/cgroup/lowsched/service/cpuset.cpus)], job $j on [$(cat /sys/fs/cgroup/lowsched/batch/job-$j/cpuset.cpus)]"
lowsched --socket $h/by-hand.sock cancel "$j"
kill "$hd"
check "the by-hand daemon stops on SIGTERM" timeout 60 tail --pid="$hd" -f /dev/null
kill "$mh" 2>/dev/null

echo "check-systemd: $checks checks, $failed failed (uptime $(cut -d. -f1 /proc/uptime)s)"
if [ "$failed" -ne 0 ]; then
    echo "--- lowsched status"; lowsched status 2>&1
    echo "--- systemctl status lowsched"; systemctl --no-pager status $unit 2>&1 | head -40
    echo "--- lowsched journal"; journal | tail -80
fi
[ "$failed" -eq 0 ]
