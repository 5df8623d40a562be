"""The `synthgen` command: build, pack, inspect, verify. Options come from the settings in synthgen.config."""
from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from common.cli import add_version, out_folder_problem, run
from common.errors import UsageError
from common.settings import Parser, add_options, from_args
from synthgen.config import BuildCommand, DotsCommand, InspectCommand, PackCommand, VerifyCommand
from synthgen.stats import summary_lines


def cmd_build(given: dict, command: list[str]) -> int:
    from synthgen.build import build
    from synthgen.parallel import within_machine

    settings = from_args(BuildCommand, given)
    config = settings.config
    run_options = within_machine(settings.run, config.size, config.shard_size, config.n, settings.run.cache_mb << 20)
    summary = build(config, run_options, settings.out, command=command, scene_store=settings.scene_store)
    built, resumed = summary["images_built"], summary["images_resumed"]
    if built:
        workers = f"{summary['workers']} worker" + ("s" if summary["workers"] != 1 else "")
        print(f"synthgen: built {built} images in {summary['render_seconds']:.1f} s "
              f"({summary['images_per_second']:.0f} images/s, {workers}, {settings.run.backend})"
              + (f"; {resumed} were already built" if resumed else ""))
        stages = ", ".join(f"{k} {v:.3f}" for k, v in summary["ms_per_image"].items())
        print(f"  time per image (ms, summed over workers): {stages}")
    else:
        print(f"synthgen: all {resumed} images were already built; nothing to do")
    for line in summary_lines(summary):
        print(f"  {line}")
    print_outcome(summary, settings.out)
    return 0


def print_outcome(summary: dict, out) -> None:
    """The last lines of build and pack: skipped inputs and where the set is."""
    skipped = summary["skipped_inputs"]
    print(f"  skipped inputs    {len(skipped)}" + (" (each listed above, and in manifest.json)" if skipped else ""))
    print(f"  output            {out} (manifest.json + shards); next: synthgen inspect {shlex.quote(str(out))}")


def cmd_pack(given: dict, command: list[str]) -> int:
    from synthgen.pack import pack
    from synthgen.parallel import within_machine

    settings = from_args(PackCommand, given)
    run_options = within_machine(settings.run, settings.config.size, settings.config.shard_size)
    summary = pack(settings.config, run_options, settings.out, command=command)
    hist = "  ".join(f"{k}: {v}" for k, v in summary["count_histogram"].items())
    print(f"synthgen: packed {summary['n_images']} images ({summary['images_packed']} in this run) "
          f"in {summary['total_seconds']:.1f} s")
    print(f"  count histogram   {hist}   (4 means 4 or more)")
    print_outcome(summary, settings.out)
    return 0


def cmd_dots(given: dict, command: list[str]) -> int:
    from synthgen.dots import dots
    from synthgen.parallel import within_machine

    settings = from_args(DotsCommand, given)
    control = settings.config.control
    unused, used = ("--item-range", "--area-range") if control == "total-area" else ("--area-range", "--item-range")
    if unused[2:].replace("-", "_") in given:  # it would go unread, and yet change the set's identity
        raise UsageError(f"{unused} is not used with --control {control}, whose levels are set by {used}; give "
                         f"{used}, or --control {'item-size' if control == 'total-area' else 'total-area'}")
    config = settings.config
    run_options = within_machine(settings.run, config.size, config.shard_size, config.n)
    summary = dots(config, run_options, settings.out, command=command)
    built, resumed = summary["images_built"], summary["images_resumed"]
    print(f"synthgen: built {built} dot arrays in {summary['render_seconds']:.1f} s"
          + (f"; {resumed} were already built" if resumed else "") if built else
          f"synthgen: all {resumed} dot arrays were already built; nothing to do")
    for line in summary_lines(summary):
        print(f"  {line}")
    print_outcome(summary, settings.out)
    return 0


