#!/usr/bin/env bash
# Guest B: boots Debian with systemd as PID 1 on pure cgroup v2 in QEMU, with an install tree
# laid over the root filesystem, runs a check script once the boot reached multi-user.target, and
# exits with the check script's exit code.
#
#   tests/vm/guest-b.sh --root-overlay DIR --check SCRIPT [--enable UNIT]... [--timeout SECS] [--reset-first SCRIPT0]
#
# DIR is copied over / (files become root-owned; an install tree made with DESTDIR=DIR;
# existing directories and the image's /lib -> usr/lib style symlinks are kept).
# --enable UNIT enables a unit of the overlay or of the image (symlinks from its [Install]
# WantedBy=/RequiredBy=). SCRIPT runs as root in the guest after multi-user.target; its output goes
# to the serial console. Exit codes: SCRIPT's; 124 timeout; 125 the guest stopped without a
# result; 77 cannot run here; 2 usage. See tests/vm/README.md.
#
# --reset-first SCRIPT0: a crash of the whole machine between two boots of the same disk. The
# first boot runs SCRIPT0 instead of SCRIPT; SCRIPT0 must print "LOWSCHED_VM_RESET $LOWSCHED_VM_NONCE"
# (best through /dev/kmsg: a console tty write may be lost in the reset) and reset the guest at once (echo b > /proc/sysrq-trigger: no sync, no shutdown), which ends
# QEMU (-no-reboot). Its lines "LOWSCHED_VM_CARRY $LOWSCHED_VM_NONCE KEY=VALUE" are passed to the
# second boot's kernel command line as lowsched_vm.KEY=VALUE; the second boot runs SCRIPT.
# What a reset loses is what the guest kernel had not written to the virtual disk (its page
# cache): a write the guest did not sync is lost, a synced one is on the image.
set -euo pipefail
# shellcheck source=tests/vm/lib.sh
. "$(dirname "$0")/lib.sh"

usage() {
    sed -n '6p' "$0" | sed 's/^#   /usage: /' >&2
    exit 2
}

overlay="" check="" timeout=600 enables=() reset_first=""
while [ $# -gt 0 ]; do
    case $1 in
        --root-overlay) [ $# -ge 2 ] || usage; overlay=$2; shift 2 ;;
        --check) [ $# -ge 2 ] || usage; check=$2; shift 2 ;;
        --reset-first) [ $# -ge 2 ] || usage; reset_first=$2; shift 2 ;;
        --enable) [ $# -ge 2 ] || usage; enables+=("$2"); shift 2 ;;
        --timeout) [ $# -ge 2 ] && [[ $2 =~ ^[0-9]+$ ]] || usage; timeout=$2; shift 2 ;;
        -h|--help) usage ;;
        *) echo "guest-b.sh: unknown argument '$1'" >&2; usage ;;
    esac
done
[ -n "$overlay" ] && [ -n "$check" ] || usage
[ -d "$overlay" ] || vm_die "--root-overlay $overlay is not a directory"
[ -f "$check" ] || vm_die "--check $check is not a file"
[ -z "$reset_first" ] || [ -f "$reset_first" ] || vm_die "--reset-first $reset_first is not a file"

[ "$(id -u)" -eq 0 ] || vm_cannot_run "guest B needs root (mmdebstrap, root-owned image files)"
vm_need qemu-system-x86_64 mmdebstrap mkfs.ext4 cpio python3 sha256sum flock
[ -x /bin/busybox ] && dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed' \
    || vm_cannot_run "busybox-static is not installed (.ci/stages/00-install.sh installs it)"

vm_kernel

# --- the base root filesystem, cached by (recipe, apt sources, release) ---------------------
sources_text=$(vm_apt_sources) || vm_die "cannot read the host's apt sources"
rootfs_key=$( { cat "$VM_SCRIPTS/rootfs-b.sh"; echo "$sources_text"; vm_codename; } | vm_key)
rootfs=$VM_CACHE/rootfs-b/$rootfs_key
build_rootfs() {
    [ -e "$rootfs/.done" ] && return 0
    local tmp=$rootfs.tmp.$$
    rm -rf -- "$tmp"
    mkdir -p "$tmp"
    echo "$sources_text" >"$tmp.sources"
    "$VM_SCRIPTS/rootfs-b.sh" "$tmp.sources" "$tmp/root" || { rm -rf -- "$tmp" "$tmp.sources"; vm_die "building the rootfs failed"; }
    rm -f -- "$tmp.sources"
    touch "$tmp/.done"
    mv "$tmp" "$rootfs"
    vm_prune_siblings "$rootfs"
}
[ -e "$rootfs/.done" ] || vm_locked rootfs-b build_rootfs

