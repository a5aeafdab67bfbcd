#!/usr/bin/env bash
# First checks of the CUDA worker on the accelerator machine: build, then the same jobs on the
# CPU and on the GPU (fp32, and bf16) with one binary, results as JSON under $OUT.
#   deploy/device/gpu_smoke.sh ASSETS_DIR OUT_DIR
set -uo pipefail
assets=$1
out=$2
mkdir -p "$out"
t0=$(date +%s)
deploy/build-cuda.sh build-cuda > "$out/build.log" 2>&1 || { tail -60 "$out/build.log"; exit 1; }
echo "build: $(( $(date +%s) - t0 )) s"
w=build-cuda/worker/kvsweep-worker
export KVSWEEP_ASSETS=$assets
head -n 200 "$assets/data/wikitext-2/wiki.test.raw" > /tmp/wiki200.raw
# Every method on CPU fp32, GPU fp32 and GPU bf16; results in one JSON-lines file.
res="$out/smoke.jsonl"
: > "$res"
for model in ${MODELS:-ref-llama}; do
  for method in ${METHODS:-none}; do
    for dev in cpu cuda; do
      for dt in fp32 bf16; do
        [ $dev = cpu ] && [ $dt = bf16 ] && continue
        for task in lambada_openai wikitext; do
          if [ $task = wikitext ]; then data=/tmp/wiki200.raw; extra=""; else data="$assets/data/lambada_openai/lambada_test.jsonl"; extra="--limit 400"; fi
          $w eval --model "$assets/models/$model" --task $task --data "$data" $extra --method "$method" \
            --device $dev --dtype $dt --format json 2>>"$out/smoke.err" | python3 -c "
import json,sys
r=json.load(sys.stdin); print(json.dumps({'model':'$model','method':'$method','device':'$dev','dtype':'$dt','task':'$task',
  'metrics':r['metrics']['$task'],'tokens_per_s':r['timing']['tokens_per_s']}))" >> "$res" || echo "FAILED $model $method $dev $dt $task"
        done
      done
    done
  done
done
python3 - "$res" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
cpu = {(r["model"], r["method"], r["task"]): r["metrics"]["loglik_sum"] for r in rows if r["device"] == "cpu"}
print("| model | method | task | device | dtype | loglik_sum | rel vs CPU fp32 | tok/s |")
print("| --- | --- | --- | --- | --- | --- | --- | --- |")
for r in rows:
    base = cpu.get((r["model"], r["method"], r["task"]))
    ll = r["metrics"]["loglik_sum"]
    rel = abs(ll - base) / abs(base) if base else float("nan")
    print(f"| {r['model']} | `{r['method']}` | {r['task']} | {r['device']} | {r['dtype']} | {ll:.4f} | {rel:.2e} | {r['tokens_per_s']:.0f} |")
PY
