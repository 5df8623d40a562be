"""Triton kernels for the stride-1 convolutions whose input or output is an image's 3 channels (vae.imageconv),
each pass in one kernel that reads and writes every map once.

cuDNN runs these passes at a fifth of the memory bandwidth on an H100 (benchmarks/RESULTS.md, "the memory
floor"); they are bound by memory, not arithmetic, so what matters is reading the 64-channel map once and
writing it once, in wide coalesced rows. The kernels index channels_last maps (the trainer's layout; other
inputs are copied into it, and outputs are channels_last): a pixel's channels are one contiguous row, which
Triton moves in 16-byte accesses, and 32-bit indices suffice below 2^31 elements. Three kernels serve every
pass:

* `_few_in_kernel`: few input channels, many outputs (conv1_1's and the encoder's forward, the output layer's
  input gradient). Each program gathers its pixels' whole patches (C_in * K * K values, 27 or 48) and makes
  all output channels with one matrix product.
* `_few_out_kernel`: many input channels, few outputs (the output layer's forward, conv1_1's input gradient).
  Each program sums, over the K * K taps, the product of the shifted input rows and that tap's weights.
* `_weight_grad_kernel`: the weight gradient, a sum over every pixel, split over programs (one tap each) whose
  partial sums torch then adds in a fixed order: deterministic, unlike atomic additions.

The input gradient of a stride-1 convolution is the convolution of the output gradient with the weights flipped
and transposed, padded K - 1 - P, so the forward kernels serve it too. Matrix products multiply in the maps'
precision (bf16 under autocast) and accumulate in fp32, as cuDNN does. Triton's interpreter (TRITON_INTERPRET=1)
runs these kernels on the CPU, which is how the tests check them; it gets bf16 matrix products wrong, so they
are computed in fp32 there, which is exact for bf16 values.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch.library import custom_op

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
# Output pixels per program. The interpreter runs each program's operations one after another in numpy, so there
# larger blocks (fewer programs) save most of its time; the kernels' code is the same.
BLOCK_PIXELS = 1024 if INTERPRETED else 128
MIN_DOT = 16  # the smallest side of a Triton matrix product
MAX_PATCH = 128  # input values per output pixel that _few_in_kernel gathers (C_in * K^2)
MAX_FEW = 16  # output channels of _few_out_kernel
MAX_CHANNELS = 128  # the other side
WEIGHT_GRAD_CHUNKS = 132 * 4  # programs per tap: four waves of an H100's 132 multiprocessors
# Compiled for an H100 (sm_90) with 4 warps a program, the forward kernels take up to 146 registers a thread, so an
# SM holds 3 programs, 12 warps; with 8, 55-98 registers, 2-4 programs and 16-32 warps, more to hide the latency of
# memory-bound work (benchmarks/bench_imageconv.py reads these figures from the compiled kernels, without a GPU).
NUM_WARPS = 8


def _dot_settings(dtype: torch.dtype) -> dict:
    """How the kernels multiply maps of `dtype`: in fp32 (the interpreter, and fp32 maps: as TF32 where torch lets
    cuDNN use it, else exactly), or in the maps' own bf16 or fp16."""
    fp32 = INTERPRETED or dtype in (torch.float32, torch.float64)
    tf32 = dtype == torch.float32 and torch.backends.cudnn.allow_tf32 and not INTERPRETED
    return {"FP32_DOT": fp32, "PRECISION": "tf32" if tf32 else "ieee"}


@triton.jit
def _matmul(a, b, FP32_DOT: tl.constexpr, PRECISION: tl.constexpr):
    """a @ b with fp32 sums, multiplied in fp32 (at PRECISION) under FP32_DOT, else in the operands' precision."""
    if FP32_DOT:
        product = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision=PRECISION)
    else:
        product = tl.dot(a, b)
    return product


@triton.jit
def _pixels(start, count, out_h, out_w, BLOCK: tl.constexpr, WIDE: tl.constexpr):
    """BLOCK consecutive output pixels from `start`: their index, batch index, row and column, and which exist.
    In int64 under WIDE (maps of 2^31 elements or more), else in int32, which takes half the registers."""
    p = start + tl.arange(0, BLOCK)
    if WIDE:
        p = p.to(tl.int64)
    n = p // (out_h * out_w)
    rest = p % (out_h * out_w)
    return p, n, rest // out_w, rest % out_w, p < count


@triton.jit
def _store_output(acc, b, y, p, valid, co, out_c, HAS_BIAS: tl.constexpr, RELU: tl.constexpr):
    """Writes the fp32 sums `acc` (pixels p, output channels co), plus the bias, through a ReLU under RELU, into the
    channels_last y in its dtype."""
    if HAS_BIAS:
        acc += tl.load(b + co, mask=co < out_c, other=0.0).to(tl.float32)[None, :]
    if RELU:
        acc = tl.maximum(acc, 0.0)
    tl.store(y + p[:, None] * out_c + co[None, :], acc.to(y.dtype.element_ty),
             mask=valid[:, None] & (co[None, :] < out_c))


