#!/usr/bin/env bash
# A sweep through Slurm for real: starts a single-node Slurm cluster on this machine (munged,
# slurmctld, slurmd from Debian's packages; CPU only; its own config, ports, munge socket and
# state under a temp dir, so it does not touch a system Slurm or munge), runs the coordinator
# through deploy/slurm/kvsweep-coordinator.sbatch (plain bash, loopback, a temp database),
# submits 8 distinct jobs with the kvsweep CLI, runs deploy/slurm/kvsweep-workers.sbatch as a
# 3-task array with `sbatch --wait` (fake evaluator, --exit-when-idle), and checks that every
# array task exited 0 after going idle and that every job has exactly one result; then 8 more
# through one task with KVSWEEP_DEVICES=cpu:2 (a supervised worker per device), both recording.
#
#   run_slurm_test.sh COORDINATOR_BIN WORKER_BIN CLI_BIN ASSETS_DIR
#
# Needs root (slurmd runs jobs as their user; the test submits as root). Prints "SKIP: <why>"
# and exits 0 when not root or when the Slurm/munge binaries are missing, except that with
# CI=true missing binaries are a failure (deploy/setup-debian.sh installs them). Everything it
# starts is stopped, and its temp dir removed, on success and on failure
# (KVSWEEP_SLURM_TEST_KEEP=1 keeps the temp dir: logs, slurm.conf, database).
set -uo pipefail

