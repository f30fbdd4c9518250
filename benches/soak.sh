#!/usr/bin/env bash
# Load and soak of the daemon under abuse (issue 15, point 8; not part of the test pass/fail).
# Run as root on a quiet machine (check `uptime`):
#
#     benches/soak.sh [SOAK_SECONDS]      # default 600
#
# 1. 1000 concurrent clients (`status`, from 4 users the script creates): how many answered.
# 2. 10 000 queued jobs behind a blocker: the daemon's RSS and `status` latency (median of 5),
#    then RSS once they are cancelled.
# 3. SOAK_SECONDS of submit/pause/resume/cancel churn from the 4 users: the daemon's RSS and
#    open descriptors sampled every 10 s, printed as a table (look for a growth trend).
# The users, the daemon and its cgroups are removed at exit.
set -euo pipefail
cd "$(dirname "$0")/.."
soak=${1:-600}
[ "$(id -u)" -eq 0 ] || { echo "soak: run as root" >&2; exit 1; }
cargo build --release --locked --quiet
bin=$PWD/target/release/lowsched
dir=$(mktemp -d)
chmod 755 "$dir"
users=()
daemon=
cleanup() {
    if [ -n "$daemon" ]; then kill -TERM "$daemon" 2>/dev/null && wait "$daemon" 2>/dev/null || true; fi
    for u in "${users[@]}"; do
        pkill -KILL -u "$u" 2>/dev/null || true
        userdel "$u" 2>/dev/null || true
    done
    rm -rf -- "$dir"
}
trap cleanup EXIT
for i in 1 2 3 4; do
    u=lssoak$$x$i
    useradd --no-create-home --shell /bin/sh --user-group "$u"
    users+=("$u")
done
printf '%s\n' "socket = \"$dir/s.sock\"" "state_dir = \"$dir/state\"" \
    'cgroup_root = "lowsched-soak"' 'log_level = "warning"' \
    '[server]' 'max_connections = 1024' 'max_connections_per_user = 300' \
    '[jobs]' 'max_jobs_per_user = 20000' '[service]' 'enabled = "no"' >"$dir/cfg.toml"
"$bin" daemon --config "$dir/cfg.toml" >"$dir/daemon.log" 2>&1 &
daemon=$!
for _ in $(seq 100); do [ -S "$dir/s.sock" ] && break; sleep 0.1; done
chmod 666 "$dir/s.sock"
as() { runuser -u "$1" -- "$bin" --socket "$dir/s.sock" "${@:2}"; }
rss() { awk '/^VmRSS/ {print $2}' "/proc/$daemon/status"; }
fds() { find "/proc/$daemon/fd" -mindepth 1 -maxdepth 1 | wc -l; }

echo "== 1000 concurrent clients"
for i in $(seq 1000); do
    (as "${users[$((i % 4))]}" status --json >/dev/null 2>&1 && echo ok) &
done >"$dir/answers"
wait
echo "answered: $(grep -c ok "$dir/answers") / 1000"

echo "== 10000 queued jobs"
"$bin" --socket "$dir/s.sock" submit --cpus 2 -- sleep 100000 >/dev/null
python3 -c 'import json, sys; json.dump([{"name": "q%d" % i, "argv": ["true"]} for i in range(10000)], open(sys.argv[1], "w"))' "$dir/jobs.json"
chmod 644 "$dir/jobs.json"
echo "rss before: $(rss) kB"
as "${users[0]}" submit --file "$dir/jobs.json" >/dev/null
echo "rss with 10000 queued: $(rss) kB"
for _ in 1 2 3 4 5; do
    s=$(date +%s%N)
    "$bin" --socket "$dir/s.sock" status --json >"$dir/status.json"
    echo $(( ($(date +%s%N) - s) / 1000000 ))
done | sort -n | sed -n 3p | sed 's/^/status latency median: /; s/$/ ms/'
python3 - "$dir/status.json" "$dir/s.sock" <<'PY'
import json, socket, sys
ids = [j["id"] for j in json.load(open(sys.argv[1])) if j["state"] == "pending"]
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[2]); f = s.makefile("rw")
for i in ids:
    f.write(json.dumps({"v": 1, "verb": "cancel", "id": i}) + "\n"); f.flush(); f.readline()
PY
echo "rss after cancelling them: $(rss) kB"

echo "== soak: ${soak}s of churn from 4 users"
printf '%6s %10s %6s\n' t_s rss_kB fds
end=$(( $(date +%s) + soak ))
for u in "${users[@]}"; do
    (while [ "$(date +%s)" -lt $end ]; do
        id=$(as "$u" submit -- sleep 5 2>/dev/null) || continue
        as "$u" pause "$id" >/dev/null 2>&1 || true
        as "$u" resume "$id" >/dev/null 2>&1 || true
        as "$u" cancel "$id" >/dev/null 2>&1 || true
    done) &
done
t0=$(date +%s)
while [ "$(date +%s)" -lt $end ]; do
    printf '%6d %10d %6d\n' $(( $(date +%s) - t0 )) "$(rss)" "$(fds)"
    sleep 10
done
wait
printf '%6d %10d %6d  (end)\n' $(( $(date +%s) - t0 )) "$(rss)" "$(fds)"
