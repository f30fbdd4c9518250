#!/usr/bin/env bash
# The daemon's own CPU use while it protects an idle memcached (not part of the test pass/fail).
# Run as root:
#
#     benches/idle-cpu.sh [SECONDS]      # default 30
#     SCRAPE_EVERY=15 benches/idle-cpu.sh 120   # with /metrics on and scraped every 15 s
#
# Starts memcached on a spare port and `lowsched daemon` on built-in defaults (temp socket,
# state dir and cgroup root) protecting it, waits 3 s for it to settle, then reads every daemon
# thread's CPU ticks (/proc/PID/task/TID/stat) and voluntary context switches (its wake-ups)
# over SECONDS. Prints one line per thread and the total as a percentage of one core.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-30}
[ "$(id -u)" -eq 0 ] || { echo "idle-cpu: run as root" >&2; exit 1; }
command -v memcached >/dev/null || { echo "idle-cpu: needs memcached" >&2; exit 1; }
cargo build --release --locked --quiet
bin=$PWD/target/release/lowsched
dir=$(mktemp -d)
chmod 755 "$dir"
port=11711
memcached -u root -l 127.0.0.1 -p $port -t 1 -m 64 -P "$dir/mc.pid" -d
for _ in $(seq 50); do [ -s "$dir/mc.pid" ] && break; sleep 0.1; done
[ -s "$dir/mc.pid" ] || { echo "idle-cpu: memcached did not start (port $port busy?)" >&2; exit 1; }
mc=$(cat "$dir/mc.pid")
cat >"$dir/cfg.toml" <<EOF
socket = "$dir/s.sock"
state_dir = "$dir/state"
cgroup_root = "lowsched-idle-cpu"
[service]
enabled = "yes"
pid_file = "$dir/mc.pid"
address = "127.0.0.1:$port"
EOF
scrape=${SCRAPE_EVERY:-0}
if [ "$scrape" != 0 ]; then
    mport=$((port + 1))
    printf '[metrics]\nlisten = "127.0.0.1:%s"\n' "$mport" >>"$dir/cfg.toml"
fi
"$bin" daemon --config "$dir/cfg.toml" >"$dir/daemon.log" 2>&1 &
daemon=$!
cleanup() {
    if [ -n "${scraper:-}" ]; then kill "$scraper" 2>/dev/null || true; fi
    kill -TERM "$daemon" 2>/dev/null && wait "$daemon" 2>/dev/null || true
    kill "$mc" 2>/dev/null || true
    # The port is free again only once memcached has gone.
    for _ in $(seq 50); do kill -0 "$mc" 2>/dev/null || break; sleep 0.1; done
    for c in /sys/fs/cgroup/unified /sys/fs/cgroup/cpuset /sys/fs/cgroup/freezer /sys/fs/cgroup; do
        [ -d "$c/lowsched-idle-cpu" ] && find "$c/lowsched-idle-cpu" -depth -type d -exec rmdir {} \; 2>/dev/null
    done
    rm -rf "$dir"
}
trap cleanup EXIT
sleep 3
if [ "$scrape" != 0 ]; then
    ( while sleep "$scrape"; do curl -sf "http://127.0.0.1:$mport/metrics" >/dev/null; done ) &
    scraper=$!
fi
ticks() { awk '{print $14 + $15}' "$1/stat"; }
wakes() { awk '/^voluntary_ctxt_switches/ {print $2}' "$1/status"; }
declare -A t0 w0
for t in /proc/$daemon/task/*; do t0[$t]=$(ticks "$t"); w0[$t]=$(wakes "$t"); done
all0=$(ticks /proc/$daemon)
sleep "$secs"
hz=$(getconf CLK_TCK)
for t in /proc/$daemon/task/*; do
    printf '%-16s %5.2f %% of a core, %4d wake-ups/s\n' "$(cat "$t/comm")" \
        "$(echo "scale=4; 100 * ($(ticks "$t") - ${t0[$t]:-0}) / $hz / $secs" | bc)" \
        $(( ($(wakes "$t") - ${w0[$t]:-0}) / secs ))
done
if [ "$scrape" != 0 ]; then echo "(/metrics scraped every ${scrape} s)"; fi
echo "daemon total: $(echo "scale=2; 100 * ($(ticks /proc/$daemon) - all0) / $hz / $secs" | bc) % of one core over ${secs} s"
