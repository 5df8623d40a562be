"""Benchmark the two feeds of `vae-train`: the whole set in the device's memory, against batches streamed
from the shards by DataLoader workers (`--data-on-device no`, default --workers), in the real trainer.

    python benchmarks/bench_feed.py                          # CPU, a small model, 48x48 images
    python benchmarks/bench_feed.py --device cuda --size 161 --n 20000 --model paper --batch 128

Both runs see the same batches in the same order (tests/test_vae_train.py checks that their weights are
identical); images/s is the trainer's own figure for each epoch after the first.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from common.machine import describe
from synthgen.cli import main as synthgen
from vae.cli import main as vae_train

# Small enough that on a CPU the step is fast and the feed, not the model, would show as the limit.
SMALL = ["--encoder", "16@4x4-2,32@4x4-2", "--decoder", "32@3x3-2,16@3x3-2", "--latent", "16", "--recon", "pixel"]


def train(data: Path, out: Path, feed: str, args) -> list[dict]:
    model = [] if args.model == "paper" else SMALL
    command = ["--data", str(data), "--out", str(out), "--epochs", str(args.epochs), "--batch-size", str(args.batch),
               "--data-on-device", feed, "--device", args.device, "--no-progress", *model]
    if args.workers is not None:
        command += ["--workers", str(args.workers)]
    if args.vgg_weights:
        command += ["--vgg-weights", args.vgg_weights]
    with contextlib.redirect_stdout(io.StringIO()):
        if vae_train(command) != 0:
            raise SystemExit(f"vae-train failed: {' '.join(command)}")
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=6000, help="images in the set (default: %(default)s)")
    parser.add_argument("--size", type=int, default=48, help="image side (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run; the first is not counted")
    parser.add_argument("--batch", type=int, default=64, help="batch size (default: %(default)s)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", choices=("small", "paper"), default="small",
                        help="small: 2 conv layers each way, pixel loss; paper: the paper's configuration")
    parser.add_argument("--vgg-weights", help="for --model paper")
    parser.add_argument("--workers", type=int, help="DataLoader workers of the streamed run (default: vae-train's)")
    args = parser.parse_args()
    print(f"machine: {describe('torch', gpu=args.device.startswith('cuda'))}; "
          f"{torch.get_num_threads()} torch threads")
    work = Path(tempfile.mkdtemp(prefix="bench-feed-"))
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            built = synthgen(["build", "--n", str(args.n), "--size", str(args.size), "--out", str(work / "set"),
                              "--no-progress"])
        if built != 0:
            raise SystemExit("building the set failed")
        print(f"set: {args.n} images at {args.size}x{args.size}; model {args.model}, batch {args.batch}, "
              f"{args.epochs} epochs\n")
        rates = {}
        for feed in ("yes", "no"):
            records = train(work / "set", work / f"run-{feed}", feed, args)
            rates[feed] = [r["train"]["images_per_second"] for r in records[1:]]
        print("| feed | images/s per epoch (after the first) | mean | x memory |")
        print("|---|---|---|---|")
        memory = float(np.mean(rates["yes"]))
        for feed, label in (("yes", "in memory (`--data-on-device yes`)"), ("no", "streamed (`--data-on-device no`)")):
            mean = float(np.mean(rates[feed]))
            print(f"| {label} | {', '.join(f'{r:.0f}' for r in rates[feed])} | {mean:.0f} | {mean / memory:.2f} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
