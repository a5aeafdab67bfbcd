#!/usr/bin/env bash
# What one device call runs (docs/gpu.md): PHASE is `smoke` (build, then every method on CPU fp32
# vs GPU fp32 vs GPU bf16 on ref-llama), `bench SPEC...` (run_gpu_bench.sh plan), `families`
# (tiny checkpoints of the newer model families and transformers' logits on them, for
# tests/fixtures/), `checkfused`, `fulljob MODEL W` (one full WikiText evaluation job through
# kvsweep-worker eval, timed with its load) or `profile MODEL W [LINES]` (the kernels' GPU time of
# one scoring pass over the first LINES lines of WikiText under Nsight Compute, by kind:
# kernel_profile.py; METHODS as for bench, default none). SMI=1 logs the GPU's clocks, power and
# utilization every 250 ms while the phase runs, to $OUT/smi.csv (clock_segments.py). Work files
# in /tmp/kvs, a few results copied to $OUT (the device returns at most 8 files). The results
# behind docs/gpu.md are kept in tools/gpu/results/.
set -uo pipefail
phase=$1; shift
assets=/tmp/assets
ckpt=/root/ckpt
work=/tmp/kvs
mkdir -p "$work" "$ckpt"
if [ ! -d "$assets/models" ]; then
  mkdir -p "$assets" && for t in .device/gpu*/assets.tar.xz; do tar -xJf "$t" -C "$assets"; done
fi
for m in "$assets"/models/ref-*; do [ -f "$m/config.json" ] && ln -sfn "$m" "$ckpt/$(basename "$m")"; done
if [ -z "${KVSWEEP_DEBS_UNPACKED:-}" ]; then source .debs/unpack-debs.sh .debs; export KVSWEEP_DEBS_UNPACKED=1; fi
export KVSWEEP_ASSETS=$assets
# Always (incremental): a machine still warm from an earlier call keeps build-cuda/, which would
# otherwise run that call's binary after the sources changed.
t0=$(date +%s)
deploy/build-cuda.sh build-cuda > "$work/build.log" 2>&1 || { tail -40 "$work/build.log"; exit 1; }
echo "build: $(( $(date +%s) - t0 )) s"
if [ "${SMI:-0}" = 1 ]; then
  nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,power.limit,utilization.gpu,temperature.gpu,clocks_event_reasons.active \
    --format=csv -lms 250 > "$OUT/smi.csv" &
  smi_pid=$!
  trap 'kill $smi_pid 2> /dev/null' EXIT
fi
case $phase in
  smoke)
    METHODS=${METHODS:-"none quant:bits=4 quant:bits=2,group=32,axis=channel,residual=32 rank:r=16 rank:r=16,basis=svd hybrid:r=32,bits=8"} \
      deploy/device/gpu_smoke.sh "$assets" "$work/smoke" | tee "$work/smoke/table.md" | tail -45
    cp "$work/smoke/smoke.jsonl" "$OUT/"; cp "$work/smoke/table.md" "$OUT/smoke_table.md" ;;
  bench)
    tools/gpu/run_gpu_bench.sh "$assets" "$ckpt" "$work/bench" "$*" | tail -60
    cp "$work/bench/results.jsonl" "$OUT/results.jsonl"; cp "$work/bench/table.md" "$OUT/table.md" ;;
  families)
    # Tiny random checkpoints of the newer families and transformers' fp32 logits on them
    # (tools/reference/make_family_fixtures.py), packed for tests/fixtures/.
    PYTHONUNBUFFERED=1 python3 tools/reference/make_family_fixtures.py --out "$work/families" 2>&1 |
      grep -v -i warn | tee "$work/families.log" | tail -12
    tar -czf "$OUT/families.tar.gz" -C "$work/families" . ;;
  checkfused)
    build-cuda/bench/kvsweep-engine-bench --check-fused cuda | tee "$work/checkfused.txt" | tail -25 ;;
  profile)
    model=$1 W=$2 lines=${3:-400}
    python3 tools/gpu/make_checkpoints.py --assets "$assets" --out "$ckpt" --only "$model" 2>&1 | grep -v Warning | tail -2
    ncu=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu | head -1)
    "$ncu" --clock-control none --metrics gpu__time_duration.sum --csv --page raw --print-units base \
      --print-kernel-base function --log-file "$work/prof_$model.csv" \
      build-cuda/bench/kvsweep-engine-bench --model "$ckpt/$model" --device cuda --dtype "${DTYPE:-bf16}" \
      --tasks wikitext --methods "${METHODS:-none}" --window "$W" --wiki-lines "$lines" --repeat 1 \
      --out "$work/prof_$model.jsonl" > /dev/null 2> "$work/prof_$model.err" || tail -5 "$work/prof_$model.err"
    tok=$(python3 -c "import json;print(sum(json.loads(l)['forward_tokens'] for l in open('$work/prof_$model.jsonl')))")
    python3 tools/gpu/kernel_profile.py "$work/prof_$model.csv" --tokens "$tok" --top 25 | tee "$OUT/profile_$model.md" ;;
  fulljob)
    model=$1 W=$2
    /usr/bin/time -v build-cuda/worker/kvsweep-worker eval --model "$ckpt/$model" --task wikitext_stream \
      --data "$assets/data/wikitext-2/wiki.test.raw" --window "$W" --device cuda --dtype bf16 --format json \
      > "$work/fulljob.json" 2> "$work/fulljob.err"
    echo "rc=$?"; grep -E "Elapsed|Maximum resident" "$work/fulljob.err"
    python3 -c "import json;r=json.load(open('$work/fulljob.json'));print(json.dumps({'metrics':r['metrics'],'timing':r['timing']},indent=1))"
    cp "$work/fulljob.json" "$OUT/fulljob_$model.json" ;;
esac
tar -czf "$OUT/logs_$phase.tar.gz" -C "$work" . 2>/dev/null --exclude='*.raw'
