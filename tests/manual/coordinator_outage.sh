#!/usr/bin/env bash
# The long-outage demonstration behind docs/reliability.md (too long for ctest, which runs the
# same scenario at 25 lease TTLs): a coordinator with the default 30 s lease TTL is killed with
# `kill -9` while 4 workers are mid-job, stays down for OUTAGE_S (default 600 s), and comes back
# on the same database. Passes when every job has exactly one result from exactly one attempt and
# no worker's result was rejected.
#
#   tests/manual/coordinator_outage.sh BUILD_DIR [OUTAGE_S]
set -euo pipefail
build=${1:?usage: coordinator_outage.sh BUILD_DIR [OUTAGE_S]}
outage=${2:-600}
assets=${KVSWEEP_ASSETS:-$(cd "$(dirname "$0")/../../.." && pwd)/shared/assets}
dir=$(mktemp -d /tmp/kvsweep_outage_XXXXXX)
port_file=$dir/port
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

start_coordinator() {
  rm -f "$port_file"
  "$build/coordinator/kvsweep-coordinator" --db "$dir/sweeps.db" --listen "127.0.0.1:${1:-0}" \
    --port-file "$port_file" >>"$dir/coordinator.log" 2>&1 &
  coord=$!
  pids+=("$coord")
  for _ in $(seq 100); do [ -s "$port_file" ] && break; sleep 0.1; done
  [ -s "$port_file" ] || { echo "FAIL: coordinator did not start"; exit 1; }
}

start_coordinator 0
port=$(cat "$port_file")
cli=("$build/client/kvsweep" --coordinator "127.0.0.1:$port")
{
  echo "name: outage"
  echo "models: [{name: ref-llama, path: $assets/models/ref-llama}]"
  echo "tasks:"
  for k in $(seq 1 16); do
    echo "  - {name: l$k, task: lambada_openai, data: $assets/data/lambada_openai/lambada_test.jsonl, limit: $k}"
  done
  echo "methods: [none]"
} >"$dir/s.yaml"
"${cli[@]}" submit "$dir/s.yaml"
for i in 0 1 2 3; do
  "$build/worker/kvsweep-worker" --coordinator "127.0.0.1:$port" --evaluator fake \
    --fake-sleep-ms 20000 --worker-id "w$i" --journal "$dir/w$i.journal" \
    --spool-dir "$dir/spool-$i" >"$dir/w$i.log" 2>&1 &
  pids+=("$!")
done
sleep 25   # every worker is 5 s into its second 20 s job
echo "killing the coordinator for ${outage} s ($(date -u +%T))"
kill -9 "$coord"
sleep "$outage"
start_coordinator "$port"
echo "coordinator back ($(date -u +%T))"
for _ in $(seq 600); do
  left=$("${cli[@]}" query --format csv \
    "SELECT count(*) FROM jobs WHERE state IN ('queued','leased')" | tail -1)
  [ "$left" = 0 ] && break
  sleep 1
done
q() { "${cli[@]}" query --format csv "$1" | tail -1; }
results=$(q "SELECT count(*) FROM results")
distinct=$(q "SELECT count(DISTINCT job_id) FROM results")
attempts=$(q "SELECT count(*) FROM attempts")
rejected=$(cat "$dir"/w*.journal | grep -c ' rejected ' || true)
leases=$(cat "$dir"/w*.journal | awk '$2 == "lease" {print $3}' | sort | uniq -d | wc -l)
echo "results $results, distinct $distinct, attempts $attempts, rejected $rejected, jobs leased twice $leases"
if [ "$results" = 16 ] && [ "$distinct" = 16 ] && [ "$attempts" = 16 ] && [ "$rejected" = 0 ] &&
   [ "$leases" = 0 ]; then
  echo "PASS"
  rm -rf "$dir"
else
  echo "FAIL (logs in $dir)"
  exit 1
fi
