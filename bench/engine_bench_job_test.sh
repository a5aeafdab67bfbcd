#!/usr/bin/env bash
# kvsweep-engine-bench's job mode (the rows behind docs/gpu.md's tables) on the CPU: ref-llama,
# LAMBADA's first 8 documents, `none` and channel-axis INT4, two timed passes each: interleaved
# with --warmup-each, interleaved without it, and one after another with it. Checks the rows'
# fields, that each row's tokens/s is the median of its passes, the paired cost against `none`
# (interleaved only), and, counting the engine's log line per scoring pass of the task, that
# --warmup-each ran one untimed pass per row and nothing more.
#
#   engine_bench_job_test.sh BENCH_BIN ASSETS_DIR
set -euo pipefail
bench=$1 assets=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
run() {  # run NAME [FLAGS...]: rows to $tmp/NAME.jsonl, log to $tmp/NAME.err
  local name=$1
  shift
  KVSWEEP_ASSETS=$assets KVSWEEP_LOG_LEVEL=info "$bench" --model "$assets/models/ref-llama" --device cpu --dtype fp32 \
    --tasks lambada_openai --limit 8 --methods "none;quant:bits=4,axis=channel" --repeat 2 \
    "$@" --out "$tmp/$name.jsonl" > /dev/null 2> "$tmp/$name.err" ||
    { echo "kvsweep-engine-bench $*: failed"; tail -5 "$tmp/$name.err"; exit 1; }
}
run warm --interleave --warmup-each
run cold --interleave
run serial --warmup-each
python3 - "$tmp" << 'EOF'
import json, math, sys

tmp = sys.argv[1]


def check(name, warmup, interleaved):
    rows = [json.loads(l) for l in open(f"{tmp}/{name}.jsonl")]
    assert [r["method"] for r in rows] == ["none", "quant:bits=4,axis=channel"], rows
    passes = sum(" 8 sequences, method " in l for l in open(f"{tmp}/{name}.err"))
    assert passes == 2 * (2 + warmup), f"{name}: {passes} scoring passes of the task"
    for r in rows:
        runs = r["tokens_per_s_runs"]
        assert len(runs) == 2 and all(x > 0 for x in runs), runs
        assert math.isclose(r["tokens_per_s"], (runs[0] + runs[1]) / 2), r
        assert r["warmup_passes"] == warmup and r["interleaved"] is interleaved, r
        assert r["metrics"]["n"] == 8 and math.isfinite(r["metrics"]["loglik_sum"]), r
    none, chan = rows
    if interleaved:
        assert none["cost_vs_none_paired"] == 0.0, none
        costs = sorted(a / b - 1 for a, b in zip(none["tokens_per_s_runs"], chan["tokens_per_s_runs"]))
        assert math.isclose(chan["cost_vs_none_paired"], (costs[0] + costs[1]) / 2), chan
    else:
        assert "cost_vs_none_paired" not in none and "cost_vs_none_paired" not in chan, rows
    # The channel-axis cache changes what the model sees: not `none`'s numbers.
    assert chan["metrics"]["loglik_sum"] != none["metrics"]["loglik_sum"], rows


check("warm", 1, True)
check("cold", 0, True)
check("serial", 1, False)
print("engine bench job mode: rows, medians, paired costs and warm-up passes as expected")
EOF
