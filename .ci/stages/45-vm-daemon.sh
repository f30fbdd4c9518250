#!/usr/bin/env bash
# The daemon end to end on PURE cgroup v2: the daemon test targets below, built statically, in
# one boot of QEMU guest A (tests/vm/guest-a.sh; busybox initramfs, no systemd). The host runs
# them on its hybrid layout in stage 20; production hosts are pure v2.
# (daemon_security needs perl and daemon_stats memcached, which guest A does not have.)
# Two vCPUs: the test daemons use two cores, and four TCG vCPU threads on this 2-vCPU host
# were oversubscribed (one run hit kernel soft lockups; guest-a.sh now panics and retries once).

set -euo pipefail
cd "$(dirname "$0")/../.."

exec tests/vm/guest-a-tests.sh 45-vm-daemon 1500 --smp 2 --args "--test-threads 2" \
    daemon_e2e \
    daemon_protocol \
    daemon_recovery \
    hardening_v2
