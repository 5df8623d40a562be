"""The kernels of `vae-train --image-conv triton` (vae/tritonconv.py), pass by pass, for the paper's three image
convolutions (the encoder's first layer, the output layer, VGG-19's conv1_1) at a batch size.

    python benchmarks/bench_imageconv.py                             # any machine: the kernels as an H100 runs them
    python benchmarks/bench_imageconv.py --device cuda --batch 128   # and each pass timed against cuDNN's
    python benchmarks/bench_imageconv.py --device cuda --tune        # and each pass at every setting tried

* Without a GPU: each pass's kernel compiled for an H100 (sm_90) as its launch compiles it (the same arguments,
  so the same specialisations), by Triton's compiler and the ptxas it brings: registers per thread, bytes spilled
  to local memory, shared memory, and how the wide maps move (16-byte accesses). Spills or scalar accesses to a
  64-channel map are what would keep a memory-bound kernel from its floor.
* On a CUDA GPU: each pass timed (CUDA events, median of --repeats) with our kernel and with cuDNN as the
  compiled step runs it otherwise (the 3 channels padded to 8, vae.imageconv), the largest difference between
  the two, and the least time the pass's traffic allows at the card's memory bandwidth (each map read once and
  written once).
* `--tune`: each pass at every setting of vae/tritonconv.py's BLOCK_PIXELS, NUM_WARPS and (for the weight
  gradients) WEIGHT_GRAD_CHUNKS in TUNE_SETTINGS, compiled (registers, spills) and, on a GPU, timed and checked;
  then, for each pass, the fastest setting against the one in force.
"""
from __future__ import annotations

import argparse
import itertools
import math
import os
import re
import statistics
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch

from common.machine import GPU_MEMORY_TBPS, datasheet, describe
from vae import imageconv, tritonconv
from vae.model import VAE, ModelConfig
from vae.vgg import truncated_vgg19

SM90 = ("cuda", 90, 32)
POINTER_TYPES = {torch.bfloat16: "*bf16", torch.float16: "*fp16", torch.float32: "*fp32"}
# What --tune tries: output pixels a program, warps a program, and weight-gradient programs a tap (2, 4 or 8
# waves of an H100's 132 multiprocessors)
TUNE_SETTINGS = {"BLOCK_PIXELS": (64, 128, 256), "NUM_WARPS": (4, 8), "WEIGHT_GRAD_CHUNKS": (132 * 2, 132 * 4, 132 * 8)}


def paper_layers() -> dict[str, torch.nn.Conv2d]:
    """The image convolutions of the paper's model and loss, by name."""
    model = VAE(ModelConfig())
    return {"encoder.0": model.encoder[0], "output": model.output, "vgg.0": truncated_vgg19()[0]}


def padded_forward(conv: imageconv.ImageConv2d, x: torch.Tensor) -> torch.Tensor:
    """What the compiled step runs for conv's forward pass without the Triton kernels: cuDNN on the padded
    channels, then (VGG's conv1_1) the ReLU, a pass of its own over the map."""
    y = imageconv.padded_conv(conv, x, imageconv.CUDA_CHANNELS)
    return torch.relu(y) if conv.relu else y


