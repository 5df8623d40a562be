"""Benchmark the per-item work on sources: what a build spends on each background it decodes, and on each
object it prepares (synthgen.prepared), step by step.

    python benchmarks/bench_sources.py                 # the embedded default, and the real sample in ../shared

Rows, in ms per item (the best of --repeats passes over the items, one process, one core):
* background: a scene image decoded (or, for the embedded default, drawn) at the build's size; with
  --cache-mb 0 a build does this for every image.
* object, decode: the image and mask read from disk (THUS10000), or the object drawn (embedded default).
* object, cut out: the mask read (synthgen.masks), the crop, premultiplication and the mip levels.
* object, probe: whether it can appear at every area and count (compositor.Eligibility), which places
  scenes of its copies at the top of the area range.
A build prepares every object once (THUS10000: 10K of them), in parallel, before the first image.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from common.machine import describe
from synthgen.compositor import Eligibility
from synthgen.config import BuildConfig
from synthgen.procedural import N_OBJECTS, ProceduralBackgrounds, procedural_object
from synthgen.sources import FolderBackgrounds, cutout_from_arrays, read_object, scan_backgrounds, scan_objects

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def best_ms(call, ids, repeats: int) -> float:
    """The best of `repeats` passes of call(k) over `ids`, in ms per item."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for k in ids:
            call(k)
        best = min(best, (time.perf_counter() - start) / len(ids))
    return best * 1e3


def measure(config: BuildConfig, limit: int, repeats: int, objects_dir: Path | None = None,
            backgrounds_dir: Path | None = None) -> list[tuple[str, str, float, int]]:
    """Rows of (source, step, ms per item, items) for the embedded default and any folders given."""
    size, rows = config.size, []

    def row(source: str, step: str, call, n_items: int):
        ids = range(min(limit, n_items))
        rows.append((source, step, best_ms(call, ids, repeats), len(ids)))

    def cut_out(source: str, arrays: dict, n_items: int):
        """The cut-out and probe rows of objects whose arrays are in `arrays`; each probe starts from the
        cut-out made in the row before, as in a build, so that its row times the probe alone."""
        cutouts = {}
        row(source, "object, cut out", lambda k: cutouts.__setitem__(k, cutout_from_arrays(*arrays[k], size)),
            n_items)
        row(source, "object, probe", lambda k: Eligibility(config)(k, cutouts[k]), n_items)

    default = "embedded default"
    backgrounds = ProceduralBackgrounds(cache_bytes=0)
    row(default, "background", lambda k: backgrounds.decode(k, size), len(backgrounds))
    drawn = {}
    row(default, "object, decode", lambda k: drawn.__setitem__(k, procedural_object.__wrapped__(k)), N_OBJECTS)
    cut_out(default, drawn, N_OBJECTS)
    if backgrounds_dir is not None:
        folder = FolderBackgrounds(backgrounds_dir, scan_backgrounds(backgrounds_dir)[0], cache_bytes=0)
        row(backgrounds_dir.name, "background", lambda k: folder.decode(k, size), len(folder))
    if objects_dir is not None:
        pairs = scan_objects(objects_dir)[0]
        read = {}
        row(objects_dir.name, "object, decode",
            lambda k: read.__setitem__(k, read_object(*(objects_dir / name for name in pairs[k]))), len(pairs))
        cut_out(objects_dir.name, read, len(pairs))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=161, help="the build's image size (default: %(default)s)")
    parser.add_argument("--limit", type=int, default=600, help="the most items of each source (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="passes over the items (default: %(default)s)")
    parser.add_argument("--objects", type=Path, default=SHARED / "thus10000-sample")
    parser.add_argument("--backgrounds", type=Path, default=SHARED / "scenes-bsds500")
    args = parser.parse_args()
    if args.size < 32 or args.limit < 1 or args.repeats < 1:
        parser.error("--size must be 32 or more, --limit and --repeats 1 or more")
    folders = [folder if folder.is_dir() else None for folder in (args.objects, args.backgrounds)]
    for given, folder in zip((args.objects, args.backgrounds), folders):
        if folder is None:
            print(f"{given} not found: its rows are left out (the sample data is in ../shared)")
    print(f"machine: {describe('numpy', 'OpenCV')}")
    print(f"items at {args.size}x{args.size}, the best of {args.repeats} passes\n")
    print("| source | step | ms per item | items |\n|---|---|---|---|")
    for source, step, ms, n in measure(BuildConfig(n=1, size=args.size), args.limit, args.repeats, *folders):
        print(f"| {source} | {step} | {ms:.2f} | {n} |")


if __name__ == "__main__":
    main()
