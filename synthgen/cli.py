"""The `synthgen` command: build, inspect, verify."""
from __future__ import annotations

import argparse
import dataclasses
import sys

from synthgen import __version__
from synthgen.config import (AREA_DISTRIBUTIONS, BACKENDS, BAD_INPUT_POLICIES, COMPRESSIONS, BuildConfig, RunOptions,
                             parse_color_shift, parse_counts, parse_range)
from synthgen.errors import SynthgenError, UsageError
from synthgen.stats import summary_lines

DEFAULTS = {f.name: f.default for f in dataclasses.fields(BuildConfig)}


def _fmt_range(pair) -> str:
    return f"{pair[0]:g}-{pair[1]:g}"


def add_build_arguments(p: argparse.ArgumentParser) -> None:
    what = p.add_argument_group("what to build")
    what.add_argument("--n", type=int, required=True, help="number of images")
    what.add_argument("--out", required=True, help="output folder (created; resumed if it holds this same build)")
    what.add_argument("--count", default="0-4", help="objects per image: a range or list, e.g. 0-4, 1,2,4, 1-9; "
                      "balanced exactly over the set (default: %(default)s)")
    what.add_argument("--objects", default=None, help="THUS10000/MSRA10K-layout folder of NAME.jpg + NAME.png "
                      "(mask) pairs (default: the embedded procedural objects)")
    what.add_argument("--backgrounds", default=None, help="folder tree of scene images, e.g. SUN397 "
                      "(default: the embedded procedural backgrounds)")
    what.add_argument("--size", type=int, default=DEFAULTS["size"], help="side of the square RGB images in pixels "
                      "(default: %(default)s)")
    what.add_argument("--seed", type=int, default=DEFAULTS["seed"], help="image i depends only on (seed, i) "
                      "(default: %(default)s)")

    area = p.add_argument_group("area and placement")
    area.add_argument("--area-range", default=_fmt_range(DEFAULTS["area_range"]),
                      help="target cumulative object area LO-HI as fractions of the canvas, drawn per image "
                      "independently of N (default: %(default)s)")
    area.add_argument("--area-dist", choices=AREA_DISTRIBUTIONS, default=DEFAULTS["area_dist"],
                      help="distribution of the target area (default: %(default)s)")
    area.add_argument("--size-jitter", type=float, default=DEFAULTS["size_jitter"],
                      help="per-object variation of the area share around target/N, as a fraction; shares are "
                      "renormalised to add up to the target (default: %(default)s)")
    area.add_argument("--max-occlusion", type=float, default=DEFAULTS["max_occlusion"],
                      help="largest fraction of any object that later objects may hide; 0 = no overlap "
                      "(default: %(default)s)")
    area.add_argument("--max-outside", type=float, default=DEFAULTS["max_outside"],
                      help="largest fraction of an object that may fall outside the canvas; 0 keeps objects "
                      "inside (default: %(default)s)")
    area.add_argument("--placement-tries", type=int, default=DEFAULTS["placement_tries"],
                      help="random positions tried per object (default: %(default)s)")
    area.add_argument("--max-redraws", type=int, default=DEFAULTS["max_redraws"],
                      help="times an unplaceable scene is redrawn (same N and area) before the build stops "
                      "(default: %(default)s)")

    objs = p.add_argument_group("objects and their transforms")
    objs.add_argument("--same-object", action="store_true",
                      help="all N objects of an image are copies of one source object (the paper's section 4.4)")
    objs.add_argument("--source-objects", type=int, default=None, metavar="K",
                      help="use only K source objects, chosen from the seed (the paper used 15; default: all)")
    objs.add_argument("--rotation", type=float, default=DEFAULTS["rotation"],
                      help="largest rotation in degrees, either way (default: %(default)s)")
    objs.add_argument("--flip-prob", type=float, default=DEFAULTS["flip_prob"],
                      help="probability of a horizontal flip (default: %(default)s)")
    objs.add_argument("--color-shift", default=",".join(f"{v:g}" for v in DEFAULTS["color_shift"]),
                      help="colour jitter limits BRIGHTNESS,SATURATION,HUE (albumentations ColorJitter; hue in "
                      "turns), or 0 for none (default: %(default)s)")

    out = p.add_argument_group("output")
    out.add_argument("--shard-size", type=int, default=DEFAULTS["shard_size"],
                     help="images per HDF5 shard (default: %(default)s)")
    out.add_argument("--compression", choices=COMPRESSIONS, default=DEFAULTS["compression"],
                     help="compression of the image datasets (default: %(default)s)")
    out.add_argument("--overwrite", action="store_true",
                     help="replace a different build in --out (only synthgen's own files are removed)")

    add_run_arguments(p, cache=True)