def passes(batch: int, side: int = 161, device: str = "meta", dtype=torch.bfloat16) -> list[dict]:
    """Every pass of the three layers in a training step at `batch`: its name, the tensors it reads and writes
    (channels_last maps; on the meta device they only carry shapes) and what it computes with torch's own
    convolution (`reference`, run on a GPU to time cuDNN and check the kernel)."""
    def map_(channels, size):
        shape = (batch, channels, size, size)
        made = torch.empty(shape, device=device, dtype=dtype) if device == "meta" else \
            torch.randn(shape, device=device, dtype=dtype)
        return made.contiguous(memory_format=torch.channels_last)

    rows = []
    for name, conv in paper_layers().items():
        conv = conv.to(device=device, dtype=dtype).requires_grad_(False)
        k, pad = conv.kernel_size[0], conv.padding[0]
        out_side = side + 2 * pad - k + 1
        w, b = conv.weight, conv.bias
        x, g = map_(conv.in_channels, side), map_(conv.out_channels, out_side)
        flipped = w.flip(2, 3).transpose(0, 1).contiguous()
        rows.append(dict(name=f"{name} forward" + (" with its ReLU" if conv.relu else ""),
                         launch=tritonconv.conv_launch(x, w, b, map_(conv.out_channels, out_side), pad, conv.relu),
                         reference=lambda x=x, conv=conv: padded_forward(conv, x), moved=[x, w, g]))
        if name != "encoder.0":  # its input is the image: no gradient
            rows.append(dict(name=f"{name} input gradient",
                             launch=tritonconv.conv_launch(g, flipped, None, map_(conv.in_channels, side), k - 1 - pad),
                             reference=lambda g=g, x=x, w=w, pad=pad: torch.ops.aten.convolution_backward(
                                 g, x, w, None, [1, 1], [pad, pad], [1, 1], False, [0, 0], 1, [True, False, False])[0],
                             moved=[g, w, x]))
        if name != "vgg.0":  # frozen
            launch, _, _ = tritonconv.weight_grad_launch(g, x, k, pad)
            rows.append(dict(name=f"{name} weight gradient", launch=launch,
                             reference=lambda g=g, x=x, w=w, pad=pad: torch.ops.aten.convolution_backward(
                                 g, x, w, [w.shape[0]], [1, 1], [pad, pad], [1, 1], False, [0, 0], 1,
                                 [False, True, True])[1],
                             moved=[g, x, w]))
    return rows


def compiled_resources(launch: tritonconv.Launch) -> dict:
    """The launch's kernel compiled for an H100 with the specialisations Triton gives these arguments at run time
    (integers equal to 1 as constants, integers and pointers divisible by 16 marked so, which lets it vectorise):
    registers per thread, bytes spilled, shared memory, and the 16-byte loads and stores in its code."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    kernel = launch.kernel
    signature, attrs, constants = {}, {}, dict(launch.constants)
    for index, name in enumerate(kernel.arg_names):
        value = launch.args[index] if index < len(launch.args) else None
        if name in constants or value is None or (isinstance(value, int) and value == 1):
            signature[name] = "constexpr"
            constants.setdefault(name, value)
        elif isinstance(value, torch.Tensor):
            signature[name] = POINTER_TYPES[value.dtype]
            if value.data_ptr() % 16 == 0:
                attrs[(index,)] = [["tt.divisibility", 16]]
        else:
            signature[name] = "i32" if -2**31 <= value < 2**31 else "i64"
            if value % 16 == 0:
                attrs[(index,)] = [["tt.divisibility", 16]]
    compiled = triton.compile(ASTSource(kernel, signature, constants, attrs), target=GPUTarget(*SM90),
                              options={"num_warps": launch.num_warps})
    ptx = compiled.asm["ptx"]
    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "kernel.ptx"
        source.write_text(ptx)
        report = subprocess.run([str(ptxas), "-v", "--gpu-name", "sm_90a", str(source), "-o",
                                 str(Path(folder) / "kernel.cubin")], capture_output=True, text=True, check=True).stderr
    spilled = re.search(r"(\d+) bytes spill stores", report)
    return {"registers": int(re.search(r"Used (\d+) registers", report).group(1)),
            "spilled_bytes": int(spilled.group(1)) if spilled else 0, "shared_bytes": compiled.metadata.shared,
            "loads_16_bytes": len(re.findall(r"cp\.async\.\w+\.shared\.global[^\n]*0x10,", ptx))
            + len(re.findall(r"ld\.global[.\w]*\.v4\.b32", ptx)),
            "stores_16_bytes": len(re.findall(r"st\.global[.\w]*\.v4\.b32", ptx))}


@contextmanager
def kernel_settings(**values: int):
    """vae/tritonconv.py's launch settings (BLOCK_PIXELS, NUM_WARPS, WEIGHT_GRAD_CHUNKS) set to `values` while the
    block runs; launches made then keep them."""
    saved = {name: getattr(tritonconv, name) for name in values}
    for name, value in values.items():
        setattr(tritonconv, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(tritonconv, name, value)


def tuning(batch: int, device: str = "meta", repeats: int = 50, side: int = 161) -> list[dict]:
    """Every pass of passes() at every setting of TUNE_SETTINGS (the weight-gradient programs only where a pass
    has them): the programs it launches, its registers and spills compiled for an H100 and, on a GPU, its median
    ms and largest difference from torch's convolution. `now` marks the settings in force."""
    now = {name: getattr(tritonconv, name) for name in TUNE_SETTINGS}
    found = []
    for values in itertools.product(*TUNE_SETTINGS.values()):
        setting = dict(zip(TUNE_SETTINGS, values))
        with kernel_settings(**setting):
            rows = passes(batch, side=side, device=device)
        for row in rows:
            weight = row["launch"].kernel is tritonconv._weight_grad_kernel
            if not weight and setting["WEIGHT_GRAD_CHUNKS"] != now["WEIGHT_GRAD_CHUNKS"]:
                continue  # the same launch as at the chunks in force
            used = setting if weight else {**setting, "WEIGHT_GRAD_CHUNKS": None}
            record = {"name": row["name"], **used, "now": all(used[k] in (None, now[k]) for k in now),
                      "programs": math.prod(row["launch"].grid), **compiled_resources(row["launch"])}
            if device == "cuda":
                record["ms"] = time_ms(row["launch"].run, repeats)
                record["difference"] = largest_difference(row)
            found.append(record)
    return found


