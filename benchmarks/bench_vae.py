"""Benchmark `vae-train`: what a user gets, and where the time goes, for the paper configuration (161x161,
latent 180, VGG-19 perceptual loss).

    python benchmarks/bench_vae.py                                  # CPU here: small batch, few steps
    python benchmarks/bench_vae.py --device cuda --batch 128 --steps 50 --compile --profile
    python benchmarks/bench_vae.py --device cuda --batch 128 --compile --recon pixel   # what the VGG costs
    python benchmarks/bench_vae.py --device cuda --batch 128 --compile --image-conv cudnn,triton --profile

It reports, in one run on one machine:
* the step, as the trainer takes it (`vae.train.Run.step`: the objective of vae.losses under the
  trainer's autocast, backward, the trainer's fused Adam) on uint8 images already in device memory,
  augmented there: plain fp32 eager NCHW with torch's default multi-tensor Adam; the trainer's default
  path (channels_last, fused Adam, and on CUDA bf16 autocast and cudnn autotuning); and with --compile,
  the whole step compiled as the trainer compiles it (the objective: model, perceptual loss, loss
  arithmetic; and the augmentation) in each of the --compile-mode modes given (one row each:
  `default,reduce-overhead` compares plain Inductor with CUDA graphs) and with each --image-conv choice of
  kernels for the convolutions of the image's 3 channels (vae.imageconv), checked against eager as the
  trainer does;
* the trainer's real epoch throughput: `vae.train.Run.train_epoch` on a synthgen set built for the
  purpose (data feeding, augmentation, per-step bookkeeping included), the second epoch timed, compiled
  in the fastest mode of the rows above;
* FLOPs per image of a step (torch.utils.flop_counter) and the achieved TFLOP/s against the card's peak
  (bf16 dense; --peak-tflops for a card not in the table);
* with --profile, a kernel-time breakdown of a few steps of the fastest path (torch.profiler), by class of
  kernel and by operator; for the classes that only move data (batch norm, Adam, the fp32 linear layers),
  their time against the least traffic their maths needs at the card's memory bandwidth (--memory-tbps for
  a card not in the table); and the convolutions layer by layer: each layer's forward and backward, its time
  and the TFLOP/s it achieves, to tell a convolution that runs far below the card's peak from one that
  cannot go faster.
"""
from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import torch
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

from common.machine import GPU_BF16_TFLOPS, GPU_MEMORY_TBPS, datasheet, describe
from vae import imageconv
from vae.augment import apply, draw
from vae.build import build_optimizer
from vae.config import (COMPILE_MODES, IMAGE_CONV_CHOICES, AugmentConfig, DataSettings, LossSettings,
                        RuntimeSettings, TrainConfig, TrainingSettings)
from vae.losses import Objective, PerceptualLoss, PixelLoss
from vae.model import VAE, ModelConfig, parameter_counts
from vae.runtime import Runtime, compile_augmentation_checked, compile_checked, use_cuda_settings
from vae.vgg import RANDOM, load_vgg

SHARED_WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "weights" / "vgg19-features-relu3_1.pth"
RECIPE_IMAGES = 140 * (80_000 + 10_000)  # 140 epochs over ~80K synthetic plus ~10K natural images
TOP_KERNELS = 25
BATCH_NORM = "batch norm, with what Inductor fused into it"
ADAM = "optimiser (fused Adam)"
TRITONCONV_KERNELS = ("_few_in_kernel", "_few_out_kernel", "_weight_grad_kernel")  # --image-conv triton
MATMUL = "matrix products (cuBLAS)"


def weights() -> str:
    return str(SHARED_WEIGHTS) if SHARED_WEIGHTS.exists() else RANDOM


