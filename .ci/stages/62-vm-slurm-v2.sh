#!/usr/bin/env bash
# lowsched as the node agent under Slurm on pure cgroup v2 with systemd (issue 12): QEMU guest B
# with the distribution's slurmd, slurmctld and munge in its root filesystem (Slurm's cgroup/v2
# plugin), memcached.service protected by lowsched.service, and a stress-ng batch job that takes
# every core. tests/slurm/guest-b.sh builds the image and tests/slurm/check-guest-b.sh checks,
# in the guest: the job listed as slurm:N; its cpuset losing the service's core; under a forced
# breach its step frozen (cgroup.events), squeue SUSPENDED and the node drained with lowsched's
# reason; then RUNNING, resumed, the job's work done; nothing left behind.
set -euo pipefail
cd "$(dirname "$0")/../.."
rc=0
tests/slurm/guest-b.sh || rc=$?
case $rc in
    0) echo "62-vm-slurm-v2: tests/slurm/check-guest-b.sh passed in guest B (systemd, pure cgroup v2, Slurm's cgroup/v2 plugin)" ;;
    77) echo "62-vm-slurm-v2: cannot run guest B here (see above)"; exit 77 ;;
    *) echo "62-vm-slurm-v2: FAILED (rc=$rc): tests/slurm/check-guest-b.sh in guest B"; exit 1 ;;
esac
