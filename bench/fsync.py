#!/usr/bin/env python3
"""How many 1 KiB write + fdatasync rounds per second a filesystem does.

    python3 bench/fsync.py [DIR] [--count N] [--size BYTES] [--mode MODE] [--json]

One writer, one file in DIR (default: the current directory), N rounds of write(SIZE bytes)
then fdatasync, the writes one after another. MODE says what the file is like:

  append     opened O_APPEND, grows with every write (the file size changes each round);
  fallocate  preallocated with posix_fallocate, overwritten in place (unwritten extents are
             converted as they are written);
  zeroed     filled with written zeros and fsynced first, overwritten in place (what ferromq's
             journal segments are);
  all        the three in turn, each --count rounds, interleaved twice (the disk's speed
             drifts over minutes; compare modes within one run).

The default, append, is the ceiling of any broker that appends and fsyncs each persistent send
on its own (KahaDB): a synchronous producer cannot be confirmed faster than one round. Group
commit (ferromq, KahaDB) shares one round among concurrent sends, so concurrent producers are
bounded by it only per batch.
"""
import argparse
import json
import os
import tempfile
import time


def measure(directory, count, size, mode):
    """One run of `count` rounds in a new file of the given mode; the result as a dict."""
    fd, path = tempfile.mkstemp(prefix="fsync-", suffix=".dat", dir=directory)
    os.close(fd)
    span = count * size
    try:
        if mode == "append":
            fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        else:
            fd = os.open(path, os.O_WRONLY)
            if mode == "fallocate":
                os.posix_fallocate(fd, 0, span)
            else:
                zeros = bytes(1 << 20)
                for at in range(0, span, len(zeros)):
                    os.pwrite(fd, zeros[: min(len(zeros), span - at)], at)
            os.fsync(fd)
        buf = b"x" * size
        latencies = []
        started = time.perf_counter()
        for i in range(count):
            t = time.perf_counter()
            if mode == "append":
                os.write(fd, buf)
            else:
                os.pwrite(fd, buf, i * size)
            os.fdatasync(fd)
            latencies.append(time.perf_counter() - t)
        elapsed = time.perf_counter() - started
        os.close(fd)
    finally:
        os.unlink(path)
    latencies.sort()

    def pct(q):
        return latencies[min(len(latencies) - 1, max(0, int(q * len(latencies) + 0.5) - 1))] * 1e6

    return {
        "dir": os.path.abspath(directory),
        "mode": mode,
        "count": count,
        "size": size,
        "fdatasync_per_sec": count / elapsed,
        "p50_us": pct(0.50),
        "p99_us": pct(0.99),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", nargs="?", default=".")
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--mode", choices=["append", "fallocate", "zeroed", "all"], default="append")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    modes = ["append", "fallocate", "zeroed"] * 2 if args.mode == "all" else [args.mode]
    for mode in modes:
        result = measure(args.dir, args.count, args.size, mode)
        if args.json:
            print(json.dumps(result))
        else:
            verb = "append" if mode == "append" else f"overwrite ({mode})"
            print(
                f"{result['fdatasync_per_sec']:.0f} {verb}+fdatasync/s of {args.size} B "
                f"(p50 {result['p50_us']:.0f} µs, p99 {result['p99_us']:.0f} µs) in {result['dir']}"
            )


if __name__ == "__main__":
    main()
