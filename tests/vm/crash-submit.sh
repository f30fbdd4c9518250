#!/bin/bash
# Stage 50's crash test, first boot (tests/vm/guest-b.sh --reset-first), as root in guest B with
# lowsched installed and enabled as for tests/vm/check-systemd.sh. Submits jobs, and as soon as
# the last submit is acknowledged resets the machine without syncing (sysrq b). The second boot
# (tests/vm/check-crash.sh) checks that every acknowledged job is in the journal and runs
# exactly once.
#
# The jobs must not start before the reset (a job running at a crash is lost, by design): a
# blocker job claims all of the node's memory, and each job asks for 1 MiB, so they stay pending.
# Only a sync puts data on the disk here: the kernel's periodic writeback is switched off and
# the root file system's journal commits only every hour, so a submit acknowledged without its
# fdatasync is still in the page cache when the machine resets, and is lost.
set -u
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
fail() { echo "crash-submit: FAILED: $*"; exit 1; }
nonce=${LOWSCHED_VM_NONCE:?}

for _ in $(seq 240); do lowsched status >/dev/null 2>&1 && break; sleep 0.5; done
lowsched status >/dev/null 2>&1 || fail "lowsched does not answer"
runs=/var/lib/lowsched-crash/runs
mkdir -p "$(dirname "$runs")"
: >"$runs"

mem_kb=$(sed -n 's/^MemTotal: *\([0-9]*\) kB/\1/p' /proc/meminfo)
blocker=$(lowsched submit --name blocker --memory "${mem_kb}k" -- sleep 100000) || fail "blocker refused"
for _ in $(seq 240); do
    [ "$(lowsched status "$blocker" | sed -n 's/^state: *//p')" = running ] && break
    sleep 0.5
done
[ "$(lowsched status "$blocker" | sed -n 's/^state: *//p')" = running ] || fail "the blocker never ran"

# Everything so far is on the disk; from here on only what is synced will be.
sync
echo 0 >/proc/sys/vm/dirty_writeback_centisecs
mount -o remount,commit=3600 / || fail "cannot lengthen the journal commit interval"

job=(--memory 1m -- sh -c "echo \$LOWSCHED_JOB_ID >>$runs && sync $runs")
ids=()
# One at a time (one fdatasync each) ...
for _ in 1 2 3; do
    id=$(lowsched submit --name one "${job[@]}") || fail "submit refused"
    ids+=("$id")
done
# ... four at once (group commit) ...
tmp=/run/lowsched-crash
mkdir -p $tmp
for i in 1 2 3 4; do lowsched submit --name together "${job[@]}" >"$tmp/$i" & done
wait
for i in 1 2 3 4; do ids+=("$(cat "$tmp/$i")"); done
# ... and a job list in one request.
printf '[%s]\n' "$(for i in 1 2 3 4 5; do
    printf '{"name":"listed","argv":["sh","-c","echo $LOWSCHED_JOB_ID >>%s && sync %s"],"memory":"1m"}' "$runs" "$runs"
    [ "$i" -lt 5 ] && printf ','
done)" >"$tmp/jobs.json"
while read -r id; do ids+=("$id"); done < <(lowsched submit --file "$tmp/jobs.json")

acked=$(IFS=,; echo "${ids[*]}")
[ ${#ids[@]} -eq 12 ] && [[ $acked =~ ^[0-9]+(,[0-9]+)*$ ]] || fail "12 ids expected, got '$acked'"
# Through the kernel's log, which reaches the serial console before the reset (a write to the
# console tty may still sit in its buffer when the machine goes). Level 2, above `quiet`.
kmsg() { echo "<2>$*" >/dev/kmsg; }
kmsg "LOWSCHED_VM_CARRY $nonce acked=$acked"
kmsg "LOWSCHED_VM_CARRY $nonce blocker=$blocker"
kmsg "LOWSCHED_VM_RESET $nonce: 12 submits acknowledged ($acked), the blocker is job $blocker; resetting now"
echo b >/proc/sysrq-trigger
sleep 30
fail "the machine did not reset"
