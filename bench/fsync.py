#!/usr/bin/env python3
"""How many 1 KiB append + fdatasync rounds per second a filesystem does.

    python3 bench/fsync.py [DIR] [--count N] [--size BYTES] [--json]

One writer, one file opened O_APPEND in DIR (default: the current directory), N rounds of
write(SIZE bytes) then fdatasync. This is the ceiling of any broker that fsyncs each persistent
send on its own: a synchronous producer cannot be confirmed faster than one round. Group commit
(ferromq, KahaDB) shares one round among concurrent sends, so concurrent producers are bounded
by it only per batch.
"""
import argparse
import json
import os
import tempfile
import time


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", nargs="?", default=".")
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    fd, path = tempfile.mkstemp(prefix="fsync-", suffix=".dat", dir=args.dir)
    os.close(fd)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    buf = b"x" * args.size
    latencies = []
    try:
        started = time.perf_counter()
        for _ in range(args.count):
            t = time.perf_counter()
            os.write(fd, buf)
            os.fdatasync(fd)
            latencies.append(time.perf_counter() - t)
        elapsed = time.perf_counter() - started
    finally:
        os.close(fd)
        os.unlink(path)
    latencies.sort()

    def pct(q):
        return latencies[min(len(latencies) - 1, max(0, int(q * len(latencies) + 0.5) - 1))] * 1e6

    result = {
        "dir": os.path.abspath(args.dir),
        "count": args.count,
        "size": args.size,
        "fdatasync_per_sec": args.count / elapsed,
        "p50_us": pct(0.50),
        "p99_us": pct(0.99),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{result['fdatasync_per_sec']:.0f} append+fdatasync/s of {args.size} B "
            f"(p50 {result['p50_us']:.0f} µs, p99 {result['p99_us']:.0f} µs) in {result['dir']}"
        )


if __name__ == "__main__":
    main()
