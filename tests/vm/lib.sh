# Shared helpers for the QEMU guest scripts (sourced, not run): cache paths, the host's apt
# sources, the Debian kernel, and running QEMU with a timeout and a result marker.
# shellcheck shell=bash

VM_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
VM_SCRIPTS=$VM_REPO/tests/vm
VM_CACHE=${LOWSCHED_VM_CACHE:-$VM_REPO/target/vm}

# Exit codes of guest-a.sh / guest-b.sh when the guest's own code is unknown.
VM_RC_CANNOT_RUN=77   # a tool or permission is missing here (the CI runner counts it as failure)
VM_RC_TIMEOUT=124     # no result marker before the timeout
VM_RC_CRASH=125       # the guest stopped without printing the result marker

vm_say() { echo "vm: $*" >&2; }
vm_die() { echo "vm: error: $*" >&2; exit 1; }
vm_cannot_run() { echo "vm: cannot run: $*" >&2; exit "$VM_RC_CANNOT_RUN"; }

# Exits 77 unless every named command is on PATH.
vm_need() {
    local c
    for c in "$@"; do
        command -v "$c" >/dev/null 2>&1 || vm_cannot_run "'$c' not found (.ci/stages/00-install.sh installs it)"
    done
}

# A short content hash of stdin, used as a cache key.
vm_key() { sha256sum | cut -c1-16; }

# Runs "$@" while holding an exclusive lock on target/vm/NAME.lock, so that two runs never build
# the same cache entry at once.
vm_locked() {
    local name=$1; shift
    mkdir -p "$VM_CACHE"
    (
        flock 9
        "$@"
    ) 9>"$VM_CACHE/$name.lock"
}

