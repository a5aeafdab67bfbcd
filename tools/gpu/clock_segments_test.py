#!/usr/bin/env python3
"""clock_segments.py on a made-up nvidia-smi log: busy stretches split by idle samples, short ones
dropped, the power-cap bit read from the clock-event reasons, unreadable samples skipped, and a
file that is not such a log refused with a one-line error.

  python3 tools/gpu/clock_segments_test.py      (ctest: ClockSegments)
"""
import os
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from clock_segments import segments  # noqa: E402

HEAD = ["timestamp", " clocks.current.sm [MHz]", " clocks.current.memory [MHz]", " power.draw [W]",
        " power.limit [W]", " utilization.gpu [%]", " temperature.gpu", " clocks_event_reasons.active"]


def sample(clock, power, util, reasons):
    return ["2026/01/01 00:00:00.000", f" {clock} MHz", " 3201 MHz", f" {power} W", " 700.00 W",
            f" {util} %", " 50", f" 0x{reasons:016x}"]


class SegmentsTest(unittest.TestCase):
    def test_stretches(self):
        rows = [HEAD,
                sample(345, 80, 0, 0x1),
                sample(1800, 690, 100, 0x4), sample(1600, 695, 100, 0x4),
                sample(1980, 300, 99, 0x0),                       # busy, not capped
                sample(345, 80, 0, 0x1),
                sample(1980, 200, 90, 0x0),                       # one busy sample: dropped
                sample(345, 80, 10, 0x1),
                ["2026/01/01 00:00:00.000", " [N/A]", " [N/A]", " [N/A]", " [N/A]", " [N/A]", " [N/A]", " [N/A]"],
                sample(1700, 650, 100, 0x4 | 0x1), sample(1500, 700, 100, 0x4)]
        found = segments(rows)
        self.assertEqual([(s["first"], s["last"]) for s in found], [(1, 3), (8, 9)])
        self.assertEqual(found[0]["clock"], [1800, 1600, 1980])
        self.assertEqual(found[0]["capped"], 2)
        self.assertEqual(found[1]["capped"], 2)
        self.assertEqual(found[1]["power"], [650, 700])
        # At a threshold of 5% the 90% and 10% samples are busy too, and with the unreadable sample
        # skipped (not idle) they run on into the last stretch.
        self.assertEqual([(s["first"], s["last"]) for s in segments(rows, busy=5)], [(1, 3), (5, 9)])
        # A lone busy sample is a stretch with min_samples=1.
        self.assertEqual([(s["first"], s["last"]) for s in segments(rows[:7], min_samples=1)],
                         [(1, 3), (5, 5)])

    def test_not_a_log(self):
        with self.assertRaises(ValueError):
            segments([["a", "b"], ["1", "2"]])
        with tempfile.NamedTemporaryFile("w", suffix=".csv", delete=False) as f:
            f.write("name,value\nx,1\n")
        try:
            r = subprocess.run([sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                             "clock_segments.py"), f.name],
                               capture_output=True, text=True)
        finally:
            os.unlink(f.name)
        self.assertNotEqual(r.returncode, 0)
        self.assertEqual(len(r.stderr.strip().splitlines()), 1, r.stderr)
        self.assertIn("not an nvidia-smi CSV log", r.stderr)


if __name__ == "__main__":
    unittest.main()
