#!/usr/bin/env bash
# The dashboard's figures in docs/img: the demo's sweep (kvsweep demo --keep) served by a
# coordinator with --http, a second sweep on the same database running with one worker, and
# headless Chromium's screenshots of the sweep list (mid-run), the demo's sweep page and its plot.
#
#   tools/dashboard/screenshots.sh [BUILD_DIR] [OUT_DIR]     # defaults: build, docs/img
set -euo pipefail
build=$(realpath "${1:-build}")
out=$(realpath "${2:-docs/img}")
assets=$(realpath "${KVSWEEP_ASSETS:-../shared/assets}")
export KVSWEEP_ASSETS=$assets
chromium=${KVSWEEP_CHROMIUM:-$(command -v chromium || command -v chromium-browser)}
work=$(mktemp -d)
pids=()  # the worker, then the coordinator: killed in that order (a draining worker would
         # wait for the coordinator to take its result)
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

"$build/client/kvsweep" demo --keep "$work/kept" --workers 2 >/dev/null 2>"$work/demo.err"
"$build/coordinator/kvsweep-coordinator" --db "$work/kept/demo.db" --listen 127.0.0.1:0 \
    --port-file "$work/port" --http 127.0.0.1:0 --http-port-file "$work/http_port" \
    2>"$work/coordinator.log" &
pids=($!)
for _ in $(seq 100); do [ -s "$work/http_port" ] && break; sleep 0.1; done
coord=127.0.0.1:$(cat "$work/port")
url=http://127.0.0.1:$(cat "$work/http_port")

# A second sweep, longer jobs (200 documents), run by one worker: the list shows it mid-run.
sed -e 's/^name: demo$/name: demo-200/' -e 's/limit: 20$/limit: 200/' "$work/kept/demo.yaml" \
    >"$work/kept/demo-200.yaml"
"$build/client/kvsweep" --coordinator "$coord" submit "$work/kept/demo-200.yaml" >/dev/null
"$build/worker/kvsweep-worker" --coordinator "$coord" --device cpu --threads 1 \
    2>"$work/worker.log" &
pids=($! "${pids[@]}")
until curl -sf "$url/api/sweeps" | python3 -c '
import json, sys
s = {x["name"]: x for x in json.load(sys.stdin)["sweeps"]}["demo-200"]
sys.exit(0 if 2 <= s["counts"]["done"] < s["total"] - 2 else 1)'; do sleep 0.5; done

shot() {  # URL FILE WIDTH HEIGHT
  "$chromium" --headless --disable-gpu --no-sandbox --disable-dev-shm-usage --hide-scrollbars \
      --user-data-dir="$work/profile-$(basename "$2")" --window-size="$3,$4" \
      --screenshot="$2" "$1" 2>/dev/null
}
shot "$url/" "$out/dashboard-sweeps.png" 1200 240
shot "$url/sweep/demo" "$out/dashboard-sweep.png" 1200 1250
shot "$url/sweep/demo/plot.svg" "$out/dashboard-plot.png" 650 396
echo "wrote $out/dashboard-sweeps.png $out/dashboard-sweep.png $out/dashboard-plot.png"