if [ $# -ne 4 ]; then
  echo "usage: $0 COORDINATOR_BIN WORKER_BIN CLI_BIN ASSETS_DIR" >&2
  exit 2
fi
coordinator_bin="$(realpath "$1")"
worker_bin="$(realpath "$2")"
cli_bin="$(realpath "$3")"
assets="$(realpath "$4")"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export PATH="$PATH:/usr/sbin:/sbin"

. "$repo/tests/deploy/lib.sh"
require_root "to run slurmd and slurmctld"
require_tools "apt-get install slurm-wlm munge" \
  munged munge mungekey slurmctld slurmd sbatch sinfo squeue scontrol scancel
for f in "$coordinator_bin" "$worker_bin" "$cli_bin"; do
  [ -x "$f" ] || { echo "FAIL: $f is not an executable"; exit 1; }
done
[ -f "$assets/models/ref-llama/config.json" ] || { echo "FAIL: no ref-llama in $assets"; exit 1; }

# Nothing from an enclosing Slurm job (ctest run inside one) or a system config may leak in.
while read -r v; do unset "$v"; done < <(env | sed -n 's/^\(SLURM_[A-Za-z0-9_]*\)=.*/\1/p')

tmp="$(mktemp -d /tmp/kvsweep-slurm-test.XXXXXX)"
chmod 755 "$tmp"   # slurmstepd and munged check the path; jobs run as root anyway
node="$(hostname -s 2>/dev/null || hostname)"
pids=()            # daemons, stopped in reverse order
coord_pid=""
job_id=""

log_tails() {
  for f in "$tmp"/munge/munged.log "$tmp"/slurmctld.log "$tmp"/slurmd.log "$tmp"/*.out \
           "$tmp"/coordinator.log "$tmp"/slurm.conf; do
    [ -f "$f" ] || continue
    echo "----- $f (last 40 lines)"
    tail -n 40 "$f"
  done
}
fail() {
  echo "FAIL: $*"
  log_tails
  exit 1
}
stop_pid() {  # TERM, up to 10 s, then KILL
  local pid="$1"
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
}
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "$job_id" ] && [ -n "${SLURM_CONF:-}" ]; then
    timeout 10 scancel "$job_id" 2>/dev/null
    # Let slurmd end the job's processes before it goes away itself.
    for _ in $(seq 1 100); do
      [ -z "$(timeout 5 squeue -h -j "$job_id" 2>/dev/null)" ] && break
      sleep 0.2
    done
  fi
  [ -n "$coord_pid" ] && stop_pid "$coord_pid"
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do stop_pid "${pids[i]}"; done
  if [ -n "${KVSWEEP_SLURM_TEST_KEEP:-}" ]; then echo "kept $tmp"; else rm -rf "$tmp"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

# Two free TCP ports for slurmctld and slurmd (the kernel's pick, so runs do not clash).
free_ports() {
  python3 - <<'PY'
import socket
socks = []
for _ in range(2):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}
if command -v python3 >/dev/null 2>&1; then
  read -r ctld_port slurmd_port < <(free_ports)
else
  ctld_port=$((20000 + RANDOM % 20000)); slurmd_port=$((ctld_port + 1))
fi
[ -n "${slurmd_port:-}" ] || fail "cannot pick free ports"

# --- munge: its own key and socket ---
mkdir -p "$tmp/munge" && chmod 700 "$tmp/munge"
munge_socket="$tmp/munge/munge.socket"
if ! mungekey --create --keyfile="$tmp/munge/munge.key" 2>"$tmp/munge/mungekey.err"; then
  dd if=/dev/urandom of="$tmp/munge/munge.key" bs=1024 count=1 2>/dev/null
fi
chmod 400 "$tmp/munge/munge.key"
munged --foreground --force --socket="$munge_socket" --key-file="$tmp/munge/munge.key" \
  --pid-file="$tmp/munge/munged.pid" --log-file="$tmp/munge/munged.log" \
  --seed-file="$tmp/munge/munged.seed" >"$tmp/munge/munged.out" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
  munge -n -S "$munge_socket" 2>/dev/null | unmunge -S "$munge_socket" >/dev/null 2>&1 && break
  sleep 0.1
done
munge -n -S "$munge_socket" | unmunge -S "$munge_socket" >/dev/null 2>&1 ||
  fail "munged on $munge_socket does not answer after 10 s ($(cat "$tmp/munge/munged.out"))"

# --- slurm.conf: one node, this machine, CPU only, no cgroups, no accounting ---
cpus="$(nproc)"
mem_avail_mb=$(($(sed -n 's/^MemAvailable: *\([0-9]*\) kB/\1/p' /proc/meminfo) / 1024))
real_memory=$((mem_avail_mb * 8 / 10))
mkdir -p "$tmp/state" "$tmp/spool/slurmd"
cat >"$tmp/slurm.conf" <<EOF
ClusterName=kvsweeptest
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$munge_socket
StateSaveLocation=$tmp/state
SlurmdSpoolDir=$tmp/spool/slurmd
SlurmctldPidFile=$tmp/slurmctld.pid
SlurmdPidFile=$tmp/slurmd.pid
SlurmctldLogFile=$tmp/slurmctld.log
SlurmdLogFile=$tmp/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MinJobAge=600
MailProg=/bin/true
KillWait=10
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$real_memory State=UNKNOWN
PartitionName=kvsweeptest Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF="$tmp/slurm.conf"

slurmctld -D -c -f "$SLURM_CONF" >"$tmp/slurmctld.out" 2>&1 &
pids+=($!)
slurmd -D -N "$node" -f "$SLURM_CONF" >"$tmp/slurmd.out" 2>&1 &
pids+=($!)
state=""
for _ in $(seq 1 120); do  # up to 60 s
  state="$(timeout 5 sinfo -h -N -n "$node" -o %t 2>/dev/null | head -n1)"
  [ "$state" = idle ] && break
  for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null || fail "a Slurm daemon (pid $p) exited"; done
  sleep 0.5
done
[ "$state" = idle ] || fail "node $node is not idle after 60 s (sinfo state '$state')"
echo "slurm: node $node idle ($cpus CPUs, RealMemory=$real_memory; ports $ctld_port/$slurmd_port)"

# --- coordinator: the deploy script run directly, on loopback, with a temp database ---
shared="$tmp/shared"
KVSWEEP_DIR="$shared" KVSWEEP_DB="$tmp/sweeps.db" KVSWEEP_PORT=0 KVSWEEP_LISTEN_HOST=127.0.0.1 \
  KVSWEEP_ADVERTISE_HOST=127.0.0.1 KVSWEEP_COORDINATOR_BIN="$coordinator_bin" \
  KVSWEEP_ASSETS="$assets" KVSWEEP_ALLOW_PATHS="$assets" \
  bash "$repo/deploy/slurm/kvsweep-coordinator.sbatch" >"$tmp/coordinator.log" 2>&1 &
coord_pid=$!
for _ in $(seq 1 300); do
  [ -s "$shared/coordinator.addr" ] && break
  kill -0 "$coord_pid" 2>/dev/null || fail "the coordinator script exited"
  sleep 0.1
done
[ -s "$shared/coordinator.addr" ] || fail "no $shared/coordinator.addr after 30 s"
address="$(head -n1 "$shared/coordinator.addr")"
echo "coordinator: $address"
cli() { timeout 60 "$cli_bin" --coordinator "$address" "$@"; }

# --- 8 distinct jobs (one model, one method, 8 document limits) ---
sweep="slurm-sweep"
{
  printf 'name: %s\nmodels:\n  - name: ref-llama\n    path: %s/models/ref-llama\ntasks:\n' \
    "$sweep" "$assets"
  for k in 1 2 3 4 5 6 7 8; do
    printf '  - {name: l%d, task: lambada_openai, data: %s/data/lambada_openai/lambada_test.jsonl, limit: %d}\n' \
      "$k" "$assets" "$k"
  done
  printf 'methods: [none]\n'
} >"$tmp/sweep.yaml"
cli submit "$tmp/sweep.yaml" >"$tmp/submit.out" 2>&1 || fail "kvsweep submit: $(cat "$tmp/submit.out")"

# --- the worker array through sbatch, CPU variant (no --gres) ---
mkdir -p "$tmp/jobs"
submit_out="$(
  cd "$tmp/jobs" &&
    KVSWEEP_DIR="$shared" KVSWEEP_WORKER_BIN="$worker_bin" KVSWEEP_EVALUATOR=fake \
    KVSWEEP_WORKER_ARGS="--fake-sleep-ms 200" KVSWEEP_EXIT_WHEN_IDLE=3 \
    KVSWEEP_WAIT_COORDINATOR_S=60 KVSWEEP_ASSETS="$assets" TMPDIR="$tmp/jobs" \
    timeout 300 sbatch --wait --parsable --array=0-2 --cpus-per-task=1 --mem=200M --time=10 \
      --output="$tmp/worker-%A_%a.out" "$repo/deploy/slurm/kvsweep-workers.sbatch" 2>&1
)"
sbatch_rc=$?
job_id="$(printf '%s\n' "$submit_out" | sed -n 's/^\([0-9][0-9]*\).*/\1/p' | head -n1)"
[ -n "$job_id" ] || fail "sbatch did not submit: $submit_out"
[ "$sbatch_rc" -eq 0 ] || fail "sbatch --wait exited with $sbatch_rc (124: timed out): $submit_out"
echo "slurm: array job $job_id finished"

# Every array task completed with exit code 0 (slurmctld keeps finished jobs for MinJobAge).
tasks="$(timeout 10 scontrol -o show job "$job_id")"
n_tasks="$(printf '%s\n' "$tasks" | grep -c 'ArrayTaskId=')"
n_ok="$(printf '%s\n' "$tasks" | grep 'JobState=COMPLETED' | grep -c 'ExitCode=0:0')"
[ "$n_tasks" -eq 3 ] && [ "$n_ok" -eq 3 ] ||
  fail "expected 3 array tasks COMPLETED with ExitCode=0:0, got $n_ok of $n_tasks: $tasks"
# ... and each ended because the queue was drained (--exit-when-idle), not for another reason.
for t in 0 1 2; do
  out="$tmp/worker-${job_id}_$t.out"
  grep -q 'idle for .* s, exiting' "$out" 2>/dev/null ||
    fail "array task $t did not exit through --exit-when-idle ($out)"
done

# Every job done, exactly one result each, all recorded by the array's workers.
query() { cli query --format csv "$1" | tail -n1 | tr -d '\r'; }
counts="$(query "SELECT COUNT(*), COUNT(DISTINCT job_id), SUM(worker_id GLOB '[0-9]*-[0-2]') FROM results")" ||
  fail "kvsweep query failed"
[ "$counts" = "8,8,8" ] ||
  fail "results, distinct job ids, results from array workers: expected 8,8,8, got '$counts'"
jobs="$(query "SELECT COUNT(*), SUM(state = 'done') FROM jobs")"
[ "$jobs" = "8,8" ] || fail "jobs, jobs done: expected 8,8, got '$jobs'"
sweep_rows="$(query "SELECT COUNT(*) FROM sweep_results WHERE sweep = '$sweep'")"
[ "$sweep_rows" = 8 ] || fail "sweep_results rows for $sweep: expected 8, got '$sweep_rows'"

# --- one task running a supervised worker per device (KVSWEEP_DEVICES=cpu:2) ---
sweep2="slurm-devices"
{
  printf 'name: %s\nmodels:\n  - name: ref-llama\n    path: %s/models/ref-llama\ntasks:\n' \
    "$sweep2" "$assets"
  for k in 9 10 11 12 13 14 15 16; do
    printf '  - {name: l%d, task: lambada_openai, data: %s/data/lambada_openai/lambada_test.jsonl, limit: %d}\n' \
      "$k" "$assets" "$k"
  done
  printf 'methods: [none]\n'
} >"$tmp/sweep2.yaml"
cli submit "$tmp/sweep2.yaml" >"$tmp/submit2.out" 2>&1 || fail "kvsweep submit: $(cat "$tmp/submit2.out")"
submit_out="$(
  cd "$tmp/jobs" &&
    KVSWEEP_DIR="$shared" KVSWEEP_WORKER_BIN="$worker_bin" KVSWEEP_EVALUATOR=fake \
    KVSWEEP_DEVICES=cpu:2 KVSWEEP_WORKER_ARGS="--fake-sleep-ms 200" KVSWEEP_EXIT_WHEN_IDLE=3 \
    KVSWEEP_WAIT_COORDINATOR_S=60 KVSWEEP_ASSETS="$assets" TMPDIR="$tmp/jobs" \
    timeout 300 sbatch --wait --parsable --array=0 --cpus-per-task=1 --mem=400M --time=10 \
      --output="$tmp/devices-%A_%a.out" "$repo/deploy/slurm/kvsweep-workers.sbatch" 2>&1
)"
sbatch_rc=$?
job2="$(printf '%s\n' "$submit_out" | sed -n 's/^\([0-9][0-9]*\).*/\1/p' | head -n1)"
[ -n "$job2" ] || fail "sbatch (KVSWEEP_DEVICES) did not submit: $submit_out"
[ "$sbatch_rc" -eq 0 ] ||
  fail "sbatch --wait (KVSWEEP_DEVICES) exited with $sbatch_rc: $submit_out $(cat "$tmp"/devices-*.out)"
out="$tmp/devices-${job2}_0.out"
grep -q 'supervisor: every worker ended cleanly' "$out" ||
  fail "the supervised workers did not all end cleanly ($(cat "$out"))"
counts="$(query "SELECT COUNT(*), COUNT(DISTINCT job_id), COUNT(DISTINCT worker_id), SUM(worker_id GLOB '[0-9]*-0-cpu[01]') FROM sweep_results WHERE sweep = '$sweep2'")"
[ "$counts" = "8,8,2,8" ] ||
  fail "results, job ids, workers, from the task's two workers: expected 8,8,2,8, got '$counts'"

echo "PASS: 8 jobs through 3 Slurm array tasks (job $job_id), each job with exactly one result;"
echo "PASS: 8 more through one task with KVSWEEP_DEVICES=cpu:2 (job $job2), both workers recording"
