#!/bin/sh
# Runs in QEMU guest B (systemd, pure cgroup v2) with slurmd, slurmctld and munge installed
# (tests/slurm/guest-b.sh): starts them through their systemd units with the cgroup/v2 plugin,
# runs one batch job and prints where Slurm put it, what `scontrol suspend` does to its group,
# and whether the job finishes. Exit 0 only if every step worked.
fail() { echo "slurm-guest-b: FAILED: $*"; journalctl --no-pager -b -u slurmd -u slurmctld -n 40; exit 1; }
say() { echo "slurm-guest-b: $*"; }
t0=$(date +%s)
# The guest has no network but lo. glibc's getaddrinfo(AI_ADDRCONFIG), which Slurm uses,
# returns nothing for IPv4 names while the only IPv4 address is 127.0.0.1 ("Unable to
# resolve" the controller, slurmd failing at boot); any other address, even on lo, fixes it.
ip addr add 10.254.0.1/32 dev lo
say "units at boot (munge dbus.socket slurmctld slurmd): $(systemctl is-active munge dbus.socket slurmctld slurmd | tr '\n' ' ')"
systemctl reset-failed slurmctld slurmd
systemctl restart slurmctld
sleep 2
say "units after a restart of slurmctld: $(systemctl is-active munge dbus.socket slurmctld slurmd | tr '\n' ' ')"
for u in munge slurmctld slurmd; do
    systemctl is-active -q "$u" && continue
    say "starting $u"
    timeout 120 systemctl start "$u" || {
        systemctl --no-pager status "$u" | tail -n 15
        fail "$u did not start"
    }
done
i=0
until [ "$(sinfo -h -N -o %t 2>/dev/null)" = idle ]; do
    i=$((i + 1)); [ $i -le 300 ] || fail "node not idle after 300 s: $(sinfo -h -N -o '%t %E' 2>&1)"
    [ $((i % 30)) -ne 0 ] || say "waiting for an idle node: $(sinfo -h -N -o '%t %E' 2>&1)"
    sleep 1
done
say "node idle $(( $(date +%s) - t0 )) s after starting the units; slurmd in $(cat /proc/$(pidof slurmd)/cgroup)"
mkdir -p /tmp/job
cat >/tmp/job/job.sh <<'JOB'
#!/bin/sh
echo "start cpus $(grep Cpus_allowed_list /proc/self/status | cut -f2)"
i=0; while [ $i -lt 400000 ]; do i=$((i + 1)); done
echo "done $i"
JOB
chmod +x /tmp/job/job.sh
id=$(sbatch --parsable -n 2 -o /tmp/job/out.txt /tmp/job/job.sh) || fail "sbatch"
i=0
until [ "$(squeue -h -j "$id" -o %T)" = RUNNING ]; do
    i=$((i + 1)); [ $i -le 120 ] || fail "job $id not running: $(squeue -h -j "$id" -o '%T %r')"; sleep 1
done
sleep 2
say "job $id running; its groups:"
find /sys/fs/cgroup -path '*slurmstepd*' -type d | sed 's/^/    /'
job_dir=$(find /sys/fs/cgroup -type d -name "job_$id" | head -n1)
: "${narrow:=}"
[ -n "$job_dir" ] || fail "no job_$id group"
for d in "$job_dir" "$job_dir"/step_*; do
    say "  $d: cpuset.cpus=$(cat "$d/cpuset.cpus" 2>&1) procs=$(cat "$d/cgroup.procs" | tr '\n' ' ') controllers=$(cat "$d/cgroup.controllers")"
done
# What lowsched does on v2: narrow steps first, then the job; freeze only step_*/user (slurmstepd
# stays in step_*/slurm); then Slurm's suspend and resume on top of that freeze.
user=$job_dir/step_batch/user
alloc=$(cat "$job_dir/cpuset.cpus")
first=${alloc%%[-,]*}
narrow=$(cat "$job_dir/cpuset.cpus.effective")
echo "$((first + 1))" >"$job_dir/step_batch/cpuset.cpus" && echo "$((first + 1))" >"$job_dir/cpuset.cpus" \
    || fail "narrowing job_$id from [$alloc] to [$((first + 1))]"
say "narrowed job_$id [$alloc] -> [$(cat "$job_dir/cpuset.cpus.effective")]; its task: $(grep Cpus_allowed_list /proc/$(head -n1 "$user/task_special/cgroup.procs" 2>/dev/null || head -n1 "$user/cgroup.procs")/status | cut -f2)"
echo "$alloc" >"$job_dir/cpuset.cpus" && echo "$alloc" >"$job_dir/step_batch/cpuset.cpus" || fail "widening job_$id back"
echo 1 >"$user/cgroup.freeze"
i=0
until grep -q 'frozen 1' "$user/cgroup.events"; do i=$((i + 1)); [ $i -le 100 ] || fail "step_batch/user not frozen"; sleep 0.1; done
say "froze step_batch/user (lowsched's freeze); slurmstepd in step_batch/slurm: $(cat "$job_dir/step_batch/slurm/cgroup.procs" | tr '\n' ' '), frozen $(grep frozen "$job_dir/step_batch/slurm/cgroup.events" | cut -d' ' -f2)"
scontrol suspend "$id" || fail "scontrol suspend"
sleep 4
say "after scontrol suspend: squeue $(squeue -h -j "$id" -o %T); user/ $(grep frozen "$user/cgroup.events"), step_batch $(grep frozen "$job_dir/step_batch/cgroup.events")"
scontrol resume "$id" || fail "scontrol resume"
sleep 2
say "after scontrol resume: squeue $(squeue -h -j "$id" -o %T); user/ cgroup.freeze=$(cat "$user/cgroup.freeze") $(grep frozen "$user/cgroup.events")"
echo 0 >"$user/cgroup.freeze"
i=0
until [ -z "$(squeue -h -j "$id" -o %T 2>/dev/null)" ]; do
    i=$((i + 1)); [ $i -le 600 ] || fail "job $id did not finish"; sleep 1
done
say "job output: $(tr '\n' ' ' </tmp/job/out.txt)"
grep -q '^done' /tmp/job/out.txt || fail "job did not finish its work"
say "ok after $(( $(date +%s) - t0 )) s"