class Stepper:
    """The trainer's step (vae.train.Run.step) on a fixed batch of uint8 images, for one path."""

    def __init__(self, device: torch.device, batch: int, optimised: bool, compile_mode: str | None,
                 recon: str = "perceptual", image_conv: str = "cudnn"):
        torch.manual_seed(0)
        if optimised and device.type == "cuda":
            use_cuda_settings()  # as the trainer's runtime does
        else:  # torch's defaults
            torch.backends.cudnn.benchmark = False
            torch.backends.cuda.matmul.allow_tf32 = False
        self.device, self.batch = device, batch
        self.model = VAE(ModelConfig()).to(device)
        loss = PerceptualLoss(load_vgg(weights())[0]).to(device) if recon == "perceptual" else PixelLoss()
        if optimised:
            self.model = self.model.to(memory_format=torch.channels_last)
            loss = loss.to(memory_format=torch.channels_last)
        self.runtime = Runtime(device, 0, 1, optimised and device.type == "cuda")
        self.objective = self.eager = Objective(self.model, loss, 1.0, 0.03)
        # the plain loop keeps torch's default (multi-tensor) Adam; the trainer's paths use the trainer's own
        self.optimizer = (build_optimizer(self.model, 0.0015) if optimised
                          else torch.optim.Adam(self.model.parameters(), lr=0.0015))
        self.images = torch.randint(0, 256, (batch, 161, 161, 3), dtype=torch.uint8, device=device)
        self.boxes = torch.tensor([[40.0, 40.0, 120.0, 120.0]], device=device).repeat(batch, 1)
        self.optimised, self.note, self.augmentation = optimised, "", None
        if compile_mode:
            x, noise = self.inputs(0)
            start = time.perf_counter()
            # the kernels of the image convolutions, set (and the Triton ones checked) as the trainer sets them
            kernels = imageconv.set_image_conv(image_conv, [self.model, loss], self.eager, x, noise,
                                               self.runtime.autocast)
            compiled, check = compile_checked(self.objective, self.model, x, noise, self.runtime, compile_mode)
            self.note = (f" (compiling failed: {check['error']}; eager used)" if check["error"] else
                         f" (compiled vs eager: reconstructions {check['mean_difference']:.2g}, loss "
                         f"{check['loss_difference']:.2g}, gradients {check['gradient_difference']:.2g}, "
                         f"{'ok' if check['used'] else 'WRONG: eager used'}; first compiled call and check "
                         f"{time.perf_counter() - start:.0f} s)")
            self.objective = self.objective if compiled is None else compiled
            line = imageconv.image_conv_line(image_conv, kernels["triton_layers"], device.type, kernels.get("check"))
            self.note += f"; {line}" if line else ""
            if compiled is not None:  # and the augmentation, as the trainer does (vae.train.Run.compile)
                params = draw(self.images, self.boxes, AugmentConfig(), torch.Generator(device=device).manual_seed(0))
                self.augmentation, record = compile_augmentation_checked(self.images, params, None)
                self.note += (f"; augmentation compiled (largest difference {record['max_difference']:.2g})"
                              if record["used"] else f"; augmentation eager ({record['error'] or 'differs'})")

    def inputs(self, i: int):
        generator = torch.Generator(device=self.device).manual_seed(i)
        x = (self.augmentation or apply)(self.images, draw(self.images, self.boxes, AugmentConfig(), generator))
        if not self.optimised:
            x = x.contiguous()  # NCHW
        return x, torch.randn(self.batch, 180, generator=generator, device=self.device)

    def step(self, i: int) -> None:
        x, noise = self.inputs(i)
        with self.runtime.autocast():
            terms = self.objective(x, noise)
        self.optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        self.optimizer.step()

    def rate(self, steps: int, warmup: int) -> float:
        for i in range(warmup):
            self.step(i)
        synchronize(self.device)
        start = time.perf_counter()
        for i in range(steps):
            self.step(warmup + i)
        synchronize(self.device)
        return self.batch * steps / (time.perf_counter() - start)

    def flops_per_image(self) -> float:
        with FlopCounterMode(display=False) as counter:
            self.step(0)
        return counter.get_total_flops() / self.batch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def epoch_rate(device: torch.device, batch: int, images: int, compile_model: bool, compile_mode: str,
               recon: str = "perceptual", image_conv: str = "cudnn") -> float:
    """images/s of the trainer's own epoch (the second one: the first pays for compiling and autotuning)."""
    from synthgen.build import build
    from synthgen.config import BuildConfig, RunOptions
    from vae.train import Run

    with tempfile.TemporaryDirectory() as tmp:
        build(BuildConfig(n=images, size=161), RunOptions(progress=False), Path(tmp) / "set", log=lambda *a: None)
        config = TrainConfig(out=str(Path(tmp) / "run"), data=DataSettings(data=[str(Path(tmp) / "set")]),
                             loss=LossSettings(recon=recon, vgg_weights=weights()),
                             training=TrainingSettings(epochs=2, batch_size=batch),
                             runtime=RuntimeSettings(device=str(device), compile="yes" if compile_model else "no",
                                                     compile_mode=compile_mode, image_conv=image_conv,
                                                     progress=False))
        runtime = Runtime(device, 0, 1, device.type == "cuda")
        run = Run(config, runtime, None, log=lambda *a: None)
        for epoch in (1, 2):
            run.epoch = epoch
            result = run.train_epoch()
        return result["images_per_second"]


