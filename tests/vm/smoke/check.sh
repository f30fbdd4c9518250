#!/bin/sh
# Guest B smoke check (stage 50): runs as root inside the guest after multi-user.target and prints
# each thing it checked. Exit 0 only if all passed.
failed=0
check() {
    what=$1; shift
    if "$@"; then echo "  ok: $what"; else echo "  FAILED: $what"; failed=$((failed + 1)); fi
}
has_words() { # has_words FILE WORD...: every WORD is a word of FILE
    f=$1; shift
    for w in "$@"; do grep -qw -- "$w" "$f" || { echo "    $f has '$(cat "$f")', lacks $w"; return 1; }; done
}

echo "guest-b smoke check:"
check "PID 1 is systemd" test "$(cat /proc/1/comm)" = systemd
check "/sys/fs/cgroup is cgroup2 (pure v2)" test "$(stat -f -c %T /sys/fs/cgroup)" = cgroup2fs
check "no cgroup v1 hierarchy mounted" sh -c '! awk "\$3 == \"cgroup\"" /proc/mounts | grep -q .'
check "root cgroup offers cpuset cpu memory pids" has_words /sys/fs/cgroup/cgroup.controllers cpuset cpu memory pids

check "lowsched-smoke.service is active" systemctl is-active --quiet lowsched-smoke.service
cg=$(systemctl show -P ControlGroup lowsched-smoke.service)
dir=/sys/fs/cgroup$cg
check "lowsched-smoke.service has Delegate=yes" test "$(systemctl show -P Delegate lowsched-smoke.service)" = yes
check "its cgroup $cg exists" test -d "$dir"
check "its main process moved itself into the leaf $cg/daemon" \
    grep -qx "$(systemctl show -P MainPID lowsched-smoke.service)" "$dir/daemon/cgroup.procs"
check "its delegated cgroup is owned by the service (cgroup.subtree_control writable)" test -w "$dir/cgroup.subtree_control"
check "its delegated cgroup accepts +cpuset +cpu +memory +pids in cgroup.subtree_control" \
    sh -c "echo '+cpuset +cpu +memory +pids' >'$dir/cgroup.subtree_control'"
check "... and shows them there" has_words "$dir/cgroup.subtree_control" cpuset cpu memory pids
check "its leaf then offers cpuset (cgroup.controllers of $cg/daemon)" has_words "$dir/daemon/cgroup.controllers" cpuset cpu memory pids
check "a child group in the subtree takes cpuset.cpus=1 cpuset.mems=0" sh -c "
    mkdir '$dir/job-check' && echo 1 >'$dir/job-check/cpuset.cpus' && echo 0 >'$dir/job-check/cpuset.mems' &&
    test \"\$(cat '$dir/job-check/cpuset.cpus.effective')\" = 1 && rmdir '$dir/job-check'"

check "memcached.service is active" systemctl is-active --quiet memcached.service
check "memcached answers on 127.0.0.1:11211" sh -c 'printf "version\r\nquit\r\n" | nc -q 2 127.0.0.1 11211 | grep -q "^VERSION"'

echo "guest-b smoke check: $failed failed"
[ "$failed" -eq 0 ]
