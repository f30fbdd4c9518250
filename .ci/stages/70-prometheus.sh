#!/usr/bin/env bash
# A real Prometheus scrapes a real daemon: installs the distribution's `prometheus` (with
# promtool) if missing, starts memcached and a lowsched daemon protecting it with
# [metrics] listen set, runs one job, and points Prometheus (1 s scrapes) at the daemon. Then it
# checks over Prometheus's HTTP API that `up` is 1, that the job-state metric and the latency
# histogram hold what the daemon reports (`lowsched metrics`; memcached is stopped first so the
# histogram stands still), that histogram_quantile works on it, and that `promtool check
# metrics` finds no problem in the exposition text. Fails loudly when anything is missing.
set -euo pipefail
cd "$(dirname "$0")/../.."

say() { echo "70-prometheus: $*"; }
fail() { echo "70-prometheus: FAILED: $*" >&2; exit 1; }

if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null || ! command -v curl >/dev/null; then
    say "installing the distribution's prometheus (and curl)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends prometheus curl >/dev/null 2>&1 || {
        apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus curl >/dev/null
    } || fail "cannot install prometheus"
fi
for c in prometheus promtool curl; do command -v "$c" >/dev/null || fail "$c missing after the install"; done
command -v memcached >/dev/null || fail "memcached missing (stage 00-install installs it)"

cargo build --locked --quiet
bin=$PWD/target/debug/lowsched
tmp=$(mktemp -d /tmp/lowsched-prometheus.XXXXXX)
chmod 755 "$tmp"
root=lowsched-test-prometheus-$$-0
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
mc_port=$(free_port); m_port=$(free_port); p_port=$(free_port)
export LOWSCHED_SOCKET=$tmp/s.sock

cleanup() {
    if [ -n "${prom:-}" ]; then kill "$prom" 2>/dev/null || true; wait "$prom" 2>/dev/null || true; fi
    if [ -n "${daemon:-}" ]; then kill -TERM "$daemon" 2>/dev/null || true; wait "$daemon" 2>/dev/null || true; fi
    if [ -s "$tmp/mc.pid" ]; then kill "$(cat "$tmp/mc.pid")" 2>/dev/null || true; fi
    for c in /sys/fs/cgroup/*/"$root" /sys/fs/cgroup/unified/"$root"; do
        if [ -d "$c" ]; then find "$c" -depth -type d -exec rmdir {} \; 2>/dev/null || true; fi
    done
    rm -rf "$tmp"
}
trap cleanup EXIT

memcached -u root -l 127.0.0.1 -p "$mc_port" -t 1 -m 64 -P "$tmp/mc.pid" -d
for _ in $(seq 50); do [ -s "$tmp/mc.pid" ] && break; sleep 0.1; done
[ -s "$tmp/mc.pid" ] || fail "memcached did not start"
cat >"$tmp/lowsched.toml" <<TOML
socket = "$tmp/s.sock"
state_dir = "$tmp/state"
cgroup_root = "$root"
[service]
enabled = "yes"
pid_file = "$tmp/mc.pid"
process_name = "lowsched-test-none"
address = "127.0.0.1:$mc_port"
[metrics]
listen = "127.0.0.1:$m_port"
TOML
"$bin" daemon --config "$tmp/lowsched.toml" >"$tmp/daemon.log" 2>&1 &
daemon=$!
for _ in $(seq 300); do "$bin" status >/dev/null 2>&1 && break; sleep 0.1; done
"$bin" status >/dev/null || { cat "$tmp/daemon.log"; fail "daemon did not answer"; }
id=$("$bin" submit --name probe-job -- true)
"$bin" wait "$id" || fail "job $id did not succeed"

cat >"$tmp/prometheus.yml" <<YML
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: lowsched
    static_configs:
      - targets: ["127.0.0.1:$m_port"]
YML
promtool check config "$tmp/prometheus.yml" >/dev/null || fail "promtool rejects the test config"
prometheus --config.file="$tmp/prometheus.yml" --storage.tsdb.path="$tmp/tsdb" \
    --web.listen-address="127.0.0.1:$p_port" >"$tmp/prometheus.log" 2>&1 &
prom=$!

# One instant query's first value ("" when there is none yet).
query() {
    curl -sf --get "http://127.0.0.1:$p_port/api/v1/query" --data-urlencode "query=$1" |
        python3 -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(r[0]["value"][1] if r else "")' \
        2>/dev/null || true
}
# Waits up to $2 seconds for query $1 to return $3.
expect() {
    local got=""
    for _ in $(seq "$2"); do
        got=$(query "$1")
        [ "$got" = "$3" ] && { say "ok: $1 = $got"; return 0; }
        sleep 1
    done
    tail -5 "$tmp/prometheus.log" >&2
    fail "$1 is '${got}', the daemon says '$3'"
}
# The value of one sample of `lowsched metrics`.
daemon_value() { "$bin" metrics | awk -v s="$1" '$1 == s { print $2 }'; }

expect 'up{job="lowsched"}' 60 1
expect 'lowsched_jobs{state="succeeded",origin="submit"}' 30 "$(daemon_value 'lowsched_jobs{state="succeeded",origin="submit"}')"
expect 'lowsched_cores{pool="service"}' 30 "$(daemon_value 'lowsched_cores{pool="service"}')"

# Stop memcached so no probe is answered any more: the latency histogram stands still.
for _ in $(seq 100); do
    [ "$(daemon_value lowsched_service_latency_seconds_count)" != "0" ] && break; sleep 0.2
done
kill "$(cat "$tmp/mc.pid")"; rm -f "$tmp/mc.pid"
sleep 3
count=$(daemon_value lowsched_service_latency_seconds_count)
inf=$(daemon_value 'lowsched_service_latency_seconds_bucket{le="+Inf"}')
le800=$(daemon_value 'lowsched_service_latency_seconds_bucket{le="0.0008"}')
[ "$count" != "0" ] && [ -n "$count" ] || fail "the daemon measured no latency"
expect lowsched_service_latency_seconds_count 30 "$count"
expect 'lowsched_service_latency_seconds_bucket{le="+Inf"}' 10 "$inf"
expect 'lowsched_service_latency_seconds_bucket{le="0.0008"}' 10 "$le800"
q=$(query 'histogram_quantile(0.95, lowsched_service_latency_seconds_bucket)')
python3 -c "import sys; v=float(sys.argv[1]); assert 0 < v <= 1, v" "$q" ||
    fail "histogram_quantile(0.95) over the latency buckets is '$q'"
say "ok: histogram_quantile(0.95, lowsched_service_latency_seconds_bucket) = $q s"

"$bin" metrics >"$tmp/metrics.txt"
if ! promtool check metrics <"$tmp/metrics.txt" >"$tmp/promtool.out" 2>&1 || [ -s "$tmp/promtool.out" ]; then
    cat "$tmp/promtool.out" >&2
    fail "promtool check metrics found problems"
fi
say "ok: promtool check metrics: no problems in $(grep -c '^# TYPE' "$tmp/metrics.txt") metrics"
say "passed: Prometheus $(prometheus --version 2>&1 | awk 'NR==1 {print $3}') scraped the daemon"
