#!/bin/bash
# Stage 50's crash test, second boot (after tests/vm/crash-submit.sh reset the machine without
# syncing), as root in guest B: every job whose submit was acknowledged before the crash is in
# the journal, and runs exactly once. The acknowledged ids and the blocker's id come on the
# kernel command line (lowsched_vm.acked=1,2,... lowsched_vm.blocker=N, from guest-b.sh).
set -u
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
failed=0 checks=0
ok() { checks=$((checks + 1)); echo "  ok: $1"; }
bad() { checks=$((checks + 1)); failed=$((failed + 1)); echo "  FAILED: $1"; }
arg() { tr ' ' '\n' </proc/cmdline | sed -n "s/^lowsched_vm\.$1=//p"; }
state() { lowsched status "$1" 2>/dev/null | sed -n 's/^state: *//p'; }
runs=/var/lib/lowsched-crash/runs
acked=$(arg acked | tr , ' ') blocker=$(arg blocker)
[ -n "$acked" ] && [ -n "$blocker" ] || { echo "check-crash: no lowsched_vm.acked/blocker on the kernel command line"; exit 1; }
echo "check-crash: after a reset without sync; acknowledged before it: $acked (blocker $blocker)"

for _ in $(seq 240); do lowsched status >/dev/null 2>&1 && break; sleep 0.5; done
journalctl -b -u lowsched --no-pager -o cat | grep -m1 'recovered' | sed 's/^/    journal: /'
for id in $acked; do
    if [ -n "$(state "$id")" ]; then ok "job $id, acknowledged before the crash, is in the journal ($(state "$id"))"
    else bad "job $id, acknowledged before the crash, is unknown after it"; fi
done
# The blocker was running at the crash: lost (failed), or pending again if its start was not
# yet on disk; either way it must go so the others can start.
echo "    blocker $blocker after the crash: $(state "$blocker")"
lowsched cancel "$blocker" >/dev/null 2>&1
for id in $acked; do
    [ -n "$(state "$id")" ] || continue
    timeout 300 lowsched wait "$id" >/dev/null 2>&1
    code=$?
    if [ "$code" = 0 ]; then ok "job $id ran and succeeded"; else bad "job $id: wait gave $code ($(state "$id"))"; fi
done
for id in $acked; do
    n=$(grep -cx "$id" "$runs" 2>/dev/null)
    if [ "$n" = 1 ]; then ok "job $id ran exactly once"; else bad "job $id ran ${n:-0} times"; fi
done
others=$(grep -vxF -f <(tr ' ' '\n' <<<"$acked" | sed '/^$/d') "$runs" 2>/dev/null | tr '\n' ' ')
if [ -z "$others" ]; then ok "no other job ran"; else bad "jobs that were never acknowledged ran: $others"; fi
echo "check-crash: $((checks - failed))/$checks checks passed"
[ $failed -eq 0 ]
