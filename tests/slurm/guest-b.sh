#!/usr/bin/env bash
# Runs Slurm (the distribution's slurmd, slurmctld, munge) and lowsched side by side in QEMU
# guest B: systemd as PID 1, pure cgroup v2, Slurm's cgroup/v2 plugin. Builds a rootfs variant
# with those packages, D-Bus (the plugin asks systemd over D-Bus for slurmd's step scope) and
# stress-ng; lays over it lowsched installed the way stage 50 does (systemd/install.sh into an
# install tree, the memcached drop-in and config of cgroups/, plus a [slurm] section), and
# slurm.conf and cgroup.conf; runs tests/slurm/check-guest-b.sh there. Exit code: the check's
# (see tests/vm/README.md for 77, 124, 125).
set -euo pipefail
cd "$(dirname "$0")/../.."
overlay=target/vm/slurm-b
rm -rf -- "$overlay"
# lowsched, as stage 50 installs it (the guest is Debian with glibc like this host, so the
# host's debug build runs there). Not enabled: the check starts it once Slurm runs.
systemd/install.sh --build PROFILE=debug DESTDIR="$overlay" >/dev/null
install -D -m 0644 cgroups/memcached.service.d/lowsched.conf \
    "$overlay/etc/systemd/system/memcached.service.d/lowsched.conf"
install -D -m 0644 cgroups/lowsched-memcached.toml "$overlay/etc/lowsched/lowsched.toml"
# Test-only, appended to its [service] section as in stage 50 (one core for the service, a
# slow probe under TCG), then the SLO the check lowers for its forced breach, then the
# [slurm] section users copy, with a short drain hold and a faster squeue poll.
{
    printf '%s\n' "max_cores = 1" "" "[probe]" "rate = 100" "" "[slo]" "p95_us = 800" ""
    cat cgroups/slurm/lowsched-slurm.toml
    printf '%s\n' "poll_ms = 1000"
} >>"$overlay/etc/lowsched/lowsched.toml"
sed -i 's/^drain_hold_s = .*/drain_hold_s = 2.0/' "$overlay/etc/lowsched/lowsched.toml"
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
export VM_B_EXTRA_PACKAGES="slurmd slurmctld slurm-client munge dbus stress-ng"
exec tests/vm/guest-b.sh --root-overlay "$overlay" --check tests/slurm/check-guest-b.sh --timeout "${SLURM_GUEST_TIMEOUT:-600}"
