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
for model in ${MODELS:-ref-llama}; do
  for dev in cpu cuda; do
    for dt in fp32 bf16; do
      [ $dev = cpu ] && [ $dt = bf16 ] && continue
      $w eval --model "$assets/models/$model" --task lambada_openai --data "$assets/data/lambada_openai/lambada_test.jsonl" \
        --limit 400 --device $dev --dtype $dt --format json > "$out/${model}_lambada_${dev}_${dt}.json" 2>"$out/${model}_lambada_${dev}_${dt}.err"
      $w eval --model "$assets/models/$model" --task wikitext --data /tmp/wiki200.raw \
        --device $dev --dtype $dt --format json > "$out/${model}_wiki_${dev}_${dt}.json" 2>"$out/${model}_wiki_${dev}_${dt}.err"
    done
  done
done
python3 - "$out" <<'PY'
import json, sys, glob, os
out = sys.argv[1]
rows = {}
for f in sorted(glob.glob(os.path.join(out, "*_*_*_*.json"))):
    try:
        r = json.load(open(f))
    except Exception as e:
        print("unreadable", f, e, open(f[:-5] + ".err").read()[-500:]); continue
    m = list(r["metrics"].values())[0]
    print(f"{os.path.basename(f):40s} loglik {m['loglik_sum']:.6f}  tok/s {r['timing']['tokens_per_s']:.0f}")
    rows[os.path.basename(f)[:-5]] = m["loglik_sum"]
for k, v in rows.items():
    if "_cuda_" in k:
        base = rows.get(k.replace("_cuda_", "_cpu_").replace("_bf16", "_fp32"))
        if base:
            print(f"{k:36s} rel vs cpu fp32: {abs(v - base) / abs(base):.3e}")
PY
