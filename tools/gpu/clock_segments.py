#!/usr/bin/env python3
"""The GPU's clock and power over the busy stretches of a run, from an nvidia-smi log.

    nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,power.limit,utilization.gpu,\
temperature.gpu,clocks_event_reasons.active --format=csv -lms 250 > smi.csv
    python3 tools/gpu/clock_segments.py smi.csv [--busy 50]

(`SMI=1 tools/gpu/device_session.sh ...` writes that log to $OUT/smi.csv.) A busy stretch is a run
of samples at or above --busy percent utilization; for each, its time from the log's start, the
SM clock's mean and median, the mean power draw and the share of samples whose clock-event reasons
include the software power cap (bit 0x4). Kernels timed one at a time (Nsight Compute, the
kernel_profile.py figures) run cool, at the top clock; a sustained run at the power limit runs
slower: the ratio of the two clocks is how much of the gap between the profile's busy time and
the run's wall time is clocks rather than idle time.
"""
import argparse
import csv
import statistics
import sys


def number(cell):
    return float(cell.strip().split()[0])


def segments(rows, busy=50, min_samples=2):
    """The busy stretches of an nvidia-smi CSV log (rows as csv.reader gives them, header first):
    dicts of first/last sample index, clock and power lists and the count of power-capped samples."""
    if not rows or "clocks.current.sm" not in ",".join(rows[0]):
        raise ValueError("not an nvidia-smi CSV log with clocks.sm")
    head = [h.strip() for h in rows[0]]
    col = {}
    for name in ("clocks.current.sm", "power.draw", "utilization.gpu"):
        col[name] = next((i for i, h in enumerate(head) if h.startswith(name)), None)
        if col[name] is None:
            raise ValueError(f"no {name} column")
    reasons = next((i for i, h in enumerate(head) if h.startswith("clocks_event_reasons")), None)
    out, cur = [], None
    for i, r in enumerate(rows[1:]):
        try:
            util, clock, power = (number(r[col[c]]) for c in ("utilization.gpu", "clocks.current.sm", "power.draw"))
            capped = reasons is not None and int(r[reasons].strip(), 16) & 0x4 != 0
        except (ValueError, IndexError):  # a sample nvidia-smi could not read ("[N/A]") or cut off
            continue
        if util >= busy:
            if cur is None:
                cur = {"first": i, "clock": [], "power": [], "capped": 0}
            cur["last"] = i
            cur["clock"].append(clock)
            cur["power"].append(power)
            cur["capped"] += capped
        else:
            if cur is not None and len(cur["clock"]) >= min_samples:
                out.append(cur)
            cur = None
    if cur is not None and len(cur["clock"]) >= min_samples:
        out.append(cur)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv")
    ap.add_argument("--busy", type=float, default=50)
    ap.add_argument("--min-samples", type=int, default=2)
    a = ap.parse_args()
    rows = list(csv.reader(open(a.csv)))
    try:
        found = segments(rows, a.busy, a.min_samples)
    except ValueError as e:
        sys.exit(f"{a.csv}: {e}")
    stamps = [r[0].strip() for r in rows[1:2]]
    print(f"{len(rows) - 1} samples from {stamps[0] if stamps else '?'}; busy >= {a.busy:g}%: {len(found)} stretches")
    print("| samples | first..last sample | SM clock mean / median (MHz) | power (W) | power-capped |")
    print("| ---: | --- | ---: | ---: | ---: |")
    for s in found:
        n = len(s["clock"])
        print(f"| {n} | {s['first']}..{s['last']} | {statistics.mean(s['clock']):.0f} / "
              f"{statistics.median(s['clock']):.0f} | {statistics.mean(s['power']):.0f} | "
              f"{100 * s['capped'] / n:.0f}% |")


if __name__ == "__main__":
    main()