def kernel_class(name: str) -> str:
    """The class of a CUDA kernel, by its name: what a step's GPU time is spent on."""
    name = name.lower()
    if "batch_norm" in name or "cudnn::bn_" in name:  # Inductor's, ATen's or cuDNN's (not a convolution's)
        return BATCH_NORM
    if name in TRITONCONV_KERNELS:
        return "image convolutions (vae.tritonconv's Triton kernels)"
    if name.startswith("triton"):  # Inductor's own kernels; their names list the operations fused
        return "other Inductor kernels: elementwise, reductions, pooling (Triton)"
    if any(word in name for word in ("implicit_gemm", "cudnn", "conv", "fprop", "dgrad", "wgrad")):
        return "convolutions (cuDNN)"
    if "adam" in name or "multi_tensor" in name:
        return ADAM
    if "gemm" in name:
        return MATMUL
    return "other"


def batch_norm_maps(model: VAE) -> list[int]:
    """Elements per image of every map the model's blocks batch-normalise: each convolution's output."""
    maps = []
    for blocks, side in ((model.encoder, model.config.image_size), (model.decoder, model.start_shape[1])):
        for layer in blocks:
            if isinstance(layer, torch.nn.modules.conv._ConvNd):
                side = conv_output_side(side, layer.kernel_size[0], layer.stride[0], layer.padding[0],
                                        layer.dilation[0], layer.transposed, layer.output_padding[0])
                channels = layer.out_channels
            elif isinstance(layer, torch.nn.BatchNorm2d):
                maps.append(channels * side * side)
    return maps


def memory_floor(model: VAE, batch: int, activation_bytes: int = 2) -> dict[str, float]:
    """The least memory traffic, in bytes per step, of the three kernel classes that only move data, by the
    class their kernels are counted in; a kernel can go no faster than its bytes over the card's bandwidth.

    * Batch norm after LeakyReLU, in training: 8 passes over each map (bf16 under autocast). Forward, one read
      of the convolution's output for the statistics, one read and one write to normalise; backward, two
      reads (the output's gradient and the convolution's output) for the two per-channel sums, then two
      reads and a write for the input's gradient. No fusion does with less while a map outgrows the cache.
    * Fused Adam: 28 bytes per parameter (fp32 parameter, gradient and two moments read; parameter and
      moments written).
    * The fp32 linear layers (the mu and sigma heads, the decoder's input layer): each weight read forward
      and for the input's gradient, and its gradient written; each input read forward and for the weight's
      gradient, and its gradient written; each output written, and its gradient read twice.
    The convolutions and the other elementwise kernels are left out: their least traffic depends on what is
    fused, and the convolutions are bound by arithmetic."""
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    return {
        BATCH_NORM: 8.0 * sum(batch_norm_maps(model)) * batch * activation_bytes,
        ADAM: 28.0 * sum(p.numel() for p in model.parameters()),
        MATMUL: 4.0 * 3 * sum(m.in_features * m.out_features + batch * (m.in_features + m.out_features)
                              for m in linears),
    }


