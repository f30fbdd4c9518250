#!/usr/bin/env bash
# Runs integration test targets (tests/NAME.rs), built statically, in one boot of QEMU guest A
# (guest-a.sh: busybox initramfs, pure cgroup v2, no systemd), for a CI stage.
#
#     tests/vm/guest-a-tests.sh STAGE TIMEOUT_S [--args "TEST ARGS"] TARGET...
#
# Exits 0 when every target passed, 77 when guest A cannot run here, 1 otherwise; each line it
# prints about the outcome starts with STAGE.
set -euo pipefail
cd "$(dirname "$0")/../.."

stage=$1 timeout=$2
shift 2
test_args=
if [ "${1:-}" = --args ]; then test_args=$2; shift 2; fi
targets=("$@")

built=$(tests/vm/build-static-tests.sh "${targets[@]}") || exit $?
adds=() tests=()
while read -r kind path; do
    adds+=(--add "$path:$path")          # same path in the guest: CARGO_BIN_EXE_* stay valid
    [ "$kind" = test ] && tests+=("$path")
done <<<"$built"

mkdir -p target/vm
runner=target/vm/guest-a-$stage.sh
{
    echo '#!/bin/sh'
    echo 'failed=0; passed=0'
    for t in "${tests[@]}"; do
        name=$(basename "$t"); name=${name%-*}
        echo "echo '=== guest A: $name'"
        echo "if '$t' $test_args; then passed=\$((passed + 1)); else echo 'guest A: $name FAILED'; failed=\$((failed + 1)); fi"
    done
    echo 'echo "guest A: $passed passed, $failed failed (test binaries)"'
    echo '[ $failed -eq 0 ]'
} >"$runner"

rc=0
tests/vm/guest-a.sh --timeout "$timeout" "${adds[@]}" --add "$PWD/$runner:/run-tests.sh" -- sh /run-tests.sh || rc=$?
case $rc in
    0) echo "$stage: ${targets[*]} passed on pure cgroup v2 (guest A)" ;;
    77) echo "$stage: cannot run guest A here (see above)"; exit 77 ;;
    *) echo "$stage: FAILED (rc=$rc) for ${targets[*]}"; exit 1 ;;
esac
