#!/usr/bin/env bash
# Guest A: runs one command as root in a QEMU guest on PURE cgroup v2 (no systemd), from an
# initramfs made of busybox-static plus the given files, and exits with the command's exit code.
#
#   tests/vm/guest-a.sh [--add SRC:DEST]... [--env NAME=VALUE]... [--timeout SECS] [--smp N] -- CMD [ARGS...]
#
# --add copies host file or directory SRC to the absolute guest path DEST (binaries must be
# static). CMD runs with PATH, HOME=/root, TMPDIR=/tmp, LOWSCHED_IN_GUEST=1, LOWSCHED_NO_SKIP (if
# set here), RUST_BACKTRACE=1 and the --env pairs. A guest kernel panic or soft lockup ends the
# run at once and the whole run is retried once. Exit codes: CMD's; 124 timeout; 125 the guest
# stopped without a result (crash); 77 cannot run here; 2 usage. See tests/vm/README.md.
set -euo pipefail
# shellcheck source=tests/vm/lib.sh
. "$(dirname "$0")/lib.sh"

usage() {
    sed -n '5,6p' "$0" | sed 's/^#   /usage: /' >&2
    exit 2
}

adds=() envs=() timeout=600 smp=4
while [ $# -gt 0 ]; do
    case $1 in
        --add) [ $# -ge 2 ] || usage; [[ $2 == *:/* ]] || vm_die "--add wants SRC:/ABS/DEST, got '$2'"
               adds+=("$2"); shift 2 ;;
        --env) [ $# -ge 2 ] || usage; [[ $2 == [A-Za-z_]*=* ]] || vm_die "--env wants NAME=VALUE, got '$2'"
               envs+=("$2"); shift 2 ;;
        --timeout) [ $# -ge 2 ] && [[ $2 =~ ^[0-9]+$ ]] || usage; timeout=$2; shift 2 ;;
        --smp) [ $# -ge 2 ] && [[ $2 =~ ^[1-9][0-9]*$ ]] || usage; smp=$2; shift 2 ;;
        --) shift; break ;;
        -h|--help) usage ;;
        *) echo "guest-a.sh: unknown argument '$1'" >&2; usage ;;
    esac
done
[ $# -ge 1 ] || usage

vm_need qemu-system-x86_64 cpio python3 sha256sum flock
[ -x /bin/busybox ] && dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed' \
    || vm_cannot_run "busybox-static is not installed (.ci/stages/00-install.sh installs it)"

vm_kernel

# Quotes one word for any POSIX shell.
q() { printf "'%s'" "${1//\'/\'\\\'\'}"; }

VM_RUN=$(vm_run_dir guest-a)
vm_trap_cleanup
root=$VM_RUN/root
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc/vm,proc,sys,dev,tmp,run,root,home/lowsched-test}
cp /bin/busybox "$root/bin/busybox"

