#!/usr/bin/env bash
# Builds guest B's base root filesystem (Debian minbase + systemd as PID 1 + memcached) into DIR,
# from the apt sources in SOURCES (deb822, made by lib.sh's vm_apt_sources from the host's apt
# config). Called by guest-b.sh, which caches DIR under a key that includes this file's content:
# editing the package list or the tweaks below rebuilds the rootfs.
#
#   tests/vm/rootfs-b.sh SOURCES DIR
set -euo pipefail
# shellcheck source=tests/vm/lib.sh
. "$(dirname "$0")/lib.sh"

# What check scripts can use in guest B, besides minbase (coreutils, util-linux, grep, sed, apt).
PACKAGES=(
    systemd-sysv
    memcached
    procps          # ps, pgrep, free
    iproute2        # ip, ss
    netcat-openbsd  # talk to memcached from a check
)
# A variant for one test stage (e.g. Slurm's daemons): guest-b.sh passes VM_B_EXTRA_PACKAGES
# through and caches that rootfs apart from the plain one.
# shellcheck disable=SC2206
[ -z "${VM_B_EXTRA_PACKAGES:-}" ] || PACKAGES+=(${VM_B_EXTRA_PACKAGES})

sources=$1 dir=$2
[ -s "$sources" ] || vm_die "rootfs-b.sh: no apt sources in $sources"
codename=$(vm_codename)
vm_say "rootfs B: mmdebstrap --variant=minbase $codename with ${PACKAGES[*]}"
mmdebstrap --quiet --variant=minbase --include="$(IFS=,; echo "${PACKAGES[*]}")" \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    "$codename" "$dir" "$sources"

# No udev in minbase: a device unit that never appears (fstab entries, the serial getty's tty)
# would stall the boot for 90 s. The guest has no login and no first-boot questions.
: >"$dir/etc/fstab"
# The kernel's modules are not in the image: binfmt_misc's automount (autofs4) cannot work.
for unit in serial-getty@ttyS0.service systemd-firstboot.service getty.target \
    proc-sys-fs-binfmt_misc.automount; do
    ln -sf /dev/null "$dir/etc/systemd/system/$unit"
done
ln -sf /lib/systemd/system/multi-user.target "$dir/etc/systemd/system/default.target"
# An empty machine-id means "first boot" to systemd, which then applies unit presets.
vm_nonce >"$dir/etc/machine-id"
echo lowsched-guest-b >"$dir/etc/hostname"
printf '127.0.0.1 localhost lowsched-guest-b\n::1 localhost\n' >"$dir/etc/hosts"
# The journal is kept in memory only: the image is thrown away after each run.
mkdir -p "$dir/etc/systemd/journald.conf.d"
printf '[Journal]\nStorage=volatile\n' >"$dir/etc/systemd/journald.conf.d/lowsched-vm.conf"
rm -rf "$dir"/var/cache/apt/* "$dir"/var/lib/apt/lists/*
[ -e "$dir/etc/systemd/system/multi-user.target.wants/memcached.service" ] \
    || vm_die "rootfs B: memcached.service is not enabled after install"
vm_say "rootfs B: $(du -sm "$dir" | cut -f1) MiB"
