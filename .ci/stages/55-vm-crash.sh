#!/usr/bin/env bash
# Durability through a crash of the whole machine, under systemd on pure cgroup v2: installs
# lowsched into an install tree as stage 50 does, boots QEMU guest B, where
# tests/vm/crash-submit.sh submits jobs and resets the machine at once without syncing (sysrq b),
# then boots the same disk again and runs tests/vm/check-crash.sh: every acknowledged job is in
# the journal and runs exactly once (tests/vm/guest-b.sh --reset-first).
set -euo pipefail
cd "$(dirname "$0")/../.."

OVERLAY=target/vm/install-b-crash
rm -rf -- "$OVERLAY"
# The host's debug build (stage 20 built it), as in stage 50, with the same protected-service
# files and test-only settings (one service core, a 100/s probe: see stage 50).
systemd/install.sh --build PROFILE=debug DESTDIR="$OVERLAY" >/dev/null
install -D -m 0644 cgroups/memcached.service.d/lowsched.conf \
    "$OVERLAY/etc/systemd/system/memcached.service.d/lowsched.conf"
install -D -m 0644 cgroups/lowsched-memcached.toml "$OVERLAY/etc/lowsched/lowsched.toml"
printf '%s\n' "max_cores = 1" "" "[probe]" "rate = 100" >>"$OVERLAY/etc/lowsched/lowsched.toml"

rc=0
tests/vm/guest-b.sh --root-overlay "$OVERLAY" --enable lowsched.service \
    --reset-first tests/vm/crash-submit.sh --check tests/vm/check-crash.sh --timeout 600 || rc=$?
case $rc in
    0) echo "55-vm-crash: every acknowledged submit survived a reset without sync and ran once (guest B)" ;;
    77) echo "55-vm-crash: cannot run guest B here (see above)"; exit 77 ;;
    *) echo "55-vm-crash: FAILED (rc=$rc): tests/vm/check-crash.sh after a reset in guest B"; exit 1 ;;
esac
