"""Benchmark `vae-train` as users run it: the command itself, in its own process, on a set that `synthgen
build` makes, for several option sets and, for before and after, several code trees. Per run: the trainer's
images/s of each epoch (the first pays for compiling and autotuning), the command's wall time, and the
learning curve (validation loss and active dimensions by epoch), the runs' curves drawn together in
curves.png, everything in results.json.

    python benchmarks/bench_train.py --common="--vgg-weights W" \\
        --run= --run="--batch-size 128 --compile"                # the defaults, then a faster recipe
    python benchmarks/bench_train.py ... --tree /tmp/before --tree .  # before and after, in turns
    python benchmarks/bench_train.py --epochs 10 --common="--vgg-weights W" \\
        --run="--batch-size 64" --run="--batch-size 256"          # does a larger batch learn as well?

(`--run=OPTIONS` with the equals sign: in `--run --compile`, --compile would be read as this script's own.)

Every run of a tree trains on the same set, built once by that tree's own `synthgen build` (or --data), and
sees the same images per epoch whatever its batch size, so its curve can be laid over the others by epoch.
Each command runs by module from its tree (`python -m vae.cli`, the tree first on PYTHONPATH), so a second
work tree measures its own code. --repeat runs every (tree, run) pair again, in turns, for a machine whose
speed drifts.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common.machine import describe

HERE = Path(__file__).resolve().parents[1]
LOG_TAIL = 2000  # characters of a failed command's output shown with the error


def tree_environment(tree: Path) -> dict:
    """The environment that makes `python -m` import the tree's own code first (anything already on
    PYTHONPATH, such as a folder of extra wheels, stays after it)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tree)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def command_in(tree: Path, module: str, arguments: list[str], log: Path, what: str) -> float:
    """Run `python -m module arguments` from `tree`, its output to `log`; the wall time in seconds."""
    started = time.perf_counter()
    with open(log, "w") as out:
        done = subprocess.run([sys.executable, "-m", module, *arguments], cwd=tree, env=tree_environment(tree),
                              stdout=out, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        tail = log.read_text(errors="replace")[-LOG_TAIL:]
        raise SystemExit(f"{what} failed (exit {done.returncode}; its output: {log}):\n{tail}")
    return seconds


def build_set(tree: Path, out: Path, n: int, build_options: str) -> Path:
    """A set of n images made by the tree's own synthgen (its shard format is the one its trainer reads)."""
    if (out / "manifest.json").is_file() and json.loads((out / "manifest.json").read_text()).get("complete"):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    command_in(tree, "synthgen.cli", ["build", "--n", str(n), "--out", str(out), "--no-progress",
                                      *shlex.split(build_options)], out.parent / f"{out.name}.log",
               f"synthgen build in {tree}")
    return out


def read_run(out: Path) -> tuple[list[dict], dict]:
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return metrics, json.loads((out / "config.json").read_text())


def summarise(tree: str, options: str, repeat: int, wall: float, metrics: list[dict], config: dict) -> dict:
    """One row: images/s by epoch, the curve, and what the run actually used (batch, compile, precision)."""
    rates = [m["train"]["images_per_second"] for m in metrics]
    check = config.get("compile") or {}
    return {
        "tree": tree, "options": options or "(defaults)", "repeat": repeat,
        "batch_size": config["train"]["training"]["batch_size"],
        "compiled": bool(check.get("used")), "compile_difference": check.get("mean_difference"),
        "compile_error": check.get("error"), "compile_seconds": check.get("seconds"),
        "image_conv": check.get("image_conv"),  # with --image-conv triton: the layers that ran the kernels, if any
        "amp": config.get("amp"), "device": config.get("device"), "torch": config.get("torch"),
        "images_per_epoch": metrics[0]["train"]["images"],
        "images_per_second": rates,
        "after_first": statistics.median(rates[1:]) if len(rates) > 1 else None,
        "wall_seconds": wall,
        "validation_loss": [m["validation"]["loss"] for m in metrics],
        "active_dims": [m["active_dims"] for m in metrics],
        "latent": len(metrics[0]["kl_per_dim"]),
    }


def format_row(row: dict) -> str:
    rate = f"{row['after_first']:,.0f}" if row["after_first"] is not None else "-"
    difference = row["compile_difference"]
    seconds = f", {row['compile_seconds']:.0f} s" if row.get("compile_seconds") is not None else ""
    kernels = row.get("image_conv") or {}
    if kernels.get("kernels") == "triton":  # a row of --image-conv triton that ran cuDNN must say so
        seconds += f"; Triton in {', '.join(kernels['triton_layers'])}" if kernels.get("triton_layers") else \
            "; Triton kernels not used, cuDNN ran"
    compiled = (f"yes ({difference:.1e}{seconds})" if row["compiled"] else "refused" if difference is not None
                else "failed" if row.get("compile_error") else "no")
    return (f"| {row['tree']} | {row['options']} | {row['batch_size']} | {compiled} | "
            f"{', '.join(f'{r:,.0f}' for r in row['images_per_second'])} | {rate} | {row['wall_seconds']:.0f} | "
            f"{row['validation_loss'][-1]:.5g} | {min(row['validation_loss']):.5g} | "
            f"{row['active_dims'][-1]}/{row['latent']} |")


HEADER = ("| tree | options | batch | compiled (mean difference, seconds to compile and check) | images/s by epoch | "
          "images/s after the first | "
          "command (s) | validation loss, last | best | active dims, last |\n|---|---|---|---|---|---|---|---|---|---|")


def plot_curves(rows: list[dict], path: Path) -> None:
    """Validation loss and active dimensions by epoch, one line per run (repeats share a colour)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matplotlib.ticker import MaxNLocator

    figure, (loss_axis, active_axis) = plt.subplots(1, 2, figsize=(11, 4.5))
    labels = dict.fromkeys((r["tree"], r["options"]) for r in rows)  # in the order they ran
    colours = {label: f"C{i % 10}" for i, label in enumerate(labels)}
    several_trees = len({tree for tree, _ in labels}) > 1
    for row in rows:
        label = (row["tree"], row["options"])
        epochs = range(1, len(row["validation_loss"]) + 1)
        name = None if row["repeat"] else f"{label[0]}: {label[1]}" if several_trees else label[1]
        loss_axis.plot(epochs, row["validation_loss"], marker="o", color=colours[label], label=name)
        active_axis.plot(epochs, row["active_dims"], marker="o", color=colours[label], label=name)
    loss_axis.set(xlabel=f"epoch ({rows[0]['images_per_epoch']:,} images each)", ylabel="validation loss",
                  title="learning curves")
    active_axis.set(xlabel="epoch", ylabel="active dimensions", title="active dimensions",
                    ylim=(0, max(r["latent"] for r in rows) * 1.05))
    for axis in (loss_axis, active_axis):
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    figure.legend(*loss_axis.get_legend_handles_labels(), loc="lower center", ncol=2, fontsize=8, frameon=False)
    figure.tight_layout(rect=(0, 0.06 * ((len(labels) + 1) // 2), 1, 1))
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", action="append", metavar="OPTIONS",
                        help="vae-train options of one run, quoted (\"\" for the defaults); repeat for more runs "
                             "(default: the defaults)")
    parser.add_argument("--common", default="", metavar="OPTIONS",
                        help="vae-train options for every run, quoted (e.g. --device, --vgg-weights)")
    parser.add_argument("--tree", action="append", type=Path, metavar="PATH",
                        help="a checkout whose code to run; repeat for before and after (default: this one)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per run (default: %(default)s)")
    parser.add_argument("--repeat", type=int, default=1, help="times to run every (tree, run) pair, in turns "
                        "(default: %(default)s)")
    parser.add_argument("--n", type=int, default=16384, help="images of the set each tree builds "
                        "(default: %(default)s)")
    parser.add_argument("--build", default="", metavar="OPTIONS", help="extra `synthgen build` options, quoted")
    parser.add_argument("--data", type=Path, help="train every run on this set instead of building one per tree")
    parser.add_argument("--out", type=Path, default=Path("bench-train"),
                        help="folder for the sets, the runs, results.json and curves.png (default: %(default)s)")
    args = parser.parse_args(argv)
    for name in ("epochs", "repeat", "n"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    runs = args.run or [""]
    trees = [tree.resolve() for tree in (args.tree or [HERE])]
    for tree in trees:
        if not (tree / "vae" / "cli.py").is_file():
            parser.error(f"--tree {tree}: not a checkout of this project (no vae/cli.py there)")
    for options, reserved in [(args.build, ("--n", "--out")),
                              *[(o, ("--data", "--out", "--epochs", "--resume")) for o in [args.common, *runs]]]:
        try:
            given = shlex.split(options)
        except ValueError as exc:
            parser.error(f"{options!r}: {exc} (quote the options as a shell would)")
        if any(flag in given for flag in reserved):
            parser.error(f"{options!r}: {', '.join(reserved)} are the benchmark's to set")
    if args.data is not None and not (args.data / "manifest.json").is_file():
        parser.error(f"--data {args.data}: no synthgen set there (no manifest.json)")
    if args.out.exists() and any(args.out.glob("runs/*")):
        parser.error(f"--out {args.out}: holds runs of an earlier benchmark; choose another folder or remove it")
    args.out.mkdir(parents=True, exist_ok=True)
    labels = [tree.name if len({t.name for t in trees}) == len(trees) else str(tree) for tree in trees]

    described = describe("torch", gpu=True)  # the torch of this process, which the commands run with
    print(f"machine: {described}")
    source = f"--data {args.data}" if args.data else f"{args.n} images, synthgen build {args.build}".rstrip()
    print(f"set: {source}; "
          f"{args.epochs} epochs per run; options of every run: {args.common or '(none)'}", flush=True)
    sets = {tree: args.data.resolve() if args.data else build_set(tree, args.out / "sets" / f"set-{k}", args.n,
                                                                   args.build)
            for k, tree in enumerate(trees)}
    print(HEADER, flush=True)
    rows = []
    for repeat in range(args.repeat):
        for k, tree in enumerate(trees):
            for j, options in enumerate(runs):
                out = args.out / "runs" / f"tree{k}-run{j}-{repeat}"
                arguments = ["--data", str(sets[tree]), "--out", str(out.resolve()), "--epochs", str(args.epochs),
                             "--no-progress", *shlex.split(args.common), *shlex.split(options)]
                out.parent.mkdir(parents=True, exist_ok=True)
                wall = command_in(tree, "vae.cli", arguments, out.parent / f"{out.name}.log",
                                  f"vae-train {options or '(defaults)'} in {tree}")
                row = summarise(labels[k], options, repeat, wall, *read_run(out))
                rows.append(row)
                print(format_row(row), flush=True)
                (args.out / "results.json").write_text(json.dumps(
                    {"machine": described, "epochs": args.epochs, "trees": [str(t) for t in trees],
                     "rows": rows}, indent=1))
    plot_curves(rows, args.out / "curves.png")
    print(f"results: {args.out / 'results.json'}, curves: {args.out / 'curves.png'}")


if __name__ == "__main__":
    main()
