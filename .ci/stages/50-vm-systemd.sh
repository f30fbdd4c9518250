#!/usr/bin/env bash
# Under a real systemd (PID 1) on pure cgroup v2: boots QEMU guest B (tests/vm/guest-b.sh) with an
# install tree laid over Debian + memcached and runs a check script in it.
set -euo pipefail
cd "$(dirname "$0")/../.."

# The install tree (made with DESTDIR=...), the units to enable in it, and the check script.
# For now a smoke service shaped like lowsched.service (Type=notify, Delegate=yes).
OVERLAY=tests/vm/smoke/overlay
ENABLE=(lowsched-smoke.service)
CHECK=tests/vm/smoke/check.sh

enable_args=()
for u in "${ENABLE[@]}"; do enable_args+=(--enable "$u"); done
rc=0
tests/vm/guest-b.sh --root-overlay "$OVERLAY" "${enable_args[@]}" --check "$CHECK" --timeout 600 || rc=$?
case $rc in
    0) echo "50-vm-systemd: $CHECK passed in guest B (systemd, pure cgroup v2)" ;;
    77) echo "50-vm-systemd: cannot run guest B here (see above)"; exit 77 ;;
    *) echo "50-vm-systemd: FAILED (rc=$rc): $CHECK in guest B"; exit 1 ;;
esac
