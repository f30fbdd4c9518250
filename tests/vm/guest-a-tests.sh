#!/usr/bin/env bash
# Runs integration test targets (tests/NAME.rs), built statically, in one boot of QEMU guest A
# (guest-a.sh: busybox initramfs, pure cgroup v2, no systemd), for a CI stage.
#
#     tests/vm/guest-a-tests.sh STAGE TIMEOUT_S [--smp N] [--args "TEST ARGS"]
#         [--leave-out "PATTERN=REASON"]... TARGET...
#
# --smp: the guest's vCPUs (default 4; each is a TCG thread on the host's 2 cores).
# --leave-out: tests whose name contains PATTERN are not run in the guest (libtest's --skip);
# they are listed, with REASON, as not run (and in $LOWSCHED_NOT_RUN_DIR/STAGE when set).
# Exits 0 when every target passed, 77 when guest A cannot run here, 1 otherwise; each line it
# prints about the outcome starts with STAGE.
set -euo pipefail
cd "$(dirname "$0")/../.."

stage=$1 timeout=$2
shift 2
test_args= smp=4 leave_out=()
while [ $# -ge 2 ]; do
    case $1 in
        --args) test_args=$2; shift 2 ;;
        --smp) smp=$2; shift 2 ;;
        --leave-out) leave_out+=("$2"); shift 2 ;;
        *) break ;;
    esac
done
targets=("$@")
for l in "${leave_out[@]}"; do test_args+=" --skip ${l%%=*}"; done

built=$(tests/vm/build-static-tests.sh "${targets[@]}") || exit $?
adds=() tests=()
while read -r kind path; do
    adds+=(--add "$path:$path")          # same path in the guest: CARGO_BIN_EXE_* stay valid
    [ "$kind" = test ] && tests+=("$path")
done <<<"$built"

# The tests left out, listed (the static test binaries run on the host too, for --list).
not_run=""
for t in "${tests[@]}"; do
    name=$(basename "$t"); name=${name%-*}
    for l in "${leave_out[@]}"; do
        while read -r test; do
            [ -n "$test" ] && not_run+="$name::$test: ${l#*=}"$'\n'
        done < <("$t" --list --format terse --include-ignored "${l%%=*}" | sed -n 's/: test$//p')
    done
done
if [ -n "$not_run" ]; then
    echo "$stage: not run in guest A:"
    printf '%s' "$not_run" | sed 's/^/    /'
fi
if [ -n "${LOWSCHED_NOT_RUN_DIR:-}" ]; then printf '%s' "$not_run" >"$LOWSCHED_NOT_RUN_DIR/$stage"; fi

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

crash_log=${LOWSCHED_VM_CACHE:-target/vm}/logs/guest-a.crash.log
started=$(date +%s)
rc=0
tests/vm/guest-a.sh --timeout "$timeout" --smp "$smp" "${adds[@]}" --add "$PWD/$runner:/run-tests.sh" \
    -- sh /run-tests.sh || rc=$?
retried=
if [ -f "$crash_log" ] && [ "$(stat -c %Y "$crash_log")" -ge "$started" ]; then
    retried=" (after a GUEST KERNEL CRASH on the first boot, see $crash_log)"
fi
case $rc in
    0) echo "$stage: ${targets[*]} passed on pure cgroup v2 (guest A)$retried" ;;
    77) echo "$stage: cannot run guest A here (see above)"; exit 77 ;;
    *) echo "$stage: FAILED (rc=$rc) for ${targets[*]}$retried"; exit 1 ;;
esac
