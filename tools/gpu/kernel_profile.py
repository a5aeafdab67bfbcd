#!/usr/bin/env python3
"""Where a kvsweep run's GPU time goes, from Nsight Compute's per-kernel durations.

    ncu --clock-control none --metrics gpu__time_duration.sum --csv --page raw --print-units base \
        --print-kernel-base function --log-file prof.csv  build-cuda/bench/kvsweep-engine-bench ...
    python3 tools/gpu/kernel_profile.py prof.csv [--tokens N] [--top 20]

Prints the kernels' summed durations by kind (matrix products, attention, the fused layer's
kernels, the LM head's scoring, libtorch's elementwise/copy kernels, ...) and the largest kernels
by name. ncu runs kernels one at a time, so the sum is the GPU's busy time without overlap or
launch gaps; with --tokens (the forward tokens of the profiled run) it is also given per token,
to hold against the wall time per token of an unprofiled run. The difference is idle GPU time
plus the clock difference between kernels run one at a time and a sustained run, so it bounds
neither alone.
"""
import argparse
import collections
import csv
import re
import sys

KINDS = [
    ("attention (cuDNN / flash / mem-efficient)", r"sdpa|fmha|flash|attention|mem_eff|fort_native"),
    ("matrix products", r"gemm|cutlass|xmma|nvjet|cublas"),
    ("fused layer kernels", r"^(RmsNormKernel|SwiGluKernel|RopeLayoutKernel)\b"),
    ("LM head scoring kernel", r"^HeadScoreKernel\b"),
    ("KV codec kernels", r"^(FakeQuantKernel|FakeQuantVecKernel|ChannelFakeQuantKernel)\b"),
    ("packed attention's gather and merge", r"^(BandGatherKernel|MergeKernel|MergeKernelVec)\b"),
    ("libtorch reductions", r"reduce|softmax|logsumexp|argmax|norm"),
    ("libtorch elementwise / copies", r"elementwise|vectorized|unrolled|copy|index|cat|fill|gather|scatter"),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv")
    ap.add_argument("--tokens", type=float, default=0)
    ap.add_argument("--top", type=int, default=20)
    a = ap.parse_args()
    lines = open(a.csv, errors="replace").read().splitlines()
    start = next((i for i, l in enumerate(lines) if '"Kernel Name"' in l), None)
    if start is None:
        sys.exit(f"{a.csv}: no ncu CSV header with \"Kernel Name\"")
    rows = list(csv.reader(lines[start:]))
    head = rows[0]
    name_c = head.index("Kernel Name")
    dur_c = head.index("gpu__time_duration.sum")
    scale = {"nsecond": 1.0, "ns": 1.0, "usecond": 1e3, "us": 1e3, "msecond": 1e6, "ms": 1e6,
             "second": 1e9, "s": 1e9}
    unit = 1.0
    by_name = collections.Counter()
    count = collections.Counter()
    for r in rows[1:]:
        if len(r) <= max(name_c, dur_c):
            continue
        try:
            ns = float(r[dur_c].replace(",", "")) * unit
        except ValueError:  # the units row, or a kernel without a duration
            if r[dur_c].strip() in scale:
                unit = scale[r[dur_c].strip()]
            continue
        by_name[r[name_c]] += ns
        count[r[name_c]] += 1
    total = sum(by_name.values())
    if total == 0:
        sys.exit(f"{a.csv}: no kernel durations")
    by_kind = collections.Counter()
    for n, ns in by_name.items():
        kind = next((k for k, rx in KINDS if re.search(rx, n, re.I)), "other")
        by_kind[kind] += ns
    print(f"kernels: {sum(count.values())}, GPU busy {total / 1e6:.1f} ms" +
          (f", {total / a.tokens / 1e3:.3f} us per forward token" if a.tokens else ""))
    print("\n| kind | ms | share |\n| --- | ---: | ---: |")
    for k, ns in by_kind.most_common():
        print(f"| {k} | {ns / 1e6:.2f} | {100 * ns / total:.1f}% |")
    print(f"\n| kernel | launches | ms | share |\n| --- | ---: | ---: | ---: |")
    for n, ns in by_name.most_common(a.top):
        print(f"| `{n[:90]}` | {count[n]} | {ns / 1e6:.2f} | {100 * ns / total:.1f}% |")


if __name__ == "__main__":
    main()
