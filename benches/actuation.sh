#!/usr/bin/env bash
# Launch and freeze latency in the daemon's own path, from its own records (issue 16, point 5;
# not part of the test pass/fail). Run as root on a quiet machine (check `uptime`):
#
#     benches/actuation.sh [JOBS]      # default 300
#     PAUSE=0 benches/actuation.sh     # launches only (no pause/resume clients competing)
#
# Starts `lowsched daemon` (no protected service, temp socket, state dir and cgroup root),
# submits JOBS short jobs (`sleep 0.2`) and, while they run, pauses and resumes each running
# job once through `lowsched pause`/`resume`. Every start and pause the daemon carries out
# writes its duration into its `events.jsonl` (`launch_us`: the request to the job running in
# its groups; `freeze_us`: the freeze written to the kernel's report of the group frozen);
# this script prints their count, median, p99 and max, and the layout the daemon used
# (hybrid or pure v2).
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-300}
[ "$(id -u)" -eq 0 ] || { echo "actuation: run as root" >&2; exit 1; }
bin=${LOWSCHED_BIN:-}
if [ -z "$bin" ]; then
    cargo build --release --locked --quiet
    bin=$PWD/target/release/lowsched
fi
dir=$(mktemp -d)
chmod 755 "$dir"
daemon=
cleanup() {
    if [ -n "$daemon" ]; then kill -TERM "$daemon" 2>/dev/null && wait "$daemon" 2>/dev/null || true; fi
    rm -rf -- "$dir"
}
trap cleanup EXIT
printf '%s\n' "socket = \"$dir/s.sock\"" "state_dir = \"$dir/state\"" \
    'cgroup_root = "lowsched-actuation"' 'log_level = "warning"' \
    '[jobs]' "max_queued_per_user = $((n + 10))" '[service]' 'enabled = "no"' >"$dir/cfg.toml"
"$bin" daemon --config "$dir/cfg.toml" >"$dir/daemon.log" 2>&1 &
daemon=$!
export LOWSCHED_SOCKET=$dir/s.sock
for _ in $(seq 100); do "$bin" status >/dev/null 2>&1 && break; sleep 0.1; done
python3 -c 'import json, sys; json.dump([{"name": "a%d" % i, "argv": ["sleep", "0.2"]} for i in range(int(sys.argv[2]))], open(sys.argv[1], "w"))' "$dir/jobs.json" "$n"
"$bin" submit --file "$dir/jobs.json" >"$dir/ids"
# Pause and resume whatever runs, until every job has ended.
while :; do
    running=$("$bin" status --state running --noheader --format id 2>/dev/null || true)
    left=$("$bin" status --state pending,running,paused --noheader --format id 2>/dev/null | wc -l)
    [ "${PAUSE:-1}" = 0 ] && running=
    for id in $running; do
        "$bin" pause "$id" >/dev/null 2>&1 && "$bin" resume "$id" >/dev/null 2>&1 || true
    done
    [ "$left" -eq 0 ] && break
    sleep 0.05
done
kill -TERM "$daemon"; wait "$daemon" 2>/dev/null || true; daemon=
head -1 "$dir/daemon.log" | sed 's/^<[0-9]>/daemon: /' || true
grep -m1 "cgroup root" "$dir/daemon.log" | sed 's/^<[0-9]>/daemon: /' || true
python3 - "$dir/state/events.jsonl" <<'EOF'
import json, sys
got = {"launch_us": [], "freeze_us": []}
for line in open(sys.argv[1]):
    inputs = json.loads(line).get("inputs") or {}
    for k in got:
        if k in inputs:
            got[k].append(inputs[k])
print("| what | count | median | p90 | p99 | max |")
print("|---|---|---|---|---|---|")
for k, v in got.items():
    v.sort()
    if not v:
        print(f"| {k} | 0 | - | - | - | - |")
        continue
    p = lambda q: v[min(len(v) - 1, int(len(v) * q))]
    print(f"| {k} | {len(v)} | {p(0.5)} us | {p(0.9)} us | {p(0.99)} us | {v[-1]} us |")
EOF