def floor_lines(measured_ms: dict[str, float], floor: dict[str, float], tbps: float | None) -> list[str]:
    """The memory-bound classes' time per step against the time their least traffic takes at the card's
    bandwidth (`tbps`, TB/s)."""
    if not tbps:
        return ["The memory floor needs the card's bandwidth (--memory-tbps).\n"]
    # A class holds the kernels whose names say so: a pass of batch norm that Inductor fused under another name
    # is counted under "other Inductor kernels", and then "least / measured" overstates that class's efficiency.
    lines = [f"Memory-bound kernels against the least traffic their maths needs, at {tbps:g} TB/s (an upper bound "
             "where a class's kernels also run under other names):\n",
             "| kernels | ms per step | least GB per step | least ms | least / measured |", "|---|---|---|---|---|"]
    for label, nbytes in floor.items():
        ms, least = measured_ms.get(label, 0.0), nbytes / (tbps * 1e12) * 1e3
        lines.append(f"| {label} | {ms:.2f} | {nbytes / 1e9:.2f} | {least:.2f} | "
                     + (f"{least / ms:.0%} |" if ms else "- |"))
    return lines + [""]


CONVOLUTIONS = ("aten::convolution", "aten::convolution_backward")  # the operators every convolution runs as


def conv_output_side(side: int, kernel: int, stride: int, padding: int, dilation: int, transposed: bool,
                     output_padding: int) -> int:
    if transposed:
        return (side - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1
    return (side + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def conv_call(event) -> dict | None:
    """What one profiled convolution operator did: its layer's key, its shapes and its FLOPs (counted as
    torch.utils.flop_counter counts them, so that the rows add up to FlopCounterMode's convolutions)."""
    shapes, values = event.input_shapes, list(getattr(event, "concrete_inputs", None) or [])
    if event.name == "aten::convolution" and len(shapes) >= 2 and len(values) >= 9:
        x, w = shapes[0], shapes[1]
        stride, padding, dilation, transposed, output_padding, groups = values[3:9]
        out_side = [conv_output_side(x[2 + k], w[2 + k], stride[k], padding[k], dilation[k], transposed,
                                     output_padding[k]) for k in range(len(x) - 2)]
        out = [x[0], w[1] * groups if transposed else w[0], *out_side]
        flops, work, mask = flop_counter.conv_flop_count(x, w, out, transposed), "forward", None
    elif event.name == "aten::convolution_backward" and len(shapes) >= 3 and len(values) >= 11:
        grad_out, x, w = shapes[0], shapes[1], shapes[2]
        stride, padding, dilation, transposed, output_padding, groups, mask = values[4:11]
        out = grad_out
        flops = flop_counter.conv_backward_flop(grad_out, x, w, None, stride, padding, dilation, transposed,
                                                output_padding, groups, mask, out_val=(x, w, None))
        work = "backward: " + " and ".join(what for what, wanted in zip(("input", "weight"), mask) if wanted)
    else:  # shapes not recorded (a profile without record_shapes, or another torch)
        return None
    return {"key": (tuple(w), bool(transposed), tuple(stride)), "work": work, "flops": int(flops),
            "elements": conv_elements(x, w, out, mask),
            "sides": f"{'x'.join(map(str, x[2:]))} -> {'x'.join(map(str, out[2:]))}"}


def conv_elements(x, w, out, mask=None) -> int:
    """The fewest elements one convolution pass must move: each operand read once, each result written once.
    Forward: x and w read, out written; backward (`mask`: input gradient, weight gradient): the output's
    gradient read, then for the input's gradient w read and it written, for the weights' x read and it written."""
    size = math.prod
    if mask is None:
        return size(x) + size(w) + size(out)
    return size(out) + (size(w) + size(x) if mask[0] else 0) + (size(x) + size(w) if mask[1] else 0)


def conv_layers(module: torch.nn.Module) -> dict:
    """The names of `module`'s convolutions by (weight shape, transposed, stride): how a profiled call is
    told apart (two layers with the same key share a row)."""
    names: dict = {}
    for name, layer in module.named_modules():
        if isinstance(layer, torch.nn.modules.conv._ConvNd):
            shapes = [tuple(layer.weight.shape)]
            if isinstance(layer, imageconv.ImageConv2d):  # the shape it runs with, compiled on CUDA
                with torch.no_grad():
                    shapes.append(tuple(imageconv.padded_weight(layer, imageconv.CUDA_CHANNELS).shape))
            for shape in shapes:
                key = (shape, bool(layer.transposed), tuple(layer.stride))
                names[key] = f"{names[key]}, {name}" if key in names else name
    return names


def conv_table(events, names: dict, steps: int, cuda: bool, element_bytes: int = 2) -> list[dict]:
    """Per convolution layer and pass (forward, backward), over `steps` profiled steps: calls, ms, GFLOP and
    least GB moved (`element_bytes` per element: 2 under bf16 autocast) per step and the TFLOP/s achieved, the
    longest first. Time is the kernels' (CUDA) or the operator's (CPU)."""
    rows: dict = {}
    for event in events:
        if event.name not in CONVOLUTIONS:
            continue
        call = conv_call(event)
        if call is None:
            continue
        w, transposed, stride = call["key"]
        layer = names.get(call["key"], "?")
        shape = (f"{w[1] if transposed else w[0]}<-{w[0] if transposed else w[1]} "
                 f"{'x'.join(map(str, w[2:]))}{' transposed' if transposed else ''}, stride {stride[0]}")
        row = rows.setdefault((layer, call["work"], call["sides"]), {
            "layer": layer, "convolution": shape, "sides": call["sides"], "work": call["work"], "calls": 0,
            "ms": 0.0, "flops": 0, "elements": 0})
        row["calls"] += 1
        row["ms"] += (event.device_time_total if cuda else event.cpu_time_total) / 1e3
        row["flops"] += call["flops"]
        row["elements"] += call["elements"]
    table = []
    for row in rows.values():
        seconds = row["ms"] / 1e3
        table.append({**row, "calls": row["calls"] / steps, "ms": row["ms"] / steps,
                      "gflop": row["flops"] / steps / 1e9, "tflops": row["flops"] / seconds / 1e12 if seconds else 0.0,
                      "gb": row["elements"] * element_bytes / steps / 1e9})
    return sorted(table, key=lambda row: -row["ms"])


def conv_floor(row: dict, peak: float | None, tbps: float | None) -> tuple[float, str] | None:
    """The least time of a row's passes: its FLOPs at the peak or its least traffic at the bandwidth, whichever
    is longer, in ms per step, and which it is."""
    if not (peak and tbps):
        return None
    arithmetic, memory = row["gflop"] / peak, row["gb"] / tbps  # GFLOP / (TFLOP/s) and GB / (TB/s) are ms
    return (arithmetic, "arithmetic") if arithmetic >= memory else (memory, "memory")


def conv_lines(table: list[dict], peak: float | None, tbps: float | None = None) -> list[str]:
    if not table:
        return ["No convolution operators were recorded (under CUDA graphs the kernels replay without them).\n"]
    ms, gflop = sum(r["ms"] for r in table), sum(r["gflop"] for r in table)
    floors = [conv_floor(r, peak, tbps) for r in table]
    lines = [f"Convolutions by layer: {ms:.2f} ms and {gflop:,.0f} GFLOP per step, {gflop / ms:.3g} TFLOP/s overall"
             + (f" ({gflop / ms / peak:.0%} of peak)" if peak and ms else "")
             + (f"; at least {sum(f[0] for f in floors):.2f} ms at the card's peak and bandwidth"
                if all(floors) else "")
             + "\n",
             "| layer | convolution (out<-in channels) | in -> out side | pass | calls per step | ms per step "
             "| GFLOP per step | TFLOP/s | least GB moved | least ms (bound by) | least / measured |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r, floor in zip(table, floors):
        least = f"{floor[0]:.3f} ({floor[1]}) | {floor[0] / r['ms']:.0%}" if floor and r["ms"] else "- | -"
        lines.append(f"| {r['layer']} | {r['convolution']} | {r['sides']} | {r['work']} | {r['calls']:g} | "
                     f"{r['ms']:.3f} | {r['gflop']:.1f} | {r['tflops']:.3g} | {r['gb']:.3f} | {least} |")
    return lines + [""]


def profile(stepper: Stepper, steps: int, peak: float | None = None, tbps: float | None = None) -> str:
    """A kernel-time breakdown of `steps` steps: by class of kernel (CUDA), then the top operators."""
    cuda = stepper.device.type == "cuda"
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    with torch.profiler.profile(activities=activities, record_shapes=True) as profiler:
        start = time.perf_counter()
        for i in range(steps):
            stepper.step(i)
        synchronize(stepper.device)
        wall = time.perf_counter() - start
    events = profiler.key_averages()
    lines = []
    if cuda:
        kernels: dict[str, float] = {}  # ms by kernel name
        for event in events:  # kernels only: not the CPU operators that launched them, nor annotated regions
            if event.device_type == torch.autograd.DeviceType.CUDA and not event.is_user_annotation:
                kernels[event.key] = kernels.get(event.key, 0.0) + event.self_device_time_total / 1e3
        classes: dict[str, float] = {}
        for name, ms in kernels.items():
            label = kernel_class(name)
            classes[label] = classes.get(label, 0.0) + ms
        busy = sum(kernels.values())
        lines += [f"GPU kernel time {busy / steps:.1f} ms per step against {wall * 1e3 / steps:.1f} ms of wall time "
                  f"under the profiler (GPU busy {busy / (wall * 1e3):.0%})\n", "| kernels | ms per step | share |",
                  "|---|---|---|"]
        lines += [f"| {label} | {ms / steps:.2f} | {ms / busy:.0%} |"
                  for label, ms in sorted(classes.items(), key=lambda item: -item[1])]
        lines += [""] + floor_lines({label: ms / steps for label, ms in classes.items()},
                                    memory_floor(stepper.model, stepper.batch), tbps)
        lines += ["", f"The {TOP_KERNELS} longest kernels:\n", "| kernel | ms per step | share |", "|---|---|---|"]
        lines += [f"| {name[:100]} | {ms / steps:.3f} | {ms / busy:.1%} |"
                  for name, ms in sorted(kernels.items(), key=lambda item: -item[1])[:TOP_KERNELS]]
        lines.append("")
    lines += conv_lines(conv_table(profiler.events(), conv_layers(stepper.eager), steps, cuda,
                                  2 if stepper.runtime.amp else 4), peak, tbps)
    key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    lines.append(events.table(sort_by=key, row_limit=20, max_name_column_width=60))
    return "\n".join(lines)


def at_least(low: int):
    """An argparse type: an integer >= low."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value}: give {low} or more")
        return value
    return parse


def choices_list(allowed: tuple[str, ...]):
    """A comma-separated list of `allowed` values (--compile-mode, --image-conv)."""
    def parse(text: str) -> list[str]:
        values = [value.strip() for value in text.split(",")]
        if any(value not in allowed for value in values):
            raise argparse.ArgumentTypeError(f"{text!r}: give one or more of {', '.join(allowed)}, comma-separated")
        return values
    return parse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=at_least(1), default=None, help="default: 128 on CUDA, 4 on CPU")
    parser.add_argument("--steps", type=at_least(1), default=None, help="timed steps (default: 50 on CUDA, 3 on CPU)")
    parser.add_argument("--warmup", type=at_least(0), default=None,
                        help="untimed steps first (default: 10 on CUDA, 1 on CPU)")
    parser.add_argument("--compile", action="store_true",
                        help="also time the whole step compiled (objective and augmentation)")
    parser.add_argument("--compile-mode", type=choices_list(COMPILE_MODES), default=["default"],
                        help="torch.compile mode(s) for --compile, comma-separated: a row each "
                             f"({', '.join(COMPILE_MODES)}; default: default)")
    parser.add_argument("--image-conv", type=choices_list(IMAGE_CONV_CHOICES), default=["cudnn"],
                        help="kernels for the image convolutions in the compiled rows, comma-separated: a row each "
                             f"({', '.join(IMAGE_CONV_CHOICES)}; vae-train's --image-conv)")
    parser.add_argument("--epoch-images", type=at_least(11), default=None,
                        help="images of the set the trainer's epoch runs on, 11 or more (the trainer holds 5%% "
                             "out for validation) (default: 16384 on CUDA, 48 on CPU; a short epoch weighs its fixed "
                             "costs more)")
    parser.add_argument("--recon", choices=("perceptual", "pixel"), default="perceptual",
                        help="the reconstruction loss: the paper's VGG-19 perceptual loss, or the pixel loss, "
                             "whose step shows what the VGG costs (default: perceptual)")
    parser.add_argument("--profile", action="store_true", help="print a kernel-time breakdown of the fastest step")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the card's bf16 dense peak (default: table)")
    parser.add_argument("--memory-tbps", type=float, default=None,
                        help="the card's memory bandwidth in TB/s, for --profile's memory floor (default: table)")
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    batch = args.batch or (128 if cuda else 4)
    steps = args.steps or (50 if cuda else 3)
    warmup = args.warmup if args.warmup is not None else (10 if cuda else 1)
    name = torch.cuda.get_device_name(device) if cuda else ""  # for the peak: the table lists GPUs
    print(f"machine: {describe('torch', *(['triton'] if 'triton' in args.image_conv else []), gpu=cuda)}")
    print(f"device: {device}; {torch.get_num_threads()} CPU threads")
    print(f"model: paper configuration, {parameter_counts(VAE())['total']:,} parameters; batch {batch}, "
          f"{warmup} warm-up + {steps} timed steps; " + (
              f"perceptual loss, VGG weights: {'../shared' if SHARED_WEIGHTS.exists() else 'random (same speed)'}\n"
              if args.recon == "perceptual" else "pixel loss (no VGG-19)\n"))
    plain = Stepper(device, batch, False, None, args.recon).rate(steps, warmup)  # first: the next Stepper sets
    default = Stepper(device, batch, True, None, args.recon)  # the trainer's CUDA settings, which this one clears
    flops = default.flops_per_image()
    peak = args.peak_tflops or datasheet(GPU_BF16_TFLOPS, name)
    tbps = args.memory_tbps or datasheet(GPU_MEMORY_TBPS, name)
    for flag, value in (("--peak-tflops", args.peak_tflops), ("--memory-tbps", args.memory_tbps)):
        if value is not None and value <= 0:
            parser.error(f"{flag} {value:g}: give the card's figure, above 0")
    print(f"A step costs {flops / 1e9:.1f} GFLOP per image (forward and backward, torch.utils.flop_counter); "
          f"peak used: {f'{peak:g} TFLOP/s bf16 dense' if peak else 'unknown (--peak-tflops)'}.\n")
    print("| path | images/s | x plain | TFLOP/s | of peak | full recipe (140 epochs x 90K images) |")
    print("|---|---|---|---|---|---|", flush=True)

    def row(title: str, rate: float) -> None:  # printed as measured: a long run shows what it has
        tflops = flops * rate / 1e12
        share = f"{tflops / peak:.0%}" if peak else "-"
        print(f"| {title} | {rate:.2f} | {rate / plain:.2f} | {tflops:.2f} | {share} | "
              f"{RECIPE_IMAGES / rate / 3600:.1f} h |", flush=True)

    row("plain fp32 eager (NCHW)", plain)
    fastest, fastest_rate, fastest_mode, fastest_kernels = default, default.rate(steps, warmup), "default", "cudnn"
    row("trainer's default path (channels_last, fused Adam" + (", bf16, cudnn autotuning" if cuda else "") + ")",
        fastest_rate)
    for mode, kernels in [(m, k) for m in args.compile_mode for k in args.image_conv] if args.compile else []:
        compiled = Stepper(device, batch, True, mode, args.recon, kernels)
        rate = compiled.rate(steps, warmup)
        row(f"the same, whole step compiled: objective and augmentation (mode {mode}, image convolutions "
            f"{kernels}){compiled.note}", rate)
        if rate > fastest_rate:
            fastest, fastest_rate, fastest_mode, fastest_kernels = compiled, rate, mode, kernels
        else:
            del compiled  # its model, optimiser state and graphs
    epoch = epoch_rate(device, batch, args.epoch_images or (16384 if cuda else 48), args.compile, fastest_mode,
                       args.recon, fastest_kernels)
    row("the trainer's epoch (vae.train.Run.train_epoch), second epoch"
        + (f", compiled (mode {fastest_mode}, image convolutions {fastest_kernels})" if args.compile else ""), epoch)
    if args.profile:
        which = (f"compiled, mode {fastest_mode}, image convolutions {fastest_kernels}" if fastest is not default
                 else "the default path")
        print(f"\nKernel time of the fastest step ({which}), by operator:\n")
        print(profile(fastest, min(steps, 5), peak, tbps))


if __name__ == "__main__":
    main()
