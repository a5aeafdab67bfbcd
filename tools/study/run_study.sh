#!/bin/bash
# Re-runs the study sweep (docs/study/study.yaml) through kvsweep itself and regenerates its
# report, docs/results-ref-models.md (+ its figures beside it):
#   tools/study/run_study.sh [BUILD_DIR]
# A coordinator on a database in out/study/ and two local workers; resubmitting resumes (jobs
# already done are not re-run). About 20 minutes on 2 CPU cores.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=$(cd "${1:-$root/build}" && pwd)
export KVSWEEP_ASSETS=$(cd "${KVSWEEP_ASSETS:-$root/../shared/assets}" && pwd)
out=$root/out/study
mkdir -p "$out"
addr_file=$out/port
"$build/coordinator/kvsweep-coordinator" --db "$out/study.db" --listen 127.0.0.1:0 \
    --port-file "$addr_file" >"$out/coordinator.log" 2>&1 &
coordinator=$!
workers=()
cleanup() {
  for w in "${workers[@]}"; do kill "$w" 2>/dev/null || true; done
  kill "$coordinator" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 100); do [ -s "$addr_file" ] && break; sleep 0.1; done
[ -s "$addr_file" ] || { echo "run_study: the coordinator did not start (see $out/coordinator.log)" >&2; exit 1; }
addr=127.0.0.1:$(cat "$addr_file")
for i in 1 2; do
  "$build/worker/kvsweep-worker" --coordinator "$addr" --device cpu --threads 1 \
      --worker-id "study-$i" --spool-dir "$out/spool-$i" --exit-when-idle 30 \
      >"$out/worker-$i.log" 2>&1 &
  workers+=($!)
done
cli=("$build/client/kvsweep" --coordinator "$addr")
"${cli[@]}" submit "$root/docs/study/study.yaml"
"${cli[@]}" watch study
"${cli[@]}" report study --out "$root/docs/results-ref-models.md"
