#!/usr/bin/env bash
# The daemon end to end on PURE cgroup v2: the daemon test targets below, built statically, in
# one boot of QEMU guest A (tests/vm/guest-a.sh; busybox initramfs, no systemd). The host runs
# them on its hybrid layout in stage 20; production hosts are pure v2.
# (daemon_security needs perl and daemon_stats memcached, which guest A does not have.)
set -euo pipefail
cd "$(dirname "$0")/../.."

GUEST_A_TESTS=(
    daemon_e2e
    daemon_protocol
    daemon_recovery
)

built=$(tests/vm/build-static-tests.sh "${GUEST_A_TESTS[@]}") || exit $?
adds=() tests=()
while read -r kind path; do
    adds+=(--add "$path:$path")          # same path in the guest: CARGO_BIN_EXE_* stay valid
    [ "$kind" = test ] && tests+=("$path")
done <<<"$built"

mkdir -p target/vm
runner=target/vm/guest-a-daemon-tests.sh
{
    echo '#!/bin/sh'
    echo 'failed=0; passed=0'
    for t in "${tests[@]}"; do
        name=$(basename "$t"); name=${name%-*}
        echo "echo '=== guest A: $name'"
        echo "if '$t' --test-threads 2; then passed=\$((passed + 1)); else echo 'guest A: $name FAILED'; failed=\$((failed + 1)); fi"
    done
    echo 'echo "guest A: $passed passed, $failed failed (test binaries)"'
    echo '[ $failed -eq 0 ]'
} >"$runner"

rc=0
tests/vm/guest-a.sh --timeout 1500 "${adds[@]}" --add "$PWD/$runner:/run-tests.sh" -- sh /run-tests.sh || rc=$?
case $rc in
    0) echo "45-vm-daemon: ${GUEST_A_TESTS[*]} passed on pure cgroup v2 (guest A)" ;;
    77) echo "45-vm-daemon: cannot run guest A here (see above)"; exit 77 ;;
    *) echo "45-vm-daemon: FAILED (rc=$rc) for ${GUEST_A_TESTS[*]}"; exit 1 ;;
esac
