#!/usr/bin/env bash
# Unit tests and host integration tests (root, hybrid cgroups, real memcached and stress-ng).
# Tests #[ignore]d with a reason (those that only run in a QEMU guest) are listed as not run.
set -euo pipefail
log=target/ci/20-cargo-test.log
mkdir -p target/ci
rc=0
cargo test --locked --all-targets 2>&1 | tee "$log" || rc=$?
if [ -n "${LOWSCHED_NOT_RUN_DIR:-}" ]; then
    # "Running tests/vm_guest.rs (...)" names the target of the "test NAME ... ignored" lines.
    awk '/^ *Running / { t = $2; sub(/^(tests|benches|src)\//, "", t); sub(/\.rs$/, "", t) }
         / \.\.\. ignored/ { name = $2; reason = $0; sub(/.* \.\.\. ignored,? ?/, "", reason);
                             print t "::" name ": " (reason == "" ? "ignored, no reason given" : reason) }' \
        "$log" >"$LOWSCHED_NOT_RUN_DIR/20-cargo-test"
fi
exit $rc