@triton.jit
def _few_in_kernel(x, w, b, y, count, in_c, in_h, in_w, out_c, out_h, out_w, pad,
                   K: tl.constexpr, HAS_BIAS: tl.constexpr, RELU: tl.constexpr, BLOCK_P: tl.constexpr,
                   BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, FP32_DOT: tl.constexpr, PRECISION: tl.constexpr,
                   WIDE: tl.constexpr):
    p, n, oy, ox, valid = _pixels(tl.program_id(0) * BLOCK_P, count, out_h, out_w, BLOCK_P, WIDE)
    r = tl.arange(0, BLOCK_R)  # (input channel, ky, kx), in the order of the weights' last three axes
    ci = r // (K * K)
    ky = (r % (K * K)) // K
    kx = r % K
    iy = oy[:, None] + ky[None, :] - pad
    ix = ox[:, None] + kx[None, :] - pad
    inside = valid[:, None] & (r[None, :] < in_c * K * K) & (iy >= 0) & (iy < in_h) & (ix >= 0) & (ix < in_w)
    patches = tl.load(x + ((n[:, None] * in_h + iy) * in_w + ix) * in_c + ci[None, :], mask=inside, other=0.0)
    co = tl.arange(0, BLOCK_C)
    weights = tl.load(w + co[None, :] * (in_c * K * K) + r[:, None],
                      mask=(r[:, None] < in_c * K * K) & (co[None, :] < out_c), other=0.0)
    _store_output(_matmul(patches, weights, FP32_DOT, PRECISION), b, y, p, valid, co, out_c, HAS_BIAS, RELU)


@triton.jit
def _few_out_kernel(x, w, b, y, count, in_c, in_h, in_w, out_c, out_h, out_w, pad,
                    K: tl.constexpr, HAS_BIAS: tl.constexpr, RELU: tl.constexpr, BLOCK_P: tl.constexpr,
                    BLOCK_CI: tl.constexpr, BLOCK_C: tl.constexpr, FP32_DOT: tl.constexpr, PRECISION: tl.constexpr,
                    WIDE: tl.constexpr):
    p, n, oy, ox, valid = _pixels(tl.program_id(0) * BLOCK_P, count, out_h, out_w, BLOCK_P, WIDE)
    co = tl.arange(0, BLOCK_C)
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for tap in range(K * K):
        iy = oy + tap // K - pad
        ix = ox + tap % K - pad
        inside = valid & (iy >= 0) & (iy < in_h) & (ix >= 0) & (ix < in_w)
        row = ((n * in_h + iy) * in_w + ix) * in_c
        for c0 in range(0, in_c, BLOCK_CI):
            ci = c0 + tl.arange(0, BLOCK_CI)
            rows = tl.load(x + row[:, None] + ci[None, :], mask=inside[:, None] & (ci[None, :] < in_c), other=0.0)
            weights = tl.load(w + co[None, :] * (in_c * K * K) + ci[:, None] * (K * K) + tap,
                              mask=(ci[:, None] < in_c) & (co[None, :] < out_c), other=0.0)
            acc += _matmul(rows, weights, FP32_DOT, PRECISION)
    _store_output(acc, b, y, p, valid, co, out_c, HAS_BIAS, RELU)


@triton.jit
def _weight_grad_kernel(g, x, partial_w, partial_b, count, in_c, in_h, in_w, out_c, out_h, out_w, pad, per_chunk,
                        K: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_CO: tl.constexpr, BLOCK_CI: tl.constexpr,
                        FP32_DOT: tl.constexpr, PRECISION: tl.constexpr, WIDE: tl.constexpr):
    tap = tl.program_id(0)  # the fastest-varying axis: the K * K programs of a chunk read the same rows together
    chunk = tl.program_id(1)
    co = tl.arange(0, BLOCK_CO)
    ci = tl.arange(0, BLOCK_CI)
    acc = tl.zeros((BLOCK_CO, BLOCK_CI), dtype=tl.float32)
    bias = tl.zeros((BLOCK_CO,), dtype=tl.float32)
    for start in range(chunk * per_chunk, (chunk + 1) * per_chunk, BLOCK_P):
        p, n, oy, ox, valid = _pixels(start, count, out_h, out_w, BLOCK_P, WIDE)
        grads = tl.load(g + p[:, None] * out_c + co[None, :], mask=valid[:, None] & (co[None, :] < out_c), other=0.0)
        iy = oy + tap // K - pad
        ix = ox + tap % K - pad
        inside = valid & (iy >= 0) & (iy < in_h) & (ix >= 0) & (ix < in_w)
        rows = tl.load(x + (((n * in_h + iy) * in_w + ix) * in_c)[:, None] + ci[None, :],
                       mask=inside[:, None] & (ci[None, :] < in_c), other=0.0)
        acc += _matmul(tl.trans(grads), rows, FP32_DOT, PRECISION)
        bias += tl.sum(grads.to(tl.float32), axis=0)
    at = partial_w + ((chunk * K * K + tap) * BLOCK_CO + co[:, None]) * BLOCK_CI + ci[None, :]
    tl.store(at, acc)
    tl.store(partial_b + chunk * BLOCK_CO + co, bias, mask=tap == 0)


