#!/usr/bin/env bash
# The orchestration load benchmark with the coordinator confined to CPUs 0-1 and the simulated
# workers on the rest: a coordinator on a 2-core machine whose 200 workers are elsewhere, which
# the 2-core development box cannot show (there the simulation takes more CPU than the
# coordinator). Needs a machine with at least 4 CPUs. docs/orchestration-bench.md.
#
#   bench/run_orchestration_pinned.sh BUILD_DIR [kvsweep_orchestration_bench flags...]
set -euo pipefail
build=$1; shift
n=$(nproc)
if [ "$n" -lt 4 ]; then
  echo "run_orchestration_pinned.sh: needs at least 4 CPUs (this machine has $n)" >&2
  exit 2
fi
coordinator=$(realpath "$build/coordinator/kvsweep-coordinator")
wrap=$(mktemp /tmp/kvsweep-coordinator-pinned-XXXXXX)
trap 'rm -f "$wrap"' EXIT
printf '#!/bin/sh\nexec taskset -c 0,1 %s "$@"\n' "$coordinator" > "$wrap"
chmod +x "$wrap"
taskset -c "2-$((n - 1))" "$build/bench/kvsweep_orchestration_bench" --coordinator-bin "$wrap" "$@"