def print_tuning(found: list[dict]) -> None:
    timed = "ms" in found[0]
    print("| pass | pixels a program | warps | weight-gradient programs a tap | programs | registers | spilled bytes |"
          + (" ms | largest difference |" if timed else "") + " in force |")
    print("|---|---|---|---|---|---|---|" + ("---|---|" if timed else "") + "---|")
    for r in sorted(found, key=lambda r: (r["name"], r.get("ms", 0))):
        print(f"| {r['name']} | {r['BLOCK_PIXELS']} | {r['NUM_WARPS']} | {r['WEIGHT_GRAD_CHUNKS'] or '-'} | "
              f"{r['programs']:,} | {r['registers']} | {r['spilled_bytes']} |"
              + (f" {r['ms']:.3f} | {r['difference']:.2g} |" if timed else "") + (" yes |" if r["now"] else " |"))
    if not timed:
        return
    print("\nThe fastest setting of each pass against the one in force:\n")
    for name in dict.fromkeys(r["name"] for r in found):
        rows = [r for r in found if r["name"] == name]
        best, now = min(rows, key=lambda r: r["ms"]), next((r for r in rows if r["now"]), None)
        print(f"* {name}: {best['ms']:.3f} ms at {best['BLOCK_PIXELS']} pixels, {best['NUM_WARPS']} warps"
              + (f", {best['WEIGHT_GRAD_CHUNKS']} programs a tap" if best["WEIGHT_GRAD_CHUNKS"] else "")
              + (f"; {now['ms']:.3f} ms in force ({now['ms'] / best['ms']:.2f}x)" if now else
                 "; the settings in force are not among those tried"))


def largest_difference(row: dict) -> float:
    """Runs the pass with our kernel and with torch's convolution; their largest difference, relative to the
    largest value torch's gives."""
    launch = row["launch"]
    launch.run()
    if launch.kernel is tritonconv._weight_grad_kernel:  # partial sums (args 2 and 3), added as image_conv does
        out_c, in_c, k, _ = row["moved"][2].shape
        ours = tritonconv.summed_weight_grad(launch.args[2], launch.args[3], out_c, in_c, k)[0]
    else:
        ours = launch.args[3]  # the map it writes
    reference = row["reference"]().float()
    return ((ours.float() - reference).abs().max() / reference.abs().max()).item()