def _block(channels: int) -> int:
    return max(MIN_DOT, triton.next_power_of_2(channels))


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    """x in channels_last memory, the layout the kernels index (the trainer's own: no copy there)."""
    return x.contiguous(memory_format=torch.channels_last)


def _wide(*maps: torch.Tensor) -> bool:
    """Whether the maps need 64-bit indices."""
    return max(m.numel() for m in maps) >= 2**31


def _output_like(x: torch.Tensor, weight: torch.Tensor, padding: int) -> torch.Tensor:
    """An empty channels_last output of the convolution of x with weight, in x's dtype."""
    batch, _, in_h, in_w = x.shape
    out_c, _, k, _ = weight.shape
    return torch.empty((batch, out_c, in_h + 2 * padding - k + 1, in_w + 2 * padding - k + 1), dtype=x.dtype,
                       device=x.device, memory_format=torch.channels_last)


@dataclass
class Launch:
    """One launch of a kernel: what image_conv and image_conv_weight_grad run, and what
    benchmarks/bench_imageconv.py compiles for a GPU to read its registers, with the settings in force when it was
    made (BLOCK_PIXELS, NUM_WARPS, WEIGHT_GRAD_CHUNKS), which the benchmark varies to tune them."""
    kernel: object
    grid: tuple[int, ...]
    args: tuple
    constants: dict  # the kernel's constexpr parameters
    num_warps: int

    def run(self) -> None:
        self.kernel[self.grid](*self.args, **self.constants, num_warps=self.num_warps)


def conv_launch(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, y: torch.Tensor,
                padding: int, relu: bool = False) -> Launch:
    """The launch that writes conv2d(x, weight, bias, padding), through a ReLU under `relu`, into y (all
    channels_last but the weights)."""
    _, in_c, in_h, in_w = x.shape
    _, out_c, out_h, out_w = y.shape
    k = weight.shape[-1]
    count = y.numel() // out_c
    args = (x, weight, bias, y, count, in_c, in_h, in_w, out_c, out_h, out_w, padding)
    constants = dict(K=k, HAS_BIAS=bias is not None, RELU=relu, BLOCK_P=BLOCK_PIXELS, BLOCK_C=_block(out_c),
                     WIDE=_wide(x, y), **_dot_settings(x.dtype))
    grid = (triton.cdiv(count, BLOCK_PIXELS),)
    if in_c * k * k <= MAX_PATCH and out_c <= MAX_CHANNELS:
        return Launch(_few_in_kernel, grid, args, dict(constants, BLOCK_R=_block(in_c * k * k)), NUM_WARPS)
    return Launch(_few_out_kernel, grid, args, dict(constants, BLOCK_CI=min(64, _block(in_c))), NUM_WARPS)


def weight_grad_launch(grad: torch.Tensor, x: torch.Tensor, k: int, padding: int
                       ) -> tuple[Launch, torch.Tensor, torch.Tensor]:
    """The launch that sums the weight and bias gradients for output gradient `grad` (channels_last, as x), and
    the partial sums it writes: (chunks, k * k, out, in) and (chunks, out), in fp32."""
    _, in_c, in_h, in_w = x.shape
    _, out_c, out_h, out_w = grad.shape
    count = grad.numel() // out_c
    chunks = min(WEIGHT_GRAD_CHUNKS, triton.cdiv(count, BLOCK_PIXELS))
    per_chunk = triton.cdiv(triton.cdiv(count, chunks), BLOCK_PIXELS) * BLOCK_PIXELS
    chunks = triton.cdiv(count, per_chunk)
    block_co, block_ci = _block(out_c), _block(in_c)
    partial_w = torch.empty((chunks, k * k, block_co, block_ci), dtype=torch.float32, device=x.device)
    partial_b = torch.empty((chunks, block_co), dtype=torch.float32, device=x.device)
    args = (grad, x, partial_w, partial_b, count, in_c, in_h, in_w, out_c, out_h, out_w, padding, per_chunk)
    constants = dict(K=k, BLOCK_P=BLOCK_PIXELS, BLOCK_CO=block_co, BLOCK_CI=block_ci, WIDE=_wide(grad, x),
                     **_dot_settings(x.dtype))
    return Launch(_weight_grad_kernel, (k * k, chunks), args, constants, NUM_WARPS), partial_w, partial_b


