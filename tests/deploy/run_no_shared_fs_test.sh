#!/usr/bin/env bash
# A sweep on two "hosts" that share nothing but the network: the coordinator in this machine's
# namespaces; two workers in a network namespace of their own (a veth pair, the coordinator's
# end at 10.251.N.1, theirs at 10.251.N.2) and a mount namespace of their own in which tmpfs
# hides the model and data (the assets directory) and everything of the coordinator's (its
# database, certificates, tokens, sweep file). They talk mutual TLS (deploy/tls/make-certs.sh)
# with role tokens. The workers find the jobs' paths missing, fetch every input file by hash
# from the coordinator (FileService.FetchFile) into one --cache-dir they share, and run the real
# engine on ref-gpt2 from there. Then checks:
#   - the sweep completed: every job done, exactly one result each;
#   - the workers could see none of the inputs, and their cache holds each input file under its
#     sha256 (re-hashed here); each file crossed the network once (the workers' journals: the
#     files and bytes fetched over all jobs of both workers are those of the job's inputs);
#   - the results equal those of the same sweep run the ordinary way (a second coordinator and
#     a worker on the shared filesystem, --stage never): every metric of every job, exactly;
#   - the job views are gone once the workers exit (removed as each job ends), and so is a stale
#     view planted in the cache before they started (as a crashed worker leaves it);
#   - a worker that sees every input but whose copy of the data file has other content
#     (--stage auto, a bind mount over that one file in a mount namespace of its own) fetches
#     that file alone, uses the model's files where they are, and its results (a third
#     coordinator) equal the shared-filesystem run's.
#
#   run_no_shared_fs_test.sh COORDINATOR_BIN WORKER_BIN CLI_BIN ASSETS_DIR SOURCE_DIR
#
# Needs root (ip netns, unshare -m, mount), iproute2, util-linux, openssl and a worker built
# with the engine; prints "SKIP: <why>" and exits 0 otherwise, except that with CI=true a
# missing tool is a failure. KVSWEEP_NOFS_TEST_KEEP=1 keeps the temp dir.
set -uo pipefail

