#!/usr/bin/env bash
# The GPU comparison of docs/gpu.md, in one command on the accelerator machine (repo root):
#
#   tools/gpu/run_gpu_bench.sh ASSETS CKPT_DIR OUT_DIR "MODEL:W:LAMBADA_LIMIT[:TASKS] ..."
#
# Builds the CUDA worker (deploy/build-cuda.sh) if needed, writes random checkpoints at real
# shapes (make_checkpoints.py) if missing, then for each model runs the same tasks and methods
# through transformers (hf_bench.py) and kvsweep (kvsweep-engine-bench job mode), bf16, and
# prints the side-by-side table (report.py). Methods: none, INT4 (group = head_dim), rank d/4,
# hybrid r = d/2 at 8 bits (identity bases; same payload budget 0.25), and the position-dependent
# INT4 channel axis (KIVI-style), INT2 channel blocks of 32 with a residual window of 32, INT4
# with a residual window of 128 (kvsweep only: hf_bench.py skips them); METHODS="a;b;..." replaces
# the list. DTYPE=fp16 runs both engines in fp16 (default bf16). `none` runs twice, first:
# whichever method runs first in a process pays cuBLAS/cuDNN heuristics and allocator growth
# (measured: up to 2x on small models), so the first pass is a warm-up and report.py keeps the
# last row per (model, task, method). COLD=1 skips the extra pass (cold rows: docs/gpu.md). REPEAT=N
# times N scoring passes per row in both engines and keeps the median tokens/s (tiny tasks);
# INTERLEAVE=1 makes kvsweep's passes round-robin over the methods, each row also getting its
# cost against `none` paired pass by pass (cost_vs_none_paired). WARMUP_EACH=1 gives each of
# kvsweep's rows an untimed pass before its timed ones (a method's first pass on a task pays
# set-up the next ones do not; transformers' rows are not affected). ATTENTION_BLOCKS=128,512,...
# runs kvsweep's methods once per query block of the position-dependent attention (rows of their
# own in the table); FUSED_LAYER=both runs kvsweep's methods with the layer's fused elementwise
# kernels and stacked projections and without them (off: without only; rows "@ unfused layer");
# TUNED_GEMM=off runs libtorch's matrix products where the tuned ones would apply (rows "@ libtorch
# products"); HF=0 skips transformers (kvsweep's rows alone).
set -uo pipefail
assets=$1 ckpt=$2 out=$3 plan=$4
mkdir -p "$ckpt" "$out"
[ -x build-cuda/bench/kvsweep-engine-bench ] || deploy/build-cuda.sh build-cuda > "$out/build.log" 2>&1 || { tail -40 "$out/build.log"; exit 1; }
models=$(for p in $plan; do echo -n "${p%%:*},"; done)
python3 tools/gpu/make_checkpoints.py --assets "$assets" --out "$ckpt" --only "${models%,}" 2>&1 | grep -v Warning | tail -5
export KVSWEEP_ASSETS=$assets
for p in $plan; do
  IFS=: read -r model W limit tasks <<< "$p"
  tasks=${tasks:-wikitext,lambada_openai}
  d=$(python3 -c "import json;c=json.load(open('$ckpt/$model/config.json'));print(c.get('head_dim') or (c.get('n_embd') or c['hidden_size'])//(c.get('n_head') or c['num_attention_heads']))")
  methods="none;quant:bits=4,group=$d;rank:r=$((d/4)),basis=identity;hybrid:r=$((d/2)),bits=8,basis=identity"
  methods="$methods;quant:bits=4,axis=channel;quant:bits=2,axis=channel,group=32,residual=32;quant:bits=4,residual=128"
  [ -z "${METHODS:-}" ] || methods=$METHODS
  [ -n "${COLD:-}" ] || methods="none;$methods"
  echo "== $model d=$d W=$W lambada_limit=$limit"
  [ "${HF:-1}" = 0 ] || python3 tools/gpu/hf_bench.py --model "$ckpt/$model" --assets "$assets" --out "$out/results.jsonl" \
    --tasks "$tasks" --methods "$methods" --window "$W" --limit "$limit" --repeat "${REPEAT:-1}" \
    --dtype "${DTYPE:-bf16}" 2>&1 | grep -v -i warn | tail -8
  build-cuda/bench/kvsweep-engine-bench --model "$ckpt/$model" --device cuda --dtype "${DTYPE:-bf16}" \
    --tasks "$tasks" --methods "$methods" --window "$W" --limit "$limit" --repeat "${REPEAT:-1}" \
    ${INTERLEAVE:+--interleave} ${WARMUP_EACH:+--warmup-each} \
    ${ATTENTION_BLOCKS:+--attention-blocks "$ATTENTION_BLOCKS"} \
    ${FUSED_LAYER:+--fused-layer "$FUSED_LAYER"} ${TUNED_GEMM:+--tuned-gemm "$TUNED_GEMM"} \
    --out "$out/results.jsonl" \
    2> "$out/kvsweep_$model.err" | cut -c1-200
done
python3 tools/gpu/report.py "$out/results.jsonl" --models-dir "$ckpt" \
  --ceiling tools/gpu/results/gemm_ceiling.jsonl | tee "$out/table.md"