def floor_ms(tensors: list[torch.Tensor], tbps: float) -> float:
    """The least time the pass's traffic allows: each tensor read or written once."""
    return sum(t.numel() * t.element_size() for t in tensors) / (tbps * 1e12) * 1e3


def time_ms(run, repeats: int) -> float:
    """Median milliseconds of `run` on the current CUDA stream."""
    run()  # cuDNN's autotuning and Triton's compiling
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cuda: also time each pass on the GPU")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--memory-tbps", type=float, default=None, help="the card's bandwidth (default: table)")
    parser.add_argument("--tune", action="store_true",
                        help="also each pass at every setting of BLOCK_PIXELS, NUM_WARPS and WEIGHT_GRAD_CHUNKS in "
                             "TUNE_SETTINGS: compiled and, with --device cuda, timed")
    args = parser.parse_args()
    if args.batch < 1 or args.repeats < 1:
        parser.error(f"--batch {args.batch} --repeats {args.repeats}: give whole numbers of 1 or more")
    if args.memory_tbps is not None and not args.memory_tbps > 0:
        parser.error(f"--memory-tbps {args.memory_tbps:g}: give the card's bandwidth in TB/s, above 0")
    if os.environ.get("TRITON_INTERPRET") == "1":
        parser.error("TRITON_INTERPRET=1: the interpreter compiles nothing; unset it")
    cuda = args.device == "cuda"
    print(f"machine: {describe('torch', 'triton', gpu=cuda)}")
    print(f"batch {args.batch}, bf16, channels_last; kernels launched with {tritonconv.NUM_WARPS} warps, "
          f"{tritonconv.BLOCK_PIXELS} pixels a program\n")
    print("Compiled for an H100 (sm_90), as launched:\n")
    print("| pass | kernel | registers | spilled bytes | shared bytes | 16-byte loads / stores in the code |")
    print("|---|---|---|---|---|---|")
    for row in passes(args.batch):
        r = compiled_resources(row["launch"])
        print(f"| {row['name']} | {row['launch'].kernel.__name__} | {r['registers']} | {r['spilled_bytes']} | "
              f"{r['shared_bytes']} | {r['loads_16_bytes']} / {r['stores_16_bytes']} |", flush=True)
    if not cuda:
        if args.tune:
            print("\nEvery setting tried, compiled for an H100 (--device cuda times them):\n")
            print_tuning(tuning(args.batch))
        return
    torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name()
    tbps = args.memory_tbps or datasheet(GPU_MEMORY_TBPS, name)
    floor_note = f"floor at {tbps} TB/s" if tbps else "no floor: give --memory-tbps"
    print(f"\nOn {name}, median of {args.repeats} runs ({floor_note}):\n")
    print("| pass | cuDNN ms | ours ms | ours / cuDNN | floor ms | ours at the floor | largest difference |")
    print("|---|---|---|---|---|---|---|")
    for row in passes(args.batch, device="cuda"):
        ours, theirs = time_ms(row["launch"].run, args.repeats), time_ms(row["reference"], args.repeats)
        floor = floor_ms(row["moved"], tbps) if tbps else None
        print(f"| {row['name']} | {theirs:.3f} | {ours:.3f} | {ours / theirs:.2f} | "
              + (f"{floor:.3f} | {floor / ours:.0%} |" if floor else "- | - |")
              + f" {largest_difference(row):.2g} |", flush=True)
    if args.tune:
        print(f"\nEvery setting tried, on {name}, median of {args.repeats} runs:\n")
        print_tuning(tuning(args.batch, "cuda", args.repeats))


if __name__ == "__main__":
    main()
