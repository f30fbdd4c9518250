#!/usr/bin/env bash
# Integration tests on PURE cgroup v2: builds the test targets below statically and runs them all
# in one boot of QEMU guest A (tests/vm/guest-a.sh; busybox initramfs, no systemd).
set -euo pipefail
cd "$(dirname "$0")/../.."

# The integration test targets (tests/NAME.rs) that run inside guest A. Add yours here.
exec tests/vm/guest-a-tests.sh 40-vm-cgroup-v2 900 \
    vm_guest \
    actuation