def add_run_arguments(p: argparse.ArgumentParser, cache: bool) -> None:
    run = p.add_argument_group("how to run")
    run.add_argument("--workers", type=int, default=-1, help="worker processes; -1 = all cores (default: %(default)s)")
    run.add_argument("--backend", choices=BACKENDS, default="loky",
                     help="joblib backend; dask needs --scheduler (default: %(default)s)")
    run.add_argument("--scheduler", default=None, help="dask.distributed scheduler address, e.g. tcp://host:8786; "
                     "workers must see --out and the source folders")
    run.add_argument("--on-bad-input", choices=BAD_INPUT_POLICIES, default="skip",
                     help="skip each bad source file with one line saying why, or stop (default: %(default)s)")
    if cache:
        run.add_argument("--cache-mb", type=int, default=RunOptions.cache_mb,
                         help="memory per worker for decoded sources, in MB (default: %(default)s)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_options(args) -> RunOptions:
    return RunOptions(workers=args.workers, backend=args.backend, scheduler=args.scheduler,
                      overwrite=args.overwrite, on_bad_input=args.on_bad_input,
                      cache_mb=getattr(args, "cache_mb", RunOptions.cache_mb), progress=not args.no_progress)


def config_from_args(args) -> tuple[BuildConfig, RunOptions]:
    config = BuildConfig(
        n=args.n, counts=parse_counts(args.count), size=args.size,
        area_range=parse_range(args.area_range, "--area-range"), area_dist=args.area_dist,
        size_jitter=args.size_jitter, max_occlusion=args.max_occlusion, max_outside=args.max_outside,
        same_object=args.same_object, source_objects=args.source_objects, rotation=args.rotation,
        flip_prob=args.flip_prob, color_shift=parse_color_shift(args.color_shift), seed=args.seed,
        shard_size=args.shard_size, compression=args.compression, placement_tries=args.placement_tries,
        max_redraws=args.max_redraws, objects=args.objects, backgrounds=args.backgrounds)
    return config, run_options(args)


def cmd_build(args) -> int:
    from synthgen.build import build

    config, run = config_from_args(args)
    summary = build(config, run, args.out, command=args.argv or ["synthgen", *sys.argv[1:]])
    built, resumed = summary["images_built"], summary["images_resumed"]
    if built:
        print(f"synthgen: built {built} images in {summary['render_seconds']:.1f} s "
              f"({summary['images_per_second']:.0f} images/s, {summary['workers']} workers, {args.backend})"
              + (f"; {resumed} were already built" if resumed else ""))
        stages = ", ".join(f"{k} {v:.3f}" for k, v in summary["ms_per_image"].items())
        print(f"  time per image (ms, summed over workers): {stages}")
    else:
        print(f"synthgen: all {resumed} images were already built; nothing to do")
    for line in summary_lines(summary):
        print(f"  {line}")
    print_outcome(summary, args.out)
    return 0


def print_outcome(summary: dict, out) -> None:
    """The last lines of build and pack: skipped inputs and where the set is."""
    skipped = summary["skipped_inputs"]
    print(f"  skipped inputs    {len(skipped)}" + (" (each listed above, and in manifest.json)" if skipped else ""))
    print(f"  output            {out} (manifest.json + shards); next: synthgen inspect {out}")


def cmd_pack(args) -> int:
    from synthgen.pack import PackConfig, pack

    config = PackConfig(root=args.root, size=args.size, fit=args.fit, split_file=args.split_file, split=args.split,
                        shard_size=args.shard_size)
    summary = pack(config, run_options(args), args.out, command=args.argv or ["synthgen", *sys.argv[1:]])
    hist = "  ".join(f"{k}: {v}" for k, v in summary["count_histogram"].items())
    print(f"synthgen: packed {summary['n_images']} images ({summary['images_packed']} in this run) "
          f"in {summary['total_seconds']:.1f} s")
    print(f"  count histogram   {hist}   (4 means 4 or more)")
    print_outcome(summary, args.out)
    return 0


def cmd_inspect(args) -> int:
    from synthgen.inspection import inspect_set

    report = inspect_set(args.dir, args.out, args.samples)
    summary = report["summary"]
    print(f"synthgen: {args.dir}: {summary['n_images']} images")
    for line in summary_lines(summary):
        print(f"  {line}")
    for name, path in report["figures"].items():
        print(f"  {name.replace('_', ' '):<17} {path}")
    return 0


def cmd_verify(args) -> int:
    from synthgen.manifest import read_manifest
    from synthgen.verify import verify_set

    problems = verify_set(args.dir, progress=not args.no_progress)
    for name, found in problems.items():
        for problem in found:
            print(f"{name}: {problem}", file=sys.stderr)
    if problems:
        print(f"synthgen verify: {len(problems)} file(s) with problems in {args.dir}", file=sys.stderr)
        return 1
    print(f"synthgen verify: all {len(read_manifest(args.dir)['shards'])} shards in {args.dir} are intact")
    return 0


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="synthgen", description="Composite salient objects onto scene "
                                     "backgrounds with controlled count and cumulative area; write HDF5 shards.")
    parser.add_argument("--version", action="version", version=f"synthgen {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build (or resume) a synthetic set",
                           description="Build a synthetic set; re-running the same command resumes it.")
    add_build_arguments(build)
    build.set_defaults(func=cmd_build)
    pack = sub.add_parser("pack", help="pack natural labelled images (the SOS layout) into shards",
                          description="Pack natural images labelled 0, 1, 2, 3, 4+ into shards of the synthgen "
                          "schema, from count folders or an SOS split file.")
    pack.add_argument("root", help="folder with subfolders 0, 1, 2, 3, 4+ of images (or the image root of "
                      "--split-file's paths)")
    pack.add_argument("--out", required=True, help="output folder (created; resumed if it holds this same pack)")
    pack.add_argument("--split-file", default=None, help="SOS split file: lines 'path,label,split' (paths relative "
                      "to ROOT); use with --split")
    pack.add_argument("--split", choices=("train", "test"), default=None, help="which split of --split-file to pack")
    pack.add_argument("--size", type=int, default=161, help="side of the square images (default: %(default)s)")
    pack.add_argument("--fit", choices=("squash", "crop", "pad"), default="squash",
                      help="squash to the square (every object stays in view), centre-crop, or pad "
                      "(default: %(default)s)")
    pack.add_argument("--shard-size", type=int, default=1000, help="images per shard (default: %(default)s)")
    pack.add_argument("--overwrite", action="store_true", help="replace a different pack in --out")
    add_run_arguments(pack, cache=False)
    pack.set_defaults(func=cmd_pack)
    inspect = sub.add_parser("inspect", help="statistics and PNG figures of a set")
    inspect.add_argument("dir", help="a synthgen output folder")
    inspect.add_argument("--out", default=None, help="where to write the figures (default: DIR/inspect)")
    inspect.add_argument("--samples", type=int, default=40, help="images on the contact sheet (default: %(default)s)")
    inspect.set_defaults(func=cmd_inspect)
    verify = sub.add_parser("verify", help="check schema and checksums of every shard")
    verify.add_argument("dir", help="a synthgen output folder")
    verify.add_argument("--no-progress", action="store_true", help="no progress bar")
    verify.set_defaults(func=cmd_verify)
    return parser


def main(argv=None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    args.argv = None if argv is None else ["synthgen", *argv]
    try:
        return args.func(args)
    except UsageError as exc:
        print(f"synthgen: error: {exc}", file=sys.stderr)
        return 2
    except SynthgenError as exc:
        print(f"synthgen: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a read or write the code did not expect to fail (disk, permissions...)
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"synthgen: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("synthgen: interrupted; finished shards are kept. Run the same command again to resume.",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
