"""Benchmark reading a set with `synthgen.ShardSet`: images/s in order, one at a time at random, and in
random batches, for shards without compression, with lzf and with gzip.

    python benchmarks/bench_read.py                     # 8,000 images at 161x161 in shards of 1,000
    python benchmarks/bench_read.py --n 16000 --size 64

Each set is built once from the embedded default (`synthgen build`), then read from the page cache in
this one process. Rows:
* in order: `images(arange(n))`, what loading a set into memory does;
* random single: `image(i)` for random i;
* random batches of B: `images(random indices)`, what a training feed that streams from disk does.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from common.machine import describe
from synthgen import ShardSet
from synthgen.cli import main as synthgen

BATCHES = (64, 256, 1000)


def rate(n_images: int, seconds: float) -> str:
    return f"{n_images / seconds:,.0f}"


def measure(root: Path, seconds: float) -> dict[str, str]:
    """images/s of each access pattern, each timed for about `seconds` (at least one pass)."""
    shards = ShardSet(root, verify=False)
    n = len(shards)
    rng = np.random.default_rng(0)
    shards.images(np.arange(min(n, 64)))  # open every handle the first reads need
    results = {}
    start, done = time.perf_counter(), 0
    while done == 0 or time.perf_counter() - start < seconds:
        shards.images(np.arange(n))
        done += n
    results["in order"] = rate(done, time.perf_counter() - start)
    start, done = time.perf_counter(), 0
    while done == 0 or time.perf_counter() - start < seconds:
        for i in rng.integers(0, n, 256).tolist():
            shards.image(i)
        done += 256
    results["random single"] = rate(done, time.perf_counter() - start)
    for batch in BATCHES:
        start, done = time.perf_counter(), 0
        while done == 0 or time.perf_counter() - start < seconds:
            shards.images(rng.permutation(n)[:batch])
            done += batch
        results[f"random batches of {batch}"] = rate(done, time.perf_counter() - start)
    shards.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=8000, help="images per set (default: %(default)s)")
    parser.add_argument("--size", type=int, default=161, help="image side (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=2.0, help="time per measurement (default: %(default)s)")
    parser.add_argument("--compression", default="none,lzf,gzip", help="kinds of shards (default: %(default)s)")
    args = parser.parse_args()
    print(f"machine: {describe('numpy', 'h5py')}")
    print(f"sets: {args.n} images at {args.size}x{args.size}, shards of 1,000, one image per chunk\n")
    work = Path(tempfile.mkdtemp(prefix="bench-read-"))
    try:
        table = {}
        for compression in args.compression.split(","):
            root = work / compression
            with contextlib.redirect_stdout(io.StringIO()):  # the build's summary: not what is measured
                built = synthgen(["build", "--n", str(args.n), "--size", str(args.size), "--compression", compression,
                                  "--out", str(root), "--no-progress"])
            if built != 0:
                raise SystemExit(f"building the {compression} set failed")
            table[compression] = measure(root, args.seconds)
        rows = list(next(iter(table.values())))
        print("| read (images/s) | " + " | ".join(table) + " |")
        print("|---|" + "---|" * len(table))
        for row in rows:
            print(f"| {row} | " + " | ".join(table[c][row] for c in table) + " |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
