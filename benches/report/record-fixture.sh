#!/usr/bin/env bash
# Records a short real run for tests/fixtures/report-run: memcached on a free port protected by
# a lowsched daemon (own state dir, socket and cgroup root), a random-walk load, three small
# stress-ng jobs (the first paused and resumed by hand), then the daemon is restarted once so the
# history spans two segments. Keeps events.jsonl and history/. Run as root from the repo top:
#   benches/report/record-fixture.sh tests/fixtures/report-run
set -euo pipefail
out=${1:?usage: record-fixture.sh OUT_DIR}
bin=$PWD/target/debug/lowsched
[ -x "$bin" ] || cargo build --quiet
tmp=$(mktemp -d /tmp/lowsched-fixture.XXXXXX)
chmod 755 "$tmp"
port=$((20000 + RANDOM % 20000))
root=lowsched-test-fixture-$$-0
memcached -u root -l 127.0.0.1 -p "$port" -t 1 -m 64 -P "$tmp/mc.pid" -d
for _ in $(seq 50); do [ -s "$tmp/mc.pid" ] && break; sleep 0.1; done
cat >"$tmp/lowsched.toml" <<TOML
socket = "$tmp/s.sock"
state_dir = "$tmp/state"
cgroup_root = "$root"
[service]
enabled = "yes"
pid_file = "$tmp/mc.pid"
process_name = "lowsched-test-none"
address = "127.0.0.1:$port"
TOML
export LOWSCHED_SOCKET=$tmp/s.sock
start_daemon() {
    "$bin" daemon --config "$tmp/lowsched.toml" >>"$tmp/daemon.log" 2>&1 &
    daemon=$!
    for _ in $(seq 100); do "$bin" status >/dev/null 2>&1 && return; sleep 0.1; done
    cat "$tmp/daemon.log"; exit 1
}
cleanup() {
    if [ -n "${lg:-}" ]; then kill "$lg" 2>/dev/null || true; fi
    if [ -n "${daemon:-}" ]; then kill -TERM "$daemon" 2>/dev/null; wait "$daemon" 2>/dev/null || true; fi
    kill "$(cat "$tmp/mc.pid")" 2>/dev/null || true
    for c in /sys/fs/cgroup/*/"$root" /sys/fs/cgroup/unified/"$root"; do
        if [ -d "$c" ]; then find "$c" -depth -type d -exec rmdir {} \; 2>/dev/null || true; fi
    done
}
trap cleanup EXIT
start_daemon
"$bin" loadgen --server "127.0.0.1:$port" --duration 30 --qps-min 2000 --qps-max 30000 \
    --qps-interval 3 >/dev/null 2>&1 &
lg=$!
sleep 3
a=$("$bin" submit --name fft --cpus 1 -- stress-ng --cpu 1 --cpu-method fft --cpu-ops 20000 --quiet)
b=$("$bin" submit --name matrix --cpus 1:2 -- stress-ng --cpu 2 --cpu-method matrixprod --cpu-ops 3000 --quiet)
sleep 2
"$bin" pause "$a"; sleep 3; "$bin" resume "$a"
"$bin" wait "$a" || true
kill -TERM "$daemon"; wait "$daemon" || true
start_daemon
c=$("$bin" submit --name stream -- stress-ng --stream 1 --stream-ops 20 --quiet)
"$bin" wait "$b" || true; "$bin" wait "$c" || true
wait "$lg" || true; lg=
sleep 3
kill -TERM "$daemon"; wait "$daemon" || true; daemon=
mkdir -p "$out"
rm -rf "$out/history"
cp "$tmp/state/events.jsonl" "$out/"
cp -r "$tmp/state/history" "$out/"
echo "recorded into $out: $(wc -l <"$out/events.jsonl") events, $(ls "$out/history" | wc -l) history files"