# Removes every sibling of the cache entry DIR (older keys of the same artifact).
vm_prune_siblings() {
    local keep=$1 d
    for d in "$(dirname "$keep")"/*; do
        [ "$d" = "$keep" ] || rm -rf -- "$d"
    done
}

vm_codename() {
    # shellcheck disable=SC1091
    (. /etc/os-release && echo "${VERSION_CODENAME:?no VERSION_CODENAME in /etc/os-release}")
}

# Prints the host's apt sources for its own release as deb822 stanzas (Types: deb only), taken
# from /etc/apt/sources.list.d/*.sources and *.list and /etc/apt/sources.list. Sources for other
# suites (third-party repositories) are left out: the guest rootfs is plain Debian.
vm_apt_sources() {
    local codename files=()
    codename=$(vm_codename)
    shopt -s nullglob
    files=(/etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources)
    shopt -u nullglob
    python3 - "$codename" "${files[@]}" <<'EOF'
import os, re, sys
codename, files = sys.argv[1], sys.argv[2:]
ours = lambda s: s == codename or s.startswith(codename + "-") or s.startswith(codename + "/")
out = []
def add(uris, suites, comps, signed):
    suites = [s for s in suites if ours(s)]
    if uris and suites:
        st = ["Types: deb", "URIs: " + " ".join(uris), "Suites: " + " ".join(suites)]
        if comps:
            st.append("Components: " + " ".join(comps))
        if signed:
            st.append("Signed-By: " + signed)
        out.append("\n".join(st))
for f in files:
    if not os.path.isfile(f):
        continue
    text = open(f, encoding="utf-8", errors="replace").read()
    if f.endswith(".sources"):
        for stanza in re.split(r"\n\s*\n", text):
            fields, key = {}, None
            for line in stanza.splitlines():
                if line.startswith("#") or not line.strip():
                    continue
                if line[0] in " \t" and key:
                    fields[key] += "\n" + line
                    continue
                key, _, val = line.partition(":")
                key = key.strip().lower()
                fields[key] = val.strip()
            if "deb" not in fields.get("types", "").split():
                continue
            if fields.get("enabled", "yes").lower() == "no":
                continue
            signed = fields.get("signed-by", "")
            if "\n" in signed:  # an inline key: keep it as a deb822 multi-line field
                signed = "\n ".join(l.strip() or "." for l in signed.splitlines())
            add(fields.get("uris", "").split(), fields.get("suites", "").split(),
                fields.get("components", "").split(), signed)
    else:
        for line in text.splitlines():
            line = line.split("#", 1)[0].split()
            if not line or line[0] != "deb":
                continue
            signed, rest = "", line[1:]
            if rest and rest[0].startswith("["):
                opts = []
                while rest:
                    w = rest.pop(0)
                    opts.append(w)
                    if w.endswith("]"):
                        break
                for o in " ".join(opts).strip("[] ").split():
                    if o.startswith("signed-by="):
                        signed = o.split("=", 1)[1]
            if len(rest) >= 2:
                add([rest[0]], [rest[1]], rest[2:], signed)
if not out:
    sys.exit("no apt source for release %r found in %s" % (codename, " ".join(files)))
print("\n\n".join(out))
EOF
}

# Makes sure apt knows package candidates (a fresh machine may have empty lists).
vm_apt_ready() {
    if ! apt-cache show linux-image-amd64 >/dev/null 2>&1; then
        vm_say "apt has no package lists yet: apt-get update"
        apt-get update -qq || vm_die "apt-get update failed"
    fi
}

# Sets VM_KERNEL (vmlinuz), VM_KVER and VM_KMODS (lib/modules/VER with modules.dep): the image
# package that linux-image-amd64 depends on, downloaded and unpacked (not installed) under
# target/vm/kernel/PACKAGE_VERSION. Rebuilt when apt's candidate changes.
vm_kernel() {
    vm_need apt-get apt-cache dpkg-deb depmod
    vm_apt_ready
    local pkg ver dir
    _vm_kernel_resolve() {
        pkg=$(apt-cache depends linux-image-amd64 | awk '$1 == "Depends:" && $2 ~ /^linux-image-/ {print $2; exit}')
        [ -n "$pkg" ] || vm_die "cannot tell which kernel image linux-image-amd64 depends on"
        ver=$(apt-cache policy "$pkg" | awk '$1 == "Candidate:" {print $2}')
        [ -n "$ver" ] && [ "$ver" != "(none)" ] || vm_die "no candidate version for $pkg"
        dir=$VM_CACHE/kernel/${pkg}_${ver}
    }
    _vm_kernel_resolve
    if [ ! -e "$dir/.done" ] && ! vm_locked kernel _vm_kernel_build "$pkg" "$ver" "$dir"; then
        # Stale package lists name a kernel the archive no longer has (security updates
        # replace it): refresh them once and take the current one.
        vm_say "kernel: retrying after apt-get update"
        apt-get update -qq || vm_die "apt-get update failed"
        _vm_kernel_resolve
        [ -e "$dir/.done" ] || vm_locked kernel _vm_kernel_build "$pkg" "$ver" "$dir" \
            || vm_die "cannot get the kernel $pkg $ver"
    fi
    VM_KVER=$(cat "$dir/kver")
    VM_KERNEL=$dir/vmlinuz
    VM_KMODS=$dir/lib/modules/$VM_KVER
}

_vm_kernel_build() {
    local pkg=$1 ver=$2 dir=$3 tmp deb kver
    [ -e "$dir/.done" ] && return 0
    vm_say "kernel: downloading $pkg $ver"
    tmp=$dir.tmp.$$
    rm -rf -- "$tmp"
    mkdir -p "$tmp/deb"
    (cd "$tmp/deb" && apt-get download -q=2 "$pkg=$ver" 2>&1 | grep -v 'unsandboxed as root' >&2 || true)
    deb=$(ls "$tmp"/deb/*.deb 2>/dev/null | head -n1)
    if [ -z "$deb" ]; then
        vm_say "kernel: apt-get download $pkg=$ver got nothing"
        rm -rf -- "$tmp"
        return 1
    fi
    dpkg-deb -x "$deb" "$tmp" || vm_die "dpkg-deb -x $deb failed"
    rm -rf -- "$tmp/deb"
    kver=$(ls "$tmp/lib/modules" | head -n1)
    [ -n "$kver" ] && [ -f "$tmp/boot/vmlinuz-$kver" ] || vm_die "$pkg has no boot/vmlinuz-VER and lib/modules/VER"
    mv "$tmp/boot/vmlinuz-$kver" "$tmp/vmlinuz"
    echo "$kver" >"$tmp/kver"
    # The package ships no modules.dep (its postinst runs depmod): make it here.
    depmod -b "$tmp" "$kver" || vm_die "depmod failed for $kver"
    touch "$tmp/.done"
    mkdir -p "$(dirname "$dir")"
    rm -rf -- "$dir"
    mv "$tmp" "$dir"
    vm_prune_siblings "$dir"
    vm_say "kernel: $kver cached in ${dir#"$VM_REPO"/}"
}

# Prints the relative paths (to VM_KMODS) of the named modules and of everything they depend on,
# dependencies first, each once, from modules.dep.
vm_module_closure() {
    local -A seen=()
    local -a order=()
    _vm_mod_visit() {
        local name=$1 line path deps d
        line=$(grep -E "(^|/)${name//[-_]/[-_]}\.ko(\.[a-z]+)?:" "$VM_KMODS/modules.dep" | head -n1)
        [ -n "$line" ] || vm_die "module $name not in modules.dep of $VM_KVER (built in?)"
        path=${line%%:*}
        [ -n "${seen[$path]:-}" ] && return 0
        seen[$path]=1
        deps=${line#*:}
        for d in $deps; do
            d=$(basename "$d"); d=${d%%.ko*}
            _vm_mod_visit "$d"
        done
        order+=("$path")
    }
    local m
    for m in "$@"; do _vm_mod_visit "$m"; done
    printf '%s\n' "${order[@]}"
}

# Stops the timeout(1) process PID that runs QEMU: TERM (which timeout passes on to QEMU), then
# KILL for both if they are still there after 5 s.
vm_stop_qemu() {
    local pid=$1 i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null
    for i in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.5; done
    pkill -KILL -P "$pid" 2>/dev/null
    kill -KILL "$pid" 2>/dev/null
}

# vm_run_qemu LOG TIMEOUT NONCE QEMU-ARGS...: runs qemu-system-x86_64 (TCG, q35, VM_SMP vCPUs,
# default 4) with the given extra arguments, streams the serial console to stdout (and LOG), and
# enforces TIMEOUT seconds. -no-reboot makes a guest reboot (e.g. after a panic with panic=-1)
# end QEMU. The guest prints "LOWSCHED_VM_RESULT NONCE rc=N" when done. Sets VM_RESULT to N and
# returns 0 when that line came; otherwise says why and returns VM_RC_TIMEOUT or VM_RC_CRASH.
vm_run_qemu() {
    local log=$1 timeout=$2 nonce=$3; shift 3
    # timeout(1) caps QEMU even if this script is killed outright and cannot stop it.
    local -a qemu=(timeout --kill-after=10 $((timeout + 90))
        qemu-system-x86_64 -M q35,accel=tcg -cpu max -smp "${VM_SMP:-4}" -m 1G
        -nodefaults -no-user-config -nographic -serial stdio -no-reboot "$@")
    : >"$log"
    "${qemu[@]}" </dev/null >>"$log" 2>&1 &
    local qpid=$! start=$SECONDS marker_at="" why=""
    VM_QEMU_PID=$qpid
    # Shown without carriage returns and terminal escapes (SeaBIOS turns off line wrapping).
    tail -n +1 -f --pid="$qpid" "$log" | sed -u 's/\r$//; s/\x1bc//g; s/\x1b\[[0-9;?]*[a-zA-Z]//g' &
    local tpid=$!
    local pattern="LOWSCHED_VM_RESULT $nonce rc=[0-9]+"
    while kill -0 "$qpid" 2>/dev/null; do
        if [ -z "$marker_at" ] && grep -qaE "$pattern" "$log"; then
            marker_at=$SECONDS
        fi
        if [ -n "$marker_at" ] && (( SECONDS - marker_at > 60 )); then
            vm_say "the guest printed its result but did not power off within 60 s: stopping qemu"
            break
        fi
        if [ -z "$marker_at" ] && (( SECONDS - start >= timeout )); then
            why=timeout
            break
        fi
        sleep 0.5
    done
    vm_stop_qemu "$qpid"
    wait "$qpid" 2>/dev/null
    local qrc=$?
    wait "$tpid" 2>/dev/null
    VM_QEMU_PID=""
    VM_RESULT=$(grep -aoE "$pattern" "$log" | tail -n1 | sed 's/.*rc=//')
    VM_ELAPSED=$(( SECONDS - start ))
    if [ -n "$VM_RESULT" ]; then
        return 0
    fi
    if [ "$why" = timeout ]; then
        vm_say "TIMEOUT: no result from the guest within ${timeout}s (log: ${log#"$VM_REPO"/})"
        return "$VM_RC_TIMEOUT"
    fi
    vm_say "CRASH: the guest stopped without printing its result (qemu rc=$qrc; kernel panic," \
        "init failure or qemu error: see the output above, log: ${log#"$VM_REPO"/})"
    return "$VM_RC_CRASH"
}

# The console lines of LOG that show the guest kernel crashed or locked up (panic, oops, soft
# lockup, RCU stall): the first such kernel message and the 40 lines after it (registers and
# stack), then any later panic line. Only kernel messages (with their "[ secs.usecs] " stamp)
# count, not a test's output. Prints nothing and returns 1 when there is none.
vm_kernel_crash_lines() {
    local log=$1
    local sig='\[ *[0-9]+\.[0-9]+\] .*(Kernel panic|soft lockup|BUG: |Oops: |general protection fault|rcu: INFO: .*stall)'
    local first
    first=$(grep -anE "$sig" "$log" | head -n1 | cut -d: -f1 || true)
    [ -n "$first" ] || return 1
    { sed -n "${first},$((first + 40))p" "$log"
      tail -n +$((first + 41)) "$log" | grep -aE "$sig" | grep -a 'Kernel panic' | head -n 5 || true
    } | sed 's/\r$//; s/\x1b\[[0-9;?]*[a-zA-Z]//g'
    return 0
}

# Makes INT, TERM and HUP end the script through its EXIT trap (vm_cleanup).
vm_trap_cleanup() {
    trap vm_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM HUP
}

# For an EXIT trap: stops a QEMU this script started and removes the run dir VM_RUN (unless
# LOWSCHED_VM_KEEP=1).
vm_cleanup() {
    if [ -n "${VM_QEMU_PID:-}" ]; then vm_stop_qemu "$VM_QEMU_PID"; fi
    if [ -n "${VM_RUN:-}" ] && [ -d "$VM_RUN" ] && [ "${LOWSCHED_VM_KEEP:-0}" != 1 ]; then
        rm -rf -- "$VM_RUN"
    fi
}

# A fresh per-run directory under target/vm/runs; removed by the caller unless LOWSCHED_VM_KEEP=1.
vm_run_dir() {
    local name=$1 dir
    mkdir -p "$VM_CACHE/runs"
    dir=$(mktemp -d "$VM_CACHE/runs/$name.XXXXXX")
    echo "$dir"
}

vm_nonce() { tr -d '-' </proc/sys/kernel/random/uuid; }
