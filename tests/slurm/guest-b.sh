#!/usr/bin/env bash
# Runs Slurm (the distribution's slurmd, slurmctld, munge) in QEMU guest B: systemd as PID 1,
# pure cgroup v2, the cgroup/v2 plugin. Builds a rootfs variant with those packages and D-Bus
# (the plugin asks systemd over D-Bus for slurmd's step scope), lays slurm.conf and cgroup.conf
# over it, and runs tests/slurm/check-guest-b.sh there. Exit code: the check's (see
# tests/vm/README.md for 77, 124, 125).
set -euo pipefail
cd "$(dirname "$0")/../.."
overlay=target/vm/slurm-b
rm -rf -- "$overlay"
mkdir -p "$overlay/etc/slurm" "$overlay/var/lib/lowsched-slurm/state" "$overlay/var/lib/lowsched-slurm/spool"
cat >"$overlay/etc/slurm/slurm.conf" <<'CONF'
ClusterName=lowsched-guest
SlurmctldHost=lowsched-guest-b
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=/var/lib/lowsched-slurm/state
SlurmdSpoolDir=/var/lib/lowsched-slurm/spool
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
ProctrackType=proctrack/cgroup
TaskPlugin=task/cgroup,task/affinity
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
ReturnToService=2
NodeName=lowsched-guest-b CPUs=4 State=UNKNOWN
PartitionName=batch Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
cat >"$overlay/etc/slurm/cgroup.conf" <<'CONF'
CgroupPlugin=cgroup/v2
ConstrainCores=yes
ConstrainRAMSpace=no
ConstrainSwapSpace=no
ConstrainDevices=no
CONF
export VM_B_EXTRA_PACKAGES="slurmd slurmctld slurm-client munge dbus"
exec tests/vm/guest-b.sh --root-overlay "$overlay" --check tests/slurm/check-guest-b.sh --timeout "${SLURM_GUEST_TIMEOUT:-900}"