# --- the initramfs: virtio disk + ext4 modules, then switch_root to /dev/vda --------------
modules=$(vm_module_closure virtio_pci virtio_blk crc32c_generic ext4)
init_text=$(cat <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
fail() { echo "guest-b initramfs: $*"; sleep 1; poweroff -f; }
for m in $(cat /modules); do insmod "/lib/modules/$m" || fail "insmod $m failed"; done
i=0
while [ ! -b /dev/vda ]; do
    i=$((i + 1)); [ $i -le 600 ] || fail "no /dev/vda after 60 s"; sleep 0.1
done
mkdir -p /newroot
mount -t ext4 -o rw /dev/vda /newroot || fail "cannot mount /dev/vda"
mount --move /dev /newroot/dev
umount /proc /sys
exec switch_root /newroot /sbin/init
EOF
)
initrd_key=$( { echo "$VM_KERNEL $VM_KVER"; sha256sum /bin/busybox; echo "$modules"; echo "$init_text"; } | vm_key)
initrd=$VM_CACHE/initrd-b/$initrd_key.cpio
build_initrd() {
    [ -e "$initrd" ] && return 0
    local tmp m
    mkdir -p "$(dirname "$initrd")"
    tmp=$(mktemp -d "$VM_CACHE/initrd-b/build.XXXXXX")
    mkdir -p "$tmp"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,newroot,lib/modules}
    cp /bin/busybox "$tmp/bin/busybox"
    for m in $modules; do
        mkdir -p "$tmp/lib/modules/$(dirname "$m")"
        cp "$VM_KMODS/$m" "$tmp/lib/modules/$m"
    done
    echo "$modules" >"$tmp/modules"
    echo "$init_text" >"$tmp/init"
    chmod 0755 "$tmp/init"
    (cd "$tmp" && find . -print0 | LC_ALL=C sort -z | cpio -o -0 -H newc -R 0:0 --quiet) >"$initrd.tmp"
    mv "$initrd.tmp" "$initrd"
    rm -rf -- "$tmp"
    find "$(dirname "$initrd")" -name '*.cpio' ! -name "$(basename "$initrd")" -delete
}
[ -e "$initrd" ] || vm_locked initrd-b build_initrd

# --- the per-run root: base + overlay + the check, as an ext4 image -----------------------
VM_RUN=$(vm_run_dir guest-b)
vm_trap_cleanup
root=$VM_RUN/root
cp -a "$rootfs/root" "$root"
# Root-owned, modes and symlinks kept, existing directories (and merged-/usr symlinks like
# /lib -> usr/lib) left as they are: what `make install` into / would give.
tar -C "$overlay" --owner=0 --group=0 -cf - . \
    | tar -C "$root" --keep-directory-symlink --no-overwrite-dir -xpf - || vm_die "copying $overlay failed"

nonce=$(vm_nonce)
libexec=$root/usr/local/libexec/lowsched-vm
mkdir -p "$libexec"
install -m 0755 "$check" "$libexec/check"
[ -z "$reset_first" ] || install -m 0755 "$reset_first" "$libexec/reset-first"
cat >"$libexec/run-check" <<EOF
#!/bin/sh
# Runs the check script of tests/vm/guest-b.sh, prints the result marker, powers off. On the
# first boot of --reset-first, runs that script instead, which resets the machine.
echo "guest-b: boot reached multi-user.target; \$(systemctl --version | head -n1); kernel \$(uname -r)"
failed_units=\$(systemctl --no-pager --no-legend --failed)
[ -z "\$failed_units" ] || echo "guest-b: units failed during boot: \$failed_units"
if grep -qw lowsched_vm.phase=reset /proc/cmdline; then
    LOWSCHED_VM_NONCE=$nonce /usr/local/libexec/lowsched-vm/reset-first
    rc=\$?
    echo "guest-b: the first boot's script returned (rc=\$rc) instead of resetting the machine"
    [ \$rc -ne 0 ] || rc=1
else
    /usr/local/libexec/lowsched-vm/check
    rc=\$?
fi
if [ \$rc -ne 0 ]; then
    echo "guest-b: the check failed (rc=\$rc); failed units and the journal's end follow"
    systemctl --no-pager --failed
    journalctl --no-pager -b -n 100
fi
sync
printf 'LOWSCHED_VM_%s %s rc=%s\n' RESULT $nonce "\$rc"
# What \`systemctl poweroff\` does, without asking logind (no D-Bus in the image).
systemctl --no-block --job-mode=replace-irreversibly start poweroff.target
EOF
chmod 0755 "$libexec/run-check"
cat >"$root/etc/systemd/system/lowsched-vm-check.service" <<EOF
[Unit]
Description=lowsched VM check (tests/vm/guest-b.sh)
After=multi-user.target

