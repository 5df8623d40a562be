"""Benchmark the integrity check every reader runs: each shard hashed once per process before first use.

    python benchmarks/bench_verify.py --n 80000            # builds the set first (about 6.2 GB at 161 px)
    python benchmarks/bench_verify.py --set sets/train     # an existing set

It times, in this order and each in a fresh process (the check is cached per process):
* reading every label and image without the check (`verify=False`): what a trainer loading the set
  into memory does anyway;
* the check alone (`ShardSet.check()`: every shard read and hashed, on the default threads);
* the check with one thread, to show what the threads buy.
With --drop-caches (root on Linux) the page cache is emptied before each measurement, so the files are
read from the disk; without it they come from the page cache when the set fits in memory (as right
after building it). Prints a Markdown table row per measurement.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from common.machine import describe

CHILD = r"""
import json, sys, time
import numpy as np
import synthgen.reader as reader
from synthgen import ShardSet
root, mode, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
reader.VERIFY_THREADS = threads
start = time.perf_counter()
shards = ShardSet(root, verify=mode != "read")
if mode == "read":
    shards.labels
    for first in range(0, len(shards), 4096):
        shards.images(np.arange(first, min(first + 4096, len(shards))))
else:
    shards.check()
print(json.dumps({"seconds": time.perf_counter() - start, "images": len(shards)}))
"""


def drop_page_cache() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def measure(root: Path, mode: str, threads: int, cold: bool) -> dict:
    if cold:
        drop_page_cache()
    result = subprocess.run([sys.executable, "-c", CHILD, str(root), mode, str(threads)], capture_output=True,
                            text=True, check=True)
    return json.loads(result.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", default=None, help="an existing synthgen set (default: build one)")
    parser.add_argument("--n", type=int, default=80000, help="images to build when no --set is given")
    parser.add_argument("--workers", type=int, default=-1, help="synthgen workers for the build")
    parser.add_argument("--drop-caches", action="store_true", help="read from the disk, not the page cache "
                        "(needs root)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        root = Path(args.set) if args.set else Path(tmp) / "set"
        if not args.set:
            subprocess.run([Path(sys.executable).parent / "synthgen", "build", "--n", str(args.n), "--out", str(root),
                            "--workers", str(args.workers), "--no-progress"], check=True, stdout=subprocess.DEVNULL)
        size = sum(p.stat().st_size for p in root.glob("shard-*.h5"))
        print(f"set: {root}, {size / 1e9:.2f} GB; machine: {describe('numpy', 'h5py')}; page cache "
              f"{'dropped before each row' if args.drop_caches else 'as it is'}")
        print("| what | images | seconds | GB/s |\n|---|---|---|---|")
        for label, mode, threads in (("read every label and image, no check", "read", 1),
                                     ("check: hash every shard (4 threads, the default)", "check", 4),
                                     ("check with 1 thread", "check", 1)):
            found = measure(root, mode, threads, args.drop_caches)
            print(f"| {label} | {found['images']} | {found['seconds']:.2f} | {size / 1e9 / found['seconds']:.2f} |")


if __name__ == "__main__":
    main()
