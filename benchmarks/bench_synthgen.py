"""Benchmark `synthgen build`: images/s of a 161x161 build from the real sample inputs, with 1 and
2 workers, and where the time goes per image (decode, transform, placement, blend, write).

    python benchmarks/bench_synthgen.py                    # the real sample in ../shared
    python benchmarks/bench_synthgen.py --n 80000          # the paper's set size

Rows:
* warm: a per-worker cache of --cache-mb 512 (the default, 256, holds the sample's 100 scenes as
  well). Every background is then decoded once per worker, as with any small background set.
* cold (--cache-mb 0): every background decoded at every use, and every object read back from the
  prepared store at every use. SUN397 backgrounds are used about once each in an 80K build, so this
  row is the realistic one for the paper's full data.
* a number: that cache in MB per worker (`--caches warm,64,cold`), to see what the memory each worker
  keeps hot costs when many workers share the processor's cache.
* store: cold, but every background read from a scene store (`--scene-store`) that an earlier build made;
  the seconds that making it took are printed first, once per run of the benchmark.
images/s is wall-clock over the render phase, until the last shard is on disk; "with start-up" is over
the whole build as a command runs it, and the seconds outside the render are its phases (the build's
`phase_seconds`): "checks", scanning the sources, the checks and the feasibility probes, while the
worker processes start in the background; "wait", for the workers still starting after that; "prepare",
the one-off decoding of all objects into the shared store (the store rows' scene store is made before
them); "end", mostly reading the labels back for the summary (1 worker runs in the main process: no worker
starts). "of linear" is images/s with start-up
against the number of workers times 1 worker's (the scaling target is 80% from 1 to 16 workers:
`--workers 1,2,4,8,16 --n 80000` on a 16-core machine).
Where scaling is lost, the render phase's timeline (synthgen.parallel.timeline) says: "busy" is the
workers' share of the phase spent in their tasks, "tail" the seconds at the end with workers idle for
want of shards, "flush" the seconds waited after the last shard for the disk; stage times per image
that grow with the number of workers point at contention instead; "shards in parts" counts the shards of
a partial last round rendered in parts (synthgen.parts), "worker processes" the processes that ran them
(more than the workers: some were replaced mid-build); `--split-full-rounds` renders a full last round in
parts too, to see whether that pays on many cores. The stage columns are per-image times summed over
workers (time spent in each stage).
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from joblib.externals.loky import get_reusable_executor

import synthgen.diskspace
import synthgen.parts
from common.machine import describe
from synthgen.build import build
from synthgen.compositor import STAGES
from synthgen.config import BuildConfig, RunOptions
from synthgen.parts import plan_parts

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
CACHE_MB = {"warm": 512, "cold": 0, "store": 0}
PHASES = ("scan_and_checks", "waiting_for_workers", "prepare", "labels_and_other")  # the build outside its render


def run(n: int, workers: int, cache_mb: int, objects: Path, backgrounds: Path, scene_store: Path | None = None) -> dict:
    # Every build starts its own workers, as a command does: loky would otherwise hand the next build
    # the workers of the last one, already started and warm.
    get_reusable_executor().shutdown(wait=True)
    out = Path(tempfile.mkdtemp(prefix="synthgen-bench-"))
    try:
        config = BuildConfig(n=n, size=161, objects=str(objects), backgrounds=str(backgrounds))
        return build(config, RunOptions(workers=workers, cache_mb=cache_mb, progress=False), out / "set",
                     log=lambda *_: None, scene_store=scene_store)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def make_scene_store(folder: Path, workers: int, objects: Path, backgrounds: Path) -> float:
    """Decode the backgrounds into a scene store in `folder` (a 1-image build); returns the seconds it took."""
    started = time.perf_counter()
    run(1, workers, 0, objects, backgrounds, folder)
    return time.perf_counter() - started


def plan_with_full_rounds(todo: list[int], sizes: dict[int, int], workers: int):
    """synthgen.parts.plan_parts, but a full last round is rendered in parts too (--split-full-rounds): the
    experiment that decides whether synthgen should (a loss at 2 workers, not measured on 16)."""
    whole, split = plan_parts(todo, sizes, workers)
    if split or workers <= 1 or len(todo) < workers:
        return whole, split
    _, split = plan_parts(todo[-workers:], sizes, workers + 1)  # the last round as a partial one of `workers`
    return [s for s in todo if s not in split], split


def split_full_rounds() -> None:
    """Plan every build of this process with plan_with_full_rounds: where the shards are rendered
    (synthgen.parts.run_set) and where the disk check counts the parts (synthgen.diskspace)."""
    synthgen.parts.plan_parts = synthgen.diskspace.plan_parts = plan_with_full_rounds


def cache_rows(text: str) -> list[tuple[str, int]]:
    """--caches: (label, MB per worker) per row; [] for a value that is neither a name nor a size."""
    rows = []
    for item in (part.strip() for part in text.split(",")):
        if item in CACHE_MB:
            rows.append((item, CACHE_MB[item]))
        elif item.isdigit():
            rows.append((f"{int(item)} MB", int(item)))
        else:
            return []
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=16000, help="images per build (default: %(default)s)")
    parser.add_argument("--workers", default="1,2", help="worker counts to run (default: %(default)s)")
    parser.add_argument("--caches", default="warm,cold",
                        help="rows to run per worker count: warm (512 MB), cold (0), store (cold, the backgrounds "
                             "read from a scene store) or a per-worker cache in MB, e.g. warm,64,cold "
                             "(default: %(default)s)")
    parser.add_argument("--split-full-rounds", action="store_true",
                        help="an experiment: render a full last round of shards in parts too (synthgen splits only "
                             "a partial one)")
    parser.add_argument("--objects", type=Path, default=SHARED / "thus10000-sample")
    parser.add_argument("--backgrounds", type=Path, default=SHARED / "scenes-bsds500")
    args = parser.parse_args()
    try:
        worker_counts = [int(w) for w in args.workers.split(",")]
    except ValueError:
        worker_counts = []
    if not worker_counts or min(worker_counts) < 1:
        parser.error(f"--workers {args.workers}: give worker counts of 1 or more, separated by commas (1,8,16)")
    if args.n < 1:
        parser.error(f"--n {args.n}: give 1 image or more")
    caches = cache_rows(args.caches)
    if not caches:
        parser.error(f"--caches {args.caches}: give warm, cold, store or cache sizes in MB (0 or more), separated by "
                     "commas")
    for folder in (args.objects, args.backgrounds):
        if not folder.is_dir():
            raise SystemExit(f"{folder} not found: pass --objects/--backgrounds (the sample data is in ../shared)")
    if args.split_full_rounds:
        split_full_rounds()
    print(f"machine: {describe('numpy', 'OpenCV', 'h5py', 'joblib')}")
    print(f"build: {args.n} images, 161x161, counts 0-4, default options"
          + (", full last rounds in parts too" if args.split_full_rounds else "") + "\n")
    header = ("| workers | cache | images/s | with start-up | of linear | busy | tail (s) | flush (s) | "
              "shards in parts | worker processes | 80K images (s) | checks (s) | wait (s) | prepare (s) | end (s) | "
              + " | ".join(STAGES)
              + " | total ms/img |")
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    one_worker: dict[str, float] = {}  # images/s of 1 worker, per cache
    store = Path(tempfile.mkdtemp(prefix="synthgen-bench-scenes-")) / "store"
    try:
        if any(label == "store" for label, _ in caches):
            seconds = make_scene_store(store, max(worker_counts), args.objects, args.backgrounds)
            print(f"(scene store for the store rows: made in {seconds:.2f} s by a 1-image build with "
                  f"{max(worker_counts)} workers)")
        for workers in worker_counts:
            for label, cache_mb in caches:
                row(args, workers, label, cache_mb, store if label == "store" else None, one_worker)
    finally:
        shutil.rmtree(store.parent, ignore_errors=True)


def row(args, workers: int, label: str, cache_mb: int, scene_store: Path | None, one_worker: dict) -> None:
    """Build once and print the table's row."""
    summary = run(args.n, workers, cache_mb, args.objects, args.backgrounds, scene_store)
    stages = summary["ms_per_image"]
    rate = summary["images_per_second"]
    with_start = summary["images_built"] / summary["total_seconds"]
    if workers == 1:
        one_worker[label] = with_start
    linear = f"{with_start / (workers * one_worker[label]):.0%}" if label in one_worker else "-"
    spent, phases = summary["render_timeline"], summary["phase_seconds"]
    print(f"| {workers} | {label} | {rate:.0f} | {with_start:.0f} | {linear} | {spent['workers_busy']:.0%} | "
          f"{spent['tail_seconds']:.2f} | {spent['after_last_result_seconds']:.2f} | "
          f"{spent['shards_in_parts']} | {spent['worker_processes']} | "
          f"{80000 / with_start:.0f} | " + " | ".join(f"{phases[p]:.2f}" for p in PHASES) + " | "
          + " | ".join(f"{stages[s]:.3f}" for s in STAGES) + f" | {sum(stages.values()):.3f} |", flush=True)


if __name__ == "__main__":
    main()
