#!/usr/bin/env bash
# Integration tests on PURE cgroup v2: builds the test targets below statically and runs them all
# in one boot of QEMU guest A (tests/vm/guest-a.sh; busybox initramfs, no systemd).
set -euo pipefail
cd "$(dirname "$0")/../.."

# The integration test targets (tests/NAME.rs) that run inside guest A. Add yours here.
GUEST_A_TESTS=(
    vm_guest
    actuation
)

built=$(tests/vm/build-static-tests.sh "${GUEST_A_TESTS[@]}") || exit $?
adds=() tests=()
while read -r kind path; do
    adds+=(--add "$path:$path")          # same path in the guest: CARGO_BIN_EXE_* stay valid
    [ "$kind" = test ] && tests+=("$path")
done <<<"$built"

mkdir -p target/vm
runner=target/vm/guest-a-run-tests.sh
{
    echo '#!/bin/sh'
    echo 'failed=0; passed=0'
    for t in "${tests[@]}"; do
        name=$(basename "$t"); name=${name%-*}
        echo "echo '=== guest A: $name'"
        echo "if '$t'; then passed=\$((passed + 1)); else echo 'guest A: $name FAILED'; failed=\$((failed + 1)); fi"
    done
    echo 'echo "guest A: $passed passed, $failed failed (test binaries)"'
    echo '[ $failed -eq 0 ]'
} >"$runner"

rc=0
tests/vm/guest-a.sh --timeout 900 "${adds[@]}" --add "$PWD/$runner:/run-tests.sh" -- sh /run-tests.sh || rc=$?
case $rc in
    0) echo "40-vm-cgroup-v2: ${GUEST_A_TESTS[*]} passed on pure cgroup v2 (guest A)" ;;
    77) echo "40-vm-cgroup-v2: cannot run guest A here (see above)"; exit 77 ;;
    *) echo "40-vm-cgroup-v2: FAILED (rc=$rc) for ${GUEST_A_TESTS[*]}"; exit 1 ;;
esac
