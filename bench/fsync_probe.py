#!/usr/bin/env python3
"""How long one fdatasync takes on this disk, the floor under every durable commit
(docs/orchestration-bench.md): N appends of 8 KiB, each followed by fdatasync, timed.

  bench/fsync_probe.py [--dir /tmp] [--n 3000]
"""
import argparse
import os
import sys
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="/tmp")
    ap.add_argument("--n", type=int, default=3000)
    a = ap.parse_args()
    if a.n < 1:
        sys.exit("fsync_probe.py: --n must be at least 1")
    path = os.path.join(a.dir, "kvsweep_fsync_probe.%d" % os.getpid())
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    except OSError as e:
        sys.exit("fsync_probe.py: cannot create a file in %s: %s" % (a.dir, e.strerror))
    lat = []
    try:
        for _ in range(a.n):
            os.write(fd, b"x" * 8192)
            t = time.perf_counter()
            os.fdatasync(fd)
            lat.append((time.perf_counter() - t) * 1000)
    finally:
        os.close(fd)
        os.remove(path)
    lat.sort()
    q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))]
    print("fdatasync of 8 KiB appends, %d calls: p50 %.3f ms, p99 %.3f ms, max %.3f ms"
          % (len(lat), q(0.5), q(0.99), lat[-1]))


if __name__ == "__main__":
    main()
