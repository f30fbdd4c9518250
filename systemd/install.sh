#!/usr/bin/env bash
# Installs lowsched from this repository (binaries, systemd unit, sysusers.d and tmpfiles.d
# entries, example config, docs), or uninstalls it. Run from anywhere, as root for a real
# install; build first (`cargo build --release --locked`) or pass --build.
#
#   systemd/install.sh [install|uninstall] [--build] [--force] [NAME=VALUE]...
#
# NAME=VALUE (or the same names in the environment) sets where things go, as with `make install`:
#   DESTDIR      staging root prepended to every path (default empty: the live system)
#   PREFIX       /usr/local        BINDIR       $PREFIX/bin (lowsched, lowsched-shim)
#   LIBDIR       $PREFIX/lib       UNITDIR      $LIBDIR/systemd/system
#   SYSUSERSDIR  $LIBDIR/sysusers.d               TMPFILESDIR  $LIBDIR/tmpfiles.d
#   SYSCONFDIR   /etc (config in $SYSCONFDIR/lowsched/lowsched.toml, never overwritten;
#                logrotate file in $SYSCONFDIR/logrotate.d/lowsched)
#   DOCDIR       $PREFIX/share/doc/lowsched (README.md, cgroups/ examples, the example config)
#   DATADIR      $PREFIX/share (man page in man/man1, bash, zsh and fish completions)
#   PROFILE      release (which cargo build to install: target/$PROFILE)
#   CARGO_TARGET_DIR  target
# With an empty DESTDIR on a systemd host, install also applies the sysusers.d and tmpfiles.d
# entries and reloads systemd; it never enables or starts the unit. uninstall stops and
# disables the unit first and refuses while jobs still run (cancel them, or --force), removes
# what install put there, and keeps the state dir, the `lowsched` group and a changed config.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)

usage() {
    sed -n '6p' "$0" | sed 's/^#   /usage: /' >&2
    exit 2
}

action=install build=0 force=0
for arg in "$@"; do
    case $arg in
        install|uninstall) action=$arg ;;
        --build) build=1 ;;
        --force) force=1 ;;
        -h|--help) usage ;;
        DESTDIR=*|PREFIX=*|BINDIR=*|LIBDIR=*|UNITDIR=*|SYSUSERSDIR=*|TMPFILESDIR=*|SYSCONFDIR=*|DOCDIR=*|DATADIR=*|PROFILE=*|CARGO_TARGET_DIR=*)
            export "${arg?}" ;;
        *) echo "install.sh: unknown argument '$arg'" >&2; usage ;;
    esac
done