[Service]
Type=oneshot
ExecStart=/usr/local/libexec/lowsched-vm/run-check
Environment=LOWSCHED_IN_GUEST=systemd${LOWSCHED_NO_SKIP:+ LOWSCHED_NO_SKIP=$LOWSCHED_NO_SKIP}
StandardInput=null
StandardOutput=tty
StandardError=inherit
TTYPath=/dev/console
TTYReset=no
TTYVHangup=no
TimeoutStartSec=infinity

[Install]
WantedBy=multi-user.target
EOF

# Enables UNIT the way `systemctl enable` would for WantedBy=/RequiredBy= (no systemctl on the
# host to do it).
enable_unit() {
    local unit=$1 file="" d kind targets t
    for d in etc/systemd/system usr/local/lib/systemd/system usr/lib/systemd/system lib/systemd/system; do
        if [ -f "$root/$d/$unit" ]; then file=/$d/$unit; break; fi
    done
    [ -n "$file" ] || vm_die "--enable $unit: no such unit file in the overlay or the image"
    for kind in WantedBy:wants RequiredBy:requires; do
        targets=$(sed -n "s/^[[:space:]]*${kind%:*}=//p" "$root$file")
        for t in $targets; do
            mkdir -p "$root/etc/systemd/system/$t.${kind#*:}"
            ln -sf "$file" "$root/etc/systemd/system/$t.${kind#*:}/$unit"
        done
    done
}
for u in lowsched-vm-check.service "${enables[@]}"; do enable_unit "$u"; done
[ -L "$root/etc/systemd/system/multi-user.target.wants/lowsched-vm-check.service" ] \
    || vm_die "could not enable the check unit"

img=$VM_RUN/root.img
mkfs.ext4 -q -F -L lowsched-guest-b -d "$root" "$img" 1G >/dev/null || vm_die "mkfs.ext4 -d failed"
rm -rf -- "$root"

vm_say "guest B: kernel $VM_KVER, rootfs ${rootfs#"$VM_REPO"/}, overlay $overlay, check $check, timeout ${timeout}s"
mkdir -p "$VM_CACHE/logs"
log=$VM_CACHE/logs/guest-b.log
append="console=ttyS0 quiet panic=-1 root=/dev/vda rw systemd.unified_cgroup_hierarchy=1"
# cache=unsafe: QEMU ignores the guest's flushes. Harmless here, as the host never crashes: a
# guest reset loses only what the guest kernel still held, never what it wrote to the disk.
# With --reset-first, cache=writeback, so a flush the guest asks for is also a flush on the host.
cache=unsafe
if [ -n "$reset_first" ]; then
    cache=writeback
    vm_say "guest B: first boot, which runs $reset_first and resets the machine"
    rc=0
    vm_run_qemu "$VM_CACHE/logs/guest-b.reset.log" "$timeout" "$nonce" -kernel "$VM_KERNEL" -initrd "$initrd" \
        -drive "file=$img,format=raw,if=virtio,cache=$cache" -append "$append lowsched_vm.phase=reset" || rc=$?
    if [ $rc -eq 0 ]; then
        vm_say "guest B: the first boot ended with a result (rc=$VM_RESULT), not with a reset"
        exit $(( VM_RESULT == 0 ? 1 : VM_RESULT ))
    fi
    # The lines may carry the kernel log's time stamp (SCRIPT0 can print them through /dev/kmsg).
    grep -aq "LOWSCHED_VM_RESET $nonce" "$VM_CACHE/logs/guest-b.reset.log" || {
        vm_say "guest B: the first boot stopped without announcing its reset (rc=$rc)"; exit "$rc"; }
    carried=$(grep -aoE "LOWSCHED_VM_CARRY $nonce [A-Za-z0-9_]+=[^[:space:]]*" "$VM_CACHE/logs/guest-b.reset.log" \
        | sed "s/^LOWSCHED_VM_CARRY $nonce /lowsched_vm./" | tr '\n' ' ')
    vm_say "guest B: the guest reset itself as planned; second boot of the same disk with: $carried"
    append="$append $carried"
fi
rc=0
vm_run_qemu "$log" "$timeout" "$nonce" -kernel "$VM_KERNEL" -initrd "$initrd" \
    -drive "file=$img,format=raw,if=virtio,cache=$cache" -append "$append" || rc=$?
if [ $rc -ne 0 ]; then exit $rc; fi
vm_say "guest B: check exited $VM_RESULT after ${VM_ELAPSED}s in the guest"
exit "$VM_RESULT"