@custom_op("subitizing_vae::image_conv", mutates_args=())
def image_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int,
               relu: bool = False) -> torch.Tensor:
    """F.conv2d(x, weight, bias, stride=1, padding=padding), then F.relu under `relu`, for a square kernel, with
    few inputs (C_in * K^2 at most MAX_PATCH) or few outputs (at most MAX_FEW); see supports.

    The ReLU is applied to the fp32 sums before they are rounded and written: VGG's conv1_1 feeds both cuDNN's
    conv1_2 and the loss's relu1_1 term, so its activated map must be written out, and done apart it costs a
    read and a write of the 64-channel map more in each of the step's two VGG forward passes."""
    x, y = _channels_last(x), _output_like(x, weight, padding)
    conv_launch(x, weight.contiguous(), bias, y, padding, relu).run()
    return y


@image_conv.register_fake
def _image_conv_shape(x, weight, bias, padding, relu=False):
    return _output_like(x, weight, padding)


@custom_op("subitizing_vae::image_conv_weight_grad", mutates_args=())
def image_conv_weight_grad(grad: torch.Tensor, x: torch.Tensor, k: int, padding: int
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """The gradients of image_conv's weight (out, in, k, k) and bias (out,), in fp32, for output gradient `grad`."""
    launch, partial_w, partial_b = weight_grad_launch(_channels_last(grad), _channels_last(x), k, padding)
    launch.run()
    return summed_weight_grad(partial_w, partial_b, grad.shape[1], x.shape[1], k)


def summed_weight_grad(partial_w: torch.Tensor, partial_b: torch.Tensor, out_c: int, in_c: int, k: int
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight (out_c, in_c, k, k) and bias gradients from _weight_grad_kernel's partial sums, added by torch in
    a fixed order: the same gradient in every run."""
    weight = partial_w.sum(0)[:, :out_c, :in_c].permute(1, 2, 0).reshape(out_c, in_c, k, k).contiguous()
    return weight, partial_b.sum(0)[:out_c].contiguous()


@image_conv_weight_grad.register_fake
def _weight_grad_shapes(grad, x, k, padding):
    return (x.new_empty((grad.shape[1], x.shape[1], k, k), dtype=torch.float32),
            x.new_empty((grad.shape[1],), dtype=torch.float32))


def _setup_context(ctx, inputs, output) -> None:
    x, weight, bias, padding, relu = inputs
    ctx.save_for_backward(x, weight, output if relu else None)
    ctx.padding = padding
    ctx.has_bias = bias is not None


def _backward(ctx, grad: torch.Tensor):
    x, weight, activated = ctx.saved_tensors
    k = weight.shape[-1]
    grad_x = grad_w = grad_b = None
    if activated is not None:
        # torch's ReLU backward (threshold_backward), on the saved output as torch saves it. Compiled, Inductor
        # fuses it into the kernel that makes `grad`, so it costs no pass of its own.
        grad = torch.where(activated > 0, grad, 0)
    if ctx.needs_input_grad[0]:
        flipped = weight.flip(2, 3).transpose(0, 1).to(grad.dtype)
        grad_x = image_conv(grad, flipped, None, k - 1 - ctx.padding)
    if ctx.needs_input_grad[1] or (ctx.has_bias and ctx.needs_input_grad[2]):
        grad_w, grad_b = image_conv_weight_grad(grad, x, k, ctx.padding)
        grad_w = grad_w.to(weight.dtype)
        grad_b = grad_b.to(weight.dtype) if ctx.has_bias else None
    return grad_x, grad_w, grad_b, None, None


image_conv.register_autograd(_backward, setup_context=_setup_context)


def _one_pass_fits(in_c: int, out_c: int, k: int) -> bool:
    return (in_c * k * k <= MAX_PATCH and out_c <= MAX_CHANNELS) or (out_c <= MAX_FEW and in_c <= MAX_CHANNELS)


def supports(conv: torch.nn.Conv2d) -> bool:
    """Whether image_conv computes `conv` and its gradients: stride 1, no dilation or groups, a square kernel and
    padding, and in both directions either few inputs (C_in * K^2 <= 128) or few outputs (at most 16)."""
    (k, k_w), padding = conv.kernel_size, conv.padding
    return (k == k_w and isinstance(padding, tuple) and padding[0] == padding[1] and padding[0] < k
            and conv.stride == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1
            and conv.padding_mode == "zeros" and _one_pass_fits(conv.in_channels, conv.out_channels, k)
            and _one_pass_fits(conv.out_channels, conv.in_channels, k))