for a in "${adds[@]}"; do
    src=${a%%:*} dest=${a#*:}
    [ -e "$src" ] || vm_die "--add: $src does not exist"
    mkdir -p "$root$(dirname "$dest")"
    cp -a -- "$src" "$root$dest"
    if [ -f "$src" ] && [ "$(head -c4 "$src" | od -An -c | tr -d ' ')" = '177ELF' ] \
        && command -v readelf >/dev/null && readelf -l "$src" 2>/dev/null | grep -q 'program interpreter'; then
        vm_say "warning: $src is dynamically linked: it will not run in guest A (no libc there)"
    fi
done

cat >"$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
lowsched-test:x:1000:1000:lowsched test user:/home/lowsched-test:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
cat >"$root/etc/group" <<'EOF'
root:x:0:
lowsched-test:x:1000:
nogroup:x:65534:
EOF
echo "hosts: files" >"$root/etc/nsswitch.conf"
echo "passwd: files" >>"$root/etc/nsswitch.conf"
echo "group: files" >>"$root/etc/nsswitch.conf"
printf '127.0.0.1 localhost\n::1 localhost\n' >"$root/etc/hosts"

nonce=$(vm_nonce)
env_words=(PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TMPDIR=/tmp
    TERM=dumb USER=root LOGNAME=root LOWSCHED_IN_GUEST=1 RUST_BACKTRACE=1)
[ -n "${LOWSCHED_NO_SKIP:-}" ] && env_words+=("LOWSCHED_NO_SKIP=$LOWSCHED_NO_SKIP")
env_words+=("${envs[@]}")
{
    printf 'exec env -i'
    for w in "${env_words[@]}" "$@"; do printf ' %s' "$(q "$w")"; done
    printf '\n'
} >"$root/etc/vm/cmd"

cat >"$root/init" <<EOF
#!/bin/busybox sh
/bin/busybox --install -s
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
# A checkout under /tmp (a clean clone in /tmp/x) put its binaries at their host paths there:
# a tmpfs over /tmp would hide them, and the initramfs root is writable already.
if [ -z "\$(ls -A /tmp)" ]; then mount -t tmpfs -o mode=1777 tmpfs /tmp; else chmod 1777 /tmp; fi

mount -t tmpfs -o mode=0755 tmpfs /run
mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup
for c in \$(cat /sys/fs/cgroup/cgroup.controllers); do
    echo "+\$c" >/sys/fs/cgroup/cgroup.subtree_control || echo "guest-a: cannot enable controller \$c"
done
ip link set lo up
hostname lowsched-guest-a
chown 1000:1000 /home/lowsched-test
echo "guest-a: kernel \$(uname -r), pure cgroup v2, enabled: \$(cat /sys/fs/cgroup/cgroup.subtree_control)"
cd /root
/bin/sh /etc/vm/cmd
rc=\$?
sync
printf 'LOWSCHED_VM_%s %s rc=%s\n' RESULT $nonce "\$rc"
poweroff -f
EOF
chmod 0755 "$root/init"

(cd "$root" && find . -print0 | LC_ALL=C sort -z | cpio -o -0 -H newc -R 0:0 --quiet) >"$VM_RUN/initrd.cpio"
vm_say "guest A: kernel $VM_KVER, $smp vCPUs, initramfs $(( $(stat -c %s "$VM_RUN/initrd.cpio") / 1048576 )) MiB, timeout ${timeout}s: $*"

mkdir -p "$VM_CACHE/logs"
log=$VM_CACHE/logs/guest-a.log
crash_log=$VM_CACHE/logs/guest-a.crash.log
# A soft lockup panics (with every CPU's stack) instead of hanging until the timeout, and a
# panic reboots at once, which -no-reboot turns into QEMU's exit.
append="console=ttyS0 quiet panic=-1 softlockup_panic=1 softlockup_all_cpu_backtrace=1"
export VM_SMP=$smp
# TCG vCPU threads outnumber the host's cores; under load the guest kernel has been seen to lock
# up (soft lockups on 3 of 4 vCPUs, stuck for good) while the same tests passed on other runs.
# So a run that ended in a guest kernel crash, with no result line, is run once more, loudly. A
# result line with rc != 0 (the tests failed) is never retried, nor a crash the kernel did not
# report (QEMU error), nor our /init failing (the kernel panics then too), nor a timeout.
for attempt in 1 2; do
    rc=0
    vm_run_qemu "$log" "$timeout" "$nonce" -kernel "$VM_KERNEL" -initrd "$VM_RUN/initrd.cpio" \
        -append "$append" || rc=$?
    [ $rc -eq "$VM_RC_CRASH" ] || break
    crash=$(vm_kernel_crash_lines "$log") || break
    if grep -qaE 'Attempted to kill init|No working init found|Unable to mount root' <<<"$crash"; then
        vm_say "guest A: the kernel panicked because /init failed: not retrying"
        break
    fi
    {
        echo "vm: ======================================================================"
        if [ "$attempt" -eq 1 ]; then
            cp -- "$log" "$crash_log"
            echo "vm: GUEST KERNEL CRASH: guest A's kernel crashed or locked up on attempt 1, before the"
            echo "vm: tests reported a result; running the whole guest once more. The kernel said:"
            echo "$crash" | sed 's/^/vm: | /'
            echo "vm: full console of attempt 1: ${crash_log#"$VM_REPO"/}"
        else
            echo "vm: GUEST KERNEL CRASH AGAIN: guest A's kernel crashed on attempt 2 as well; giving up."
            echo "vm: The kernel said:"
            echo "$crash" | sed 's/^/vm: | /'
            echo "vm: full console of attempt 1: ${crash_log#"$VM_REPO"/}, of attempt 2: ${log#"$VM_REPO"/}"
        fi
        echo "vm: ======================================================================"
    } >&2
done
if [ $rc -ne 0 ]; then exit $rc; fi
if [ "$attempt" -gt 1 ]; then
    vm_say "guest A: command exited $VM_RESULT after ${VM_ELAPSED}s in the guest, on attempt $attempt" \
        "(attempt 1 crashed in the kernel: ${crash_log#"$VM_REPO"/})"
else
    vm_say "guest A: command exited $VM_RESULT after ${VM_ELAPSED}s in the guest"
fi
exit "$VM_RESULT"
