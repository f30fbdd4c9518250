#!/usr/bin/env bash
# Installs the Debian packages the tests use and fetches the crates. Idempotent.
set -euo pipefail
if [ "$(id -u)" -ne 0 ]; then
    echo "the test command must run as root (it creates cgroups and starts VMs)"; exit 1
fi
packages=(memcached stress-ng qemu-system-x86 busybox-static cpio mmdebstrap e2fsprogs kmod)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# memcached's package starts a system instance where an init system runs; tests use their own.
command -v cargo >/dev/null || { echo "cargo not found: install a Rust toolchain (rustup)"; exit 1; }
cargo fetch --locked -q