if [ $# -ne 5 ]; then
  echo "usage: $0 COORDINATOR_BIN WORKER_BIN CLI_BIN ASSETS_DIR SOURCE_DIR" >&2
  exit 2
fi
coordinator_bin="$(realpath "$1")"
worker_bin="$(realpath "$2")"
cli_bin="$(realpath "$3")"
assets="$(realpath "$4")"
src="$(realpath "$5")"
export PATH="$PATH:/usr/sbin:/sbin"
keep="${KVSWEEP_NOFS_TEST_KEEP:-}"

. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_root "for network and mount namespaces"
require_tools "apt-get install iproute2 util-linux openssl sqlite3" \
  ip unshare mount openssl sha256sum sqlite3
"$worker_bin" --version | grep -q "engine: yes" || skip "kvsweep-worker was built without the engine"
[ -f "$assets/models/ref-gpt2/config.json" ] || skip "no ref-gpt2 in $assets"

tmp="$(mktemp -d /tmp/kvsweep-nofs-test.XXXXXX)"
chmod 755 "$tmp"
coord="$tmp/coordinator"   # the coordinator's files: hidden from the worker
wdir="$tmp/worker"         # the worker's own files
base="$tmp/baseline"       # the ordinary run
ldir="$tmp/local-copy"     # a worker whose copy of one input differs
mkdir -p "$coord" "$wdir" "$base" "$ldir"
n=$(( $$ % 250 + 1 ))
ns="kvnofs$$"
veth_c="kvc$$"
veth_w="kvw$$"
coord_ip="10.251.$n.1"
worker_ip="10.251.$n.2"
pids=()

fail() {
  echo "FAIL: $*"
  for f in "$coord/coordinator.log" "$wdir/worker.log" "$wdir/worker-1.log" \
           "$wdir/worker-2.log" "$base/coordinator.log" "$base/worker.log" "$wdir/journal-1" \
           "$wdir/journal-2" "$ldir/coordinator.log" "$ldir/worker.log" "$ldir/journal"; do
    [ -f "$f" ] || continue
    echo "----- $f (last 40 lines)"
    tail -n 40 "$f"
  done
  exit 1
}
stop_pid() {
  local pid="$1"
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
}
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do stop_pid "${pids[i]}"; done
  ip link del "$veth_c" 2>/dev/null
  ip netns del "$ns" 2>/dev/null
  if [ -n "$keep" ]; then echo "kept $tmp"; else rm -rf "$tmp"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

# Nothing from the caller's environment (a test runner's KVSWEEP_*) may change the binaries.
while read -r v; do unset "$v"; done < <(env | sed -n 's/^\(KVSWEEP_[A-Za-z0-9_]*\)=.*/\1/p')

# --- the network: a namespace for the worker, a veth pair between it and this one ---
ip netns add "$ns" || fail "ip netns add failed"
ip link add "$veth_c" type veth peer name "$veth_w" || fail "cannot make a veth pair"
ip link set "$veth_w" netns "$ns"
ip addr add "$coord_ip/30" dev "$veth_c"
ip link set "$veth_c" up
ip netns exec "$ns" ip addr add "$worker_ip/30" dev "$veth_w"
ip netns exec "$ns" ip link set "$veth_w" up
ip netns exec "$ns" ip link set lo up

# --- certificates and tokens ---
bash "$src/deploy/tls/make-certs.sh" "$coord/tls" --coordinator-name "$coord_ip" \
  >"$coord/make-certs.log" 2>&1 || fail "make-certs.sh: $(cat "$coord/make-certs.log")"
mkdir -p "$wdir/tls"
cp "$coord/tls/ca.crt" "$coord/tls/worker.crt" "$coord/tls/worker.key" "$wdir/tls/"
echo "nofs-admin-$RANDOM$RANDOM" >"$coord/admin.token"
echo "nofs-worker-$RANDOM$RANDOM" >"$coord/worker.token"
echo "nofs-client-$RANDOM$RANDOM" >"$coord/client.token"
cp "$coord/worker.token" "$wdir/worker.token"
chmod 600 "$coord"/*.token "$wdir/worker.token"

# --- the sweep: ref-gpt2, LAMBADA, three methods ---
sweep_yaml() {  # NAME
  cat <<YAML
name: $1
models:
  - path: $assets/models/ref-gpt2
tasks:
  - task: lambada_openai
    data: $assets/data/lambada_openai/lambada_test.jsonl
    limit: 6
methods: [none, "quant:bits=4", "quant:bits=2"]
YAML
}
sweep_yaml nofs >"$coord/sweep.yaml"
sweep_yaml nofs >"$base/sweep.yaml"
sweep_yaml nofs >"$ldir/sweep.yaml"

start_coordinator() {  # DIR LISTEN_HOST [FLAGS...]
  local dir="$1" host="$2"; shift 2
  KVSWEEP_CACHE_DIR="$dir/hash-cache" "$coordinator_bin" --db "$dir/sweeps.db" \
    --listen "$host:0" --port-file "$dir/port" --allow-path "$assets" "$@" \
    >"$dir/coordinator.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 300); do
    [ -s "$dir/port" ] && return 0
    kill -0 "${pids[-1]}" 2>/dev/null || fail "the coordinator in $dir exited"
    sleep 0.1
  done
  fail "the coordinator in $dir wrote no port file in 30 s"
}

# --- the coordinator, on its veth address only, mutual TLS and role tokens ---
start_coordinator "$coord" "$coord_ip" \
  --tls-cert "$coord/tls/coordinator.crt" --tls-key "$coord/tls/coordinator.key" \
  --tls-client-ca "$coord/tls/ca.crt" --token-file "$coord/admin.token" \
  --worker-token-file "$coord/worker.token" --client-token-file "$coord/client.token"
addr="$coord_ip:$(cat "$coord/port")"
user=(--coordinator "$addr" --tls --tls-ca "$coord/tls/ca.crt" --tls-cert "$coord/tls/client.crt"
      --tls-key "$coord/tls/client.key" --token-file "$coord/client.token")
"$cli_bin" "${user[@]}" submit "$coord/sweep.yaml" >"$coord/submit.log" 2>&1 ||
  fail "submit: $(cat "$coord/submit.log")"
jobs_total=$(sqlite3 "$coord/sweeps.db" "SELECT count(*) FROM jobs")
[ "$jobs_total" = 3 ] || fail "expected 3 jobs, the coordinator has $jobs_total"

# --- two workers on one cache: their own network and mount namespaces ---
# In the workers' mount namespace tmpfs covers the assets and the coordinator's directory; it
# checks that it sees neither before the workers start. Both use one --cache-dir (as workers on
# one host would): each file must still cross the network once.
# A view a crashed worker left: no process holds it, the workers remove it when they start.
stale_view="$wdir/cache/views/$(printf 'c%.0s' $(seq 1 64))"
mkdir -p "$stale_view/ref-gpt2"
ln -s /nonexistent "$stale_view/ref-gpt2/config.json"
worker_args=(--coordinator "$addr" --tls --tls-ca "$wdir/tls/ca.crt"
             --tls-cert "$wdir/tls/worker.crt" --tls-key "$wdir/tls/worker.key"
             --token-file "$wdir/worker.token" --device cpu --threads 1
             --cache-dir "$wdir/cache" --cache-max-bytes 1G --exit-when-idle 3)
ip netns exec "$ns" unshare --mount --propagation private bash -c '
  mount -t tmpfs -o ro,size=1m kvsweep-hidden "$1" || exit 3
  mount -t tmpfs -o ro,size=1m kvsweep-hidden "$2" || exit 3
  if [ -e "$1/models" ] || [ -e "$2/sweeps.db" ]; then echo "isolation failed"; exit 3; fi
  echo "workers: assets and coordinator files hidden"
  wdir=$3; worker_bin=$4; shift 4
  started=""
  for i in 1 2; do
    KVSWEEP_CACHE_DIR="$wdir/hash-cache-$i" "$worker_bin" "$@" --worker-id "nofs-worker-$i" \
      --spool-dir "$wdir/spool-$i" --journal "$wdir/journal-$i" >"$wdir/worker-$i.log" 2>&1 &
    started="$started $!"
  done
  rc=0
  for p in $started; do wait "$p" || rc=$?; done
  exit $rc' _ "$assets" "$coord" "$wdir" "$worker_bin" "${worker_args[@]}" \
  >"$wdir/worker.log" 2>&1 &
workers_pid=$!
pids+=($workers_pid)
timeout 300 "$cli_bin" "${user[@]}" watch nofs >"$coord/watch.log" 2>&1 ||
  fail "watch: $(tail -n 5 "$coord/watch.log")"
for _ in $(seq 1 300); do kill -0 "$workers_pid" 2>/dev/null || break; sleep 0.1; done
wait "$workers_pid"
workers_rc=$?
[ "$workers_rc" = 0 ] || fail "a worker exited $workers_rc: $(cat "$wdir"/worker*.log | tail -n 20)"
grep -q "workers: assets and coordinator files hidden" "$wdir/worker.log" ||
  fail "the workers' namespace was not set up: $(cat "$wdir/worker.log")"
cat "$wdir/journal-1" "$wdir/journal-2" >"$wdir/journal"

# --- every job done, one result each, no failure ---
q() { sqlite3 "$1/sweeps.db" "$2"; }
done_n=$(q "$coord" "SELECT count(*) FROM jobs WHERE state = 'done'")
[ "$done_n" = 3 ] || fail "$done_n of 3 jobs done: $(q "$coord" "SELECT state, last_error FROM jobs")"
dup=$(q "$coord" "SELECT count(*) FROM (SELECT job_id FROM results GROUP BY job_id HAVING count(*) != 1)")
results=$(q "$coord" "SELECT count(*) FROM results")
[ "$results" = 3 ] && [ "$dup" = 0 ] || fail "$results results for 3 jobs"
failed_attempts=$(q "$coord" "SELECT count(*) FROM attempts WHERE outcome != 'done' AND outcome != 'recorded'")
echo "coordinator: 3 jobs done, 3 results ($failed_attempts attempts not done)"

# --- the cache: each input under its hash, verified here; each transferred once ---
inputs=$(q "$coord" "SELECT DISTINCT je.key || ' ' || je.value FROM job_specs js,
         json_each(json_extract(js.spec_json, '\$.inputs')) je")
[ -n "$inputs" ] || fail "the job specs record no input hashes"
total_bytes=0
n_inputs=0
while read -r path sha; do
  blob="$wdir/cache/blobs/$sha"
  [ -f "$blob" ] || fail "the worker's cache has no blob for $path ($sha)"
  [ "$(sha256sum "$blob" | cut -d' ' -f1)" = "$sha" ] || fail "blob $blob does not hash to its name"
  total_bytes=$((total_bytes + $(stat -c %s "$path")))
  n_inputs=$((n_inputs + 1))
done <<<"$inputs"
staged=$(grep -c " staged " "$wdir/journal" || true)
[ "$staged" = 3 ] || fail "the journals have $staged staged jobs, not 3: $(cat "$wdir/journal")"
# files=N local=L fetched=F bytes=B: the sums of F and B, the files per job, any job with another
# N or with L != EXPECTED_LOCAL.
staged_sums() {  # JOURNAL EXPECTED_LOCAL
  grep " staged " "$1" |
    sed -n 's/.* files=\([0-9]*\) local=\([0-9]*\) fetched=\([0-9]*\) bytes=\([0-9]*\)$/\1 \2 \3 \4/p' |
    awk -v want_local="$2" '{f += $3; b += $4; if (($1 != n && n != "") || $2 != want_local) bad = 1; n = $1}
         END {print f + 0, b + 0, n, bad + 0}'
}
sums=$(staged_sums "$wdir/journal" 0)
read -r fetched_files fetched_bytes files_per_job bad <<<"$sums"
[ "$bad" = 0 ] && [ "$files_per_job" = "$n_inputs" ] ||
  fail "jobs staged other than $n_inputs files: $(grep " staged " "$wdir/journal")"
[ "$fetched_files" = "$n_inputs" ] && [ "$fetched_bytes" = "$total_bytes" ] ||
  fail "$fetched_files files ($fetched_bytes bytes) fetched; each of the $n_inputs ($total_bytes bytes) once expected: $(grep " staged " "$wdir/journal")"
echo "workers: $n_inputs input files ($total_bytes bytes) fetched once between two workers, verified in their cache"
views_left=$(ls -A "$wdir/cache/views")
[ -z "$views_left" ] || fail "views left in the cache after the workers exited: $views_left"
echo "workers: no view left in the cache (the stale one removed at start, each job's as it ended)"

# --- the same sweep the ordinary way: shared filesystem, loopback ---
start_coordinator "$base" 127.0.0.1
baddr="127.0.0.1:$(cat "$base/port")"
"$cli_bin" --coordinator "$baddr" submit "$base/sweep.yaml" >"$base/submit.log" 2>&1 ||
  fail "baseline submit: $(cat "$base/submit.log")"
KVSWEEP_CACHE_DIR="$base/hash-cache" "$worker_bin" --coordinator "$baddr" --device cpu \
  --threads 1 --stage never --spool-dir "$base/spool" --exit-when-idle 3 \
  >"$base/worker.log" 2>&1
[ $? = 0 ] || fail "the baseline worker failed"
metrics="SELECT job_id || ' ' || json_extract(result_json, '\$.metrics') FROM results ORDER BY job_id"
a=$(q "$coord" "$metrics")
b=$(q "$base" "$metrics")
[ "$(q "$base" "SELECT count(*) FROM results")" = 3 ] || fail "the baseline has no 3 results"
[ "$a" = "$b" ] || fail "results differ from the shared-filesystem run:
$a
---
$b"
echo "results: equal to the shared-filesystem run for every job:"
q "$coord" "SELECT method, printf('acc=%.6f loglik_sum=%.6f', acc, loglik_sum) FROM results ORDER BY method"

# --- a worker with every input, but its own copy of the data file differs ---
data="$assets/data/lambada_openai/lambada_test.jsonl"
cp "$data" "$ldir/lambada_test.jsonl"
echo '{"text": "a line only this worker has"}' >>"$ldir/lambada_test.jsonl"
start_coordinator "$ldir" 127.0.0.1
laddr="127.0.0.1:$(cat "$ldir/port")"
"$cli_bin" --coordinator "$laddr" submit "$ldir/sweep.yaml" >"$ldir/submit.log" 2>&1 ||
  fail "local-copy submit: $(cat "$ldir/submit.log")"
unshare --mount --propagation private bash -c '
  mount --bind "$1" "$2" || exit 3
  cmp -s "$1" "$2" || { echo "the bind mount did not take"; exit 3; }
  echo "worker: its copy of the data file differs"
  shift 2
  exec "$@"' _ "$ldir/lambada_test.jsonl" "$data" \
  env KVSWEEP_CACHE_DIR="$ldir/hash-cache" "$worker_bin" --coordinator "$laddr" --device cpu \
  --threads 1 --cache-dir "$ldir/cache" --spool-dir "$ldir/spool" --journal "$ldir/journal" \
  --exit-when-idle 3 >"$ldir/worker.log" 2>&1
[ $? = 0 ] || fail "the local-copy worker failed"
grep -q "worker: its copy of the data file differs" "$ldir/worker.log" ||
  fail "the local-copy worker's namespace was not set up: $(head -n 5 "$ldir/worker.log")"
done_n=$(q "$ldir" "SELECT count(*) FROM jobs WHERE state = 'done'")
[ "$done_n" = 3 ] || fail "local copy: $done_n of 3 jobs done: $(q "$ldir" "SELECT state, last_error FROM jobs")"
data_sha=$(sha256sum "$data" | cut -d' ' -f1)
read -r fetched_files fetched_bytes files_per_job bad <<<"$(staged_sums "$ldir/journal" $((n_inputs - 1)))"
[ "$(grep -c " staged " "$ldir/journal")" = 3 ] && [ "$bad" = 0 ] &&
  [ "$files_per_job" = "$n_inputs" ] && [ "$fetched_files" = 1 ] &&
  [ "$fetched_bytes" = "$(stat -c %s "$data")" ] ||
  fail "local copy: not the data file alone fetched: $(grep " staged " "$ldir/journal")"
[ "$(ls "$ldir/cache/blobs")" = "$data_sha" ] ||
  fail "local copy: the cache holds $(ls "$ldir/cache/blobs"), not the data file ($data_sha) alone"
[ -z "$(ls -A "$ldir/cache/views")" ] || fail "local copy: views left: $(ls -A "$ldir/cache/views")"
c=$(q "$ldir" "$metrics")
[ "$c" = "$b" ] || fail "local-copy results differ from the shared-filesystem run:
$c
---
$b"
echo "local copy: the data file fetched ($(stat -c %s "$data") bytes), $((n_inputs - 1)) model files used in place; results equal to the shared-filesystem run"
echo "PASS"