DESTDIR=${DESTDIR:-}
PREFIX=${PREFIX:-/usr/local}
BINDIR=${BINDIR:-$PREFIX/bin}
LIBDIR=${LIBDIR:-$PREFIX/lib}
UNITDIR=${UNITDIR:-$LIBDIR/systemd/system}
SYSUSERSDIR=${SYSUSERSDIR:-$LIBDIR/sysusers.d}
TMPFILESDIR=${TMPFILESDIR:-$LIBDIR/tmpfiles.d}
SYSCONFDIR=${SYSCONFDIR:-/etc}
DOCDIR=${DOCDIR:-$PREFIX/share/doc/lowsched}
DATADIR=${DATADIR:-$PREFIX/share}
PROFILE=${PROFILE:-release}
CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$repo/target}
for v in PREFIX BINDIR LIBDIR UNITDIR SYSUSERSDIR TMPFILESDIR SYSCONFDIR DOCDIR DATADIR; do
    case ${!v} in
        /*) ;;
        *) echo "install.sh: $v must be an absolute path, not '${!v}'" >&2; exit 2 ;;
    esac
done
if [ -n "$DESTDIR" ]; then
    mkdir -p -- "$DESTDIR"
    DESTDIR=$(cd "$DESTDIR" && pwd)
fi

say() { echo "lowsched install: $*"; }
die() { echo "lowsched install: error: $*" >&2; exit 1; }
# systemd is running here and the live system is the target.
live_systemd() { [ -z "$DESTDIR" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null; }

config=$SYSCONFDIR/lowsched/lowsched.toml
# Every file install puts down (config aside), relative to DESTDIR.
files=(
    "$BINDIR/lowsched"
    "$BINDIR/lowsched-shim"
    "$UNITDIR/lowsched.service"
    "$SYSUSERSDIR/lowsched.conf"
    "$TMPFILESDIR/lowsched.conf"
    "$SYSCONFDIR/logrotate.d/lowsched"
    "$DOCDIR/README.md"
    "$DOCDIR/lowsched.toml"
    "$DOCDIR/cgroups/README.md"
    "$DOCDIR/cgroups/memcached.service.d/lowsched.conf"
    "$DOCDIR/cgroups/lowsched-memcached.toml"
    "$DATADIR/man/man1/lowsched.1"
    "$DATADIR/bash-completion/completions/lowsched"
    "$DATADIR/zsh/site-functions/_lowsched"
    "$DATADIR/fish/vendor_completions.d/lowsched.fish"
)

do_install() {
    local bins=$CARGO_TARGET_DIR/$PROFILE b
    if [ "$build" = 1 ]; then
        local flag=()
        [ "$PROFILE" = release ] && flag=(--release)
        [ "$PROFILE" = debug ] || [ "$PROFILE" = release ] || flag=(--profile "$PROFILE")
        (cd "$repo" && CARGO_TARGET_DIR=$CARGO_TARGET_DIR cargo build --locked --bins "${flag[@]}")
    fi
    for b in lowsched lowsched-shim; do
        [ -x "$bins/$b" ] || die "$bins/$b not found: run \`cargo build --release --locked\` first (or pass --build)"
    done

    install -D -m 0755 "$bins/lowsched" "$DESTDIR$BINDIR/lowsched"
    install -D -m 0755 "$bins/lowsched-shim" "$DESTDIR$BINDIR/lowsched-shim"
    install -d -m 0755 "$DESTDIR$UNITDIR"
    sed -e "s|@BINDIR@|$BINDIR|g" -e "s|@DOCDIR@|$DOCDIR|g" "$repo/systemd/lowsched.service.in" \
        >"$DESTDIR$UNITDIR/lowsched.service"
    chmod 0644 "$DESTDIR$UNITDIR/lowsched.service"
    install -D -m 0644 "$repo/systemd/lowsched.sysusers" "$DESTDIR$SYSUSERSDIR/lowsched.conf"
    install -D -m 0644 "$repo/systemd/lowsched.tmpfiles" "$DESTDIR$TMPFILESDIR/lowsched.conf"
    # SIGHUP makes the daemon reopen its event logs (systemctl reload).
    install -D -m 0644 "$repo/systemd/lowsched.logrotate" "$DESTDIR$SYSCONFDIR/logrotate.d/lowsched"
    install -D -m 0644 "$repo/README.md" "$DESTDIR$DOCDIR/README.md"
    install -D -m 0644 "$repo/systemd/lowsched.toml" "$DESTDIR$DOCDIR/lowsched.toml"
    install -D -m 0644 "$repo/cgroups/README.md" "$DESTDIR$DOCDIR/cgroups/README.md"
    install -D -m 0644 "$repo/cgroups/memcached.service.d/lowsched.conf" \
        "$DESTDIR$DOCDIR/cgroups/memcached.service.d/lowsched.conf"
    install -D -m 0644 "$repo/cgroups/lowsched-memcached.toml" "$DESTDIR$DOCDIR/cgroups/lowsched-memcached.toml"
    # Generated from the argument definitions; a unit test keeps them in step with the parser.
    install -D -m 0644 "$repo/systemd/lowsched.1" "$DESTDIR$DATADIR/man/man1/lowsched.1"
    install -D -m 0644 "$repo/systemd/completions/lowsched.bash" \
        "$DESTDIR$DATADIR/bash-completion/completions/lowsched"
    install -D -m 0644 "$repo/systemd/completions/_lowsched" "$DESTDIR$DATADIR/zsh/site-functions/_lowsched"
    install -D -m 0644 "$repo/systemd/completions/lowsched.fish" \
        "$DESTDIR$DATADIR/fish/vendor_completions.d/lowsched.fish"
    if [ -e "$DESTDIR$config" ]; then
        say "kept the existing $config (the example is $DOCDIR/lowsched.toml)"
    else
        install -D -m 0644 "$repo/systemd/lowsched.toml" "$DESTDIR$config"
    fi
    say "installed into ${DESTDIR:-/} (prefix $PREFIX, $PROFILE build)"

    if live_systemd; then
        systemd-sysusers "$SYSUSERSDIR/lowsched.conf"
        systemd-tmpfiles --create "$TMPFILESDIR/lowsched.conf"
        systemctl daemon-reload
        say "next: systemctl enable --now lowsched"
    elif [ -z "$DESTDIR" ]; then
        getent group lowsched >/dev/null || groupadd --system lowsched || say "could not create group lowsched"
        install -d -m 0755 /run/lowsched /var/lib/lowsched
        say "no systemd running here: start the daemon by hand ($BINDIR/lowsched daemon)"
    fi
}

# Prints the job groups of a lowsched cgroup tree that still hold processes.
running_jobs() {
    local ev
    for ev in /sys/fs/cgroup/system.slice/lowsched.service/batch/job-*/cgroup.events \
        /sys/fs/cgroup/lowsched/batch/job-*/cgroup.events \
        /sys/fs/cgroup/unified/lowsched/batch/job-*/cgroup.events; do
        [ -e "$ev" ] && grep -qx 'populated 1' "$ev" && dirname "$ev"
    done
    return 0
}

do_uninstall() {
    local f jobs d
    if [ -z "$DESTDIR" ]; then
        jobs=$(running_jobs)
        if [ -n "$jobs" ] && [ "$force" = 0 ]; then
            printf '%s\n' "$jobs" >&2
            die "jobs are still running (groups above): cancel them first (lowsched status; lowsched cancel ID), or pass --force to leave them running unmanaged"
        fi
        if live_systemd && systemctl cat lowsched.service >/dev/null 2>&1; then
            systemctl disable --now lowsched.service || true
        fi
    fi
    for f in "${files[@]}"; do
        rm -f -- "$DESTDIR$f"
    done
    if [ -e "$DESTDIR$config" ]; then
        if cmp -s "$DESTDIR$config" "$repo/systemd/lowsched.toml"; then
            rm -f -- "$DESTDIR$config"
        else
            say "kept $config: it differs from the example (remove it yourself)"
        fi
    fi
    for d in "$DOCDIR/cgroups/memcached.service.d" "$DOCDIR/cgroups" "$DOCDIR" "$SYSCONFDIR/lowsched"; do
        [ -d "$DESTDIR$d" ] && rmdir --ignore-fail-on-non-empty -- "$DESTDIR$d"
    done
    if live_systemd; then
        systemctl daemon-reload
    fi
    say "uninstalled from ${DESTDIR:-/} (prefix $PREFIX)"
    if [ -z "$DESTDIR" ]; then
        say "kept: the state dir /var/lib/lowsched (journal, event log, job output) and the group lowsched"
    fi
}

case $action in
    install) do_install ;;
    uninstall) do_uninstall ;;
esac
