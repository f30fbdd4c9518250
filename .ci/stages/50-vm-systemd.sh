#!/usr/bin/env bash
# Under a real systemd (PID 1) on pure cgroup v2: installs lowsched with systemd/install.sh into
# an install tree (DESTDIR), adds the protected-service files of cgroups/ the way a user copies
# them, boots QEMU guest B (tests/vm/guest-b.sh) with that tree over Debian + memcached, and runs
# tests/vm/check-systemd.sh there. Also checks on the host that uninstall removes what install
# put down.
set -euo pipefail
cd "$(dirname "$0")/../.."

# The install tree, the units to enable in it, and the check script.
OVERLAY=target/vm/install-b
ENABLE=(lowsched.service)
CHECK=tests/vm/check-systemd.sh

# The guest is Debian with glibc like this host: the host's debug build runs there (stage 20's
# `cargo test` has built it already).
rm -rf -- "$OVERLAY"
systemd/install.sh --build PROFILE=debug DESTDIR="$OVERLAY" >/dev/null
# What cgroups/README.md tells a user to copy for memcached.service.
install -D -m 0644 cgroups/memcached.service.d/lowsched.conf \
    "$OVERLAY/etc/systemd/system/memcached.service.d/lowsched.conf"
install -D -m 0644 cgroups/lowsched-memcached.toml "$OVERLAY/etc/lowsched/lowsched.toml"
# Test-only, appended to its [service] section: the service keeps exactly one core (the guest's
# TCG latencies would make the controller climb), so the jobs below always have three batch
# cores; and the latency probe sends 100 gets/s instead of 1000 (under TCG the debug daemon's
# probe alone would keep a vCPU busy, and the latencies it measures there mean nothing).
printf '%s\n' "max_cores = 1" "" "[probe]" "rate = 100" >>"$OVERLAY/etc/lowsched/lowsched.toml"
# The files systemd/install.sh needs, for the check's live uninstall and install in the guest.
src=$OVERLAY/root/lowsched-src
mkdir -p "$src/systemd" "$src/cgroups/memcached.service.d"
cp systemd/install.sh systemd/lowsched.service.in systemd/lowsched.sysusers systemd/lowsched.tmpfiles systemd/lowsched.logrotate \
    systemd/lowsched.toml systemd/lowsched.1 "$src/systemd/"
cp -r systemd/completions "$src/systemd/"
cp cgroups/README.md cgroups/lowsched-memcached.toml "$src/cgroups/"
cp cgroups/memcached.service.d/lowsched.conf "$src/cgroups/memcached.service.d/"
cp README.md "$src/"
echo "50-vm-systemd: install tree $OVERLAY:"
(cd "$OVERLAY" && find . -type f ! -path './root/*' | sort | sed 's|^\.|    |')

# uninstall removes everything install put down (config included while unchanged).
scratch=$(mktemp -d target/vm/uninstall-check.XXXXXX)
trap 'rm -rf -- "$scratch"' EXIT
systemd/install.sh PROFILE=debug DESTDIR="$scratch" >/dev/null
systemd/install.sh uninstall PROFILE=debug DESTDIR="$scratch" >/dev/null
left=$(cd "$scratch" && find . -type f -o -type l)
if [ -n "$left" ]; then
    echo "50-vm-systemd: FAILED: uninstall left files behind:"; echo "$left"; exit 1
fi
echo "50-vm-systemd: ok: systemd/install.sh uninstall removes every file install put down"

enable_args=()
for u in "${ENABLE[@]}"; do enable_args+=(--enable "$u"); done
rc=0
tests/vm/guest-b.sh --root-overlay "$OVERLAY" "${enable_args[@]}" --check "$CHECK" --timeout 600 || rc=$?
case $rc in
    0) echo "50-vm-systemd: $CHECK passed in guest B (systemd, pure cgroup v2)" ;;
    77) echo "50-vm-systemd: cannot run guest B here (see above)"; exit 77 ;;
    *) echo "50-vm-systemd: FAILED (rc=$rc): $CHECK in guest B"; exit 1 ;;
esac
