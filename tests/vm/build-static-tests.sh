#!/usr/bin/env bash
# Builds integration test targets and the crate's binaries as static executables (glibc
# crt-static) for guest A, which has no libc, and prints what it built, one per line:
#
#   tests/vm/build-static-tests.sh TEST_TARGET...
#   -> "test /abs/path/to/target/static/.../deps/NAME-HASH"   (one per TEST_TARGET, in order)
#      "bin /abs/path/to/target/static/x86_64-unknown-linux-gnu/debug/BIN"   (each [[bin]])
#
# Put every printed file into the guest at the SAME absolute path (guest-a.sh --add P:P): tests
# then find the binaries through env!("CARGO_BIN_EXE_<name>") as on the host.
# Cargo's output goes to stderr; build dir: target/static (cargo keeps it incremental).
set -euo pipefail
cd "$(dirname "$0")/../.."
[ $# -ge 1 ] || { echo "usage: tests/vm/build-static-tests.sh TEST_TARGET..." >&2; exit 2; }
command -v cargo >/dev/null || { echo "cannot run: cargo not found" >&2; exit 77; }
command -v python3 >/dev/null || { echo "cannot run: python3 not found" >&2; exit 77; }

args=()
for t in "$@"; do args+=(--test "$t"); done

json=$(mktemp)
trap 'rm -f "$json"' EXIT
# Cargo builds the [[bin]]s for integration tests itself (for CARGO_BIN_EXE_<name>), with the
# same features the tests see. Line tables keep panics' backtraces useful while the executables stay small enough for an
# initramfs. The profile override only affects target/static.
RUSTFLAGS="-C target-feature=+crt-static" CARGO_PROFILE_DEV_DEBUG=line-tables-only \
    cargo test --locked --no-run --target x86_64-unknown-linux-gnu --target-dir target/static \
    --message-format=json-render-diagnostics "${args[@]}" >"$json"

python3 - "$json" "$@" <<'EOF'
import json, sys
path, wanted = sys.argv[1], sys.argv[2:]
tests, bins = {}, {}
for line in open(path):
    if not line.startswith("{"):
        continue
    m = json.loads(line)
    if m.get("reason") != "compiler-artifact" or not m.get("executable"):
        continue
    t = m["target"]
    if "test" in t["kind"] and m["profile"]["test"]:
        tests[t["name"]] = m["executable"]
    elif "bin" in t["kind"]:
        bins[t["name"]] = m["executable"]
missing = [w for w in wanted if w not in tests]
if missing:
    sys.exit("build-static-tests: cargo reported no executable for test target(s): " + " ".join(missing))
for w in wanted:
    print("test", tests[w])
for name in sorted(bins):
    print("bin", bins[name])
EOF