def cmd_inspect(given: dict, command: list[str]) -> int:
    from synthgen.inspection import inspect_set
    from synthgen.manifest import INSPECT_DIR, inside_set_problem

    settings = from_args(InspectCommand, given)
    own = settings.out and Path(settings.out).resolve() == Path(settings.dir).resolve() / INSPECT_DIR
    problem = settings.out and (out_folder_problem(settings.out) or (not own and inside_set_problem(settings.out)))
    default = Path(settings.dir) / INSPECT_DIR
    writable = default if default.is_dir() else Path(settings.dir)
    if not settings.out and writable.is_dir() and not os.access(writable, os.W_OK | os.X_OK):  # read-only storage
        problem = f"{settings.dir}: no permission to write its figures in {default}; give --out another folder"
    if problem:
        raise UsageError(problem)
    report = inspect_set(settings.dir, settings.out, settings.samples, verify=settings.verify_shards,
                         progress=settings.progress)
    summary = report["summary"]
    print(f"synthgen: {settings.dir}: {summary['n_images']} images")
    for line in summary_lines(summary):
        print(f"  {line}")
    for name, path in report["figures"].items():
        print(f"  {name.replace('_', ' '):<17} {path}")
    return 0


def cmd_verify(given: dict, command: list[str]) -> int:
    from synthgen.manifest import read_manifest
    from synthgen.verify import verify_set

    settings = from_args(VerifyCommand, given)
    problems = verify_set(settings.dir, progress=settings.progress)
    for name, found in problems.items():
        for problem in found:
            print(f"{name}: {problem}", file=sys.stderr)
    if problems:
        print(f"synthgen verify: {len(problems)} file(s) with problems in {settings.dir}", file=sys.stderr)
        return 1
    print(f"synthgen verify: all {len(read_manifest(settings.dir)['shards'])} shards in {settings.dir} are intact")
    return 0


COMMANDS = {"build": cmd_build, "dots": cmd_dots, "pack": cmd_pack, "inspect": cmd_inspect, "verify": cmd_verify}


def make_parser() -> Parser:
    parser = Parser(prog="synthgen", description="Composite salient objects onto scene backgrounds with controlled "
                    "count and cumulative area; write HDF5 shards.")
    add_version(parser, "synthgen")
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build, resume or extend a synthetic set",
                           description="Build a synthetic set; re-running the same command resumes it, and a larger "
                           "--n extends it.")
    add_options(build, BuildCommand)
    dots = sub.add_parser("dots", help="build binary dot arrays (Stoianov & Zorzi 2012): the positive control",
                          description="White dots on black, numerosity crossed with levels of cumulative area (or of "
                          "item size), in a field of controlled area; the synthgen shard schema.")
    add_options(dots, DotsCommand, exclude=("cache_mb", "on_bad_input"))
    pack = sub.add_parser("pack", help="pack natural labelled images (the SOS layout) into shards",
                          description="Pack natural images labelled 0, 1, 2, 3, 4+ into shards of the synthgen "
                          "schema, from count folders or an SOS split file.")
    add_options(pack, PackCommand, exclude=("cache_mb",))
    inspect = sub.add_parser("inspect", help="statistics and PNG figures of a set",
                             description="Label statistics, a count-versus-area figure and a contact sheet of a set.")
    add_options(inspect, InspectCommand)
    verify = sub.add_parser("verify", help="check schema and checksums of every shard",
                            description="Check every shard's schema and checksum against itself and manifest.json.")
    add_options(verify, VerifyCommand)
    return parser


def main(argv=None) -> int:
    args = vars(make_parser().parse_args(argv))
    name = args.pop("command")
    command = ["synthgen", *(sys.argv[1:] if argv is None else argv)]
    return run("synthgen", lambda: COMMANDS[name](args, command),
               interrupted="interrupted; finished shards are kept. Run the same command again to resume.",
               memory_hint="lower --workers, --shard-size or --cache-mb; finished shards are kept, and the same "
                           "command run again resumes")


if __name__ == "__main__":
    sys.exit(main())
