"""Convolutions whose input or output is an image's 3 channels (the encoder's first layer, the decoder's
output layer, VGG-19's conv1_1), padded with zero channels to CUDA_CHANNELS when compiled for CUDA.

cuDNN 9 runs these three far below both the card's arithmetic and its memory bandwidth (18-61 TFLOP/s on
an H100, bf16, channels_last, batch 128) and pads a 3-channel input with a kernel of its own. Padded to 8
channels, cuDNN picks other kernels and Inductor fuses the padding into the kernel that makes the input:
the compiled step runs 0.6-1.4% faster (benchmarks/RESULTS.md). Eagerly the padding is one more pass over
the maps and the step was 0.3% slower, so eager runs, and the CPU, keep the plain convolution. Zero
channels add exact zeros to every sum, so the padded convolution computes the same function; the weights
keep their shape, so checkpoints are unchanged.

`--image-conv triton` runs them instead, in the same compiled CUDA graphs, with kernels of our own
(vae.tritonconv) that read and write each map once; eager runs still use cuDNN, so the trainer's check of the
compiled step against eager execution also checks these kernels' forward pass on every run."""
from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F
from torch import nn

from vae.config import IMAGE_CONV_CHOICES

CUDA_CHANNELS = 8
PADDED_ON = ("cuda",)  # device types whose compiled runs pad, or run --image-conv triton


def padded_weight(conv: nn.Conv2d, channels: int) -> torch.Tensor:
    """conv's weights (out, in, k, k) with its 3 input channels (else its 3 output channels) padded with zeros to
    `channels`."""
    if conv.in_channels == 3:
        return F.pad(conv.weight, (0, 0, 0, 0, 0, channels - 3))
    return F.pad(conv.weight, (0, 0, 0, 0, 0, 0, 0, channels - conv.out_channels))


def padded_conv(conv: nn.Conv2d, x: torch.Tensor, channels: int) -> torch.Tensor:
    """conv(x) with conv's 3 input channels (else its 3 output channels) padded with zeros to `channels`."""
    weight = padded_weight(conv, channels)
    if conv.in_channels == 3:
        return conv._conv_forward(F.pad(x, (0, 0, 0, 0, 0, channels - 3)), weight, conv.bias)
    bias = None if conv.bias is None else F.pad(conv.bias, (0, channels - conv.out_channels))
    return conv._conv_forward(x, weight, bias)[:, :conv.out_channels]


def triton_conv(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """conv(x) by vae.tritonconv's kernels, in autocast's precision where autocast is on, as cuDNN would run it."""
    from vae.tritonconv import image_conv

    on = torch.is_autocast_enabled(x.device.type)  # a custom operator: autocast leaves its inputs as they are
    dtype = torch.get_autocast_dtype(x.device.type) if on else x.dtype
    bias = None if conv.bias is None else conv.bias.to(dtype)
    return image_conv(x.to(dtype), conv.weight.to(dtype), bias, conv.padding[0])


class ImageConv2d(nn.Conv2d):
    """An nn.Conv2d with 3 input or 3 output channels, padded to CUDA_CHANNELS in compiled CUDA runs, or run by
    vae.tritonconv's kernels there when `kernels` is "triton" (use_image_conv)."""

    kernels = "cudnn"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type in PADDED_ON and torch.compiler.is_compiling():
            if self.kernels == "triton":
                return triton_conv(self, x)
            return padded_conv(self, x, CUDA_CHANNELS)
        return super().forward(x)


def use_image_conv(module: nn.Module, kernels: str) -> list[str]:
    """Set which kernels (vae.config.IMAGE_CONV_CHOICES) `module`'s image convolutions run in compiled CUDA graphs.
    Layers that vae.tritonconv does not compute (tritonconv.supports), and every layer where Triton is not
    installed, keep cuDNN. Returns the names of the layers that run the Triton kernels."""
    if kernels not in IMAGE_CONV_CHOICES:
        raise ValueError(f"--image-conv {kernels!r}: choose one of {', '.join(IMAGE_CONV_CHOICES)}")
    usable = kernels == "triton" and importlib.util.find_spec("triton") is not None
    if usable:
        from vae.tritonconv import supports
    chosen = []
    for name, layer in module.named_modules():
        if isinstance(layer, ImageConv2d):
            layer.kernels = "triton" if usable and supports(layer) else "cudnn"
            if layer.kernels == "triton":
                chosen.append(name)
    return chosen


def image_conv_line(kernels: str, layers: list[str], device_type: str) -> str:
    """What --image-conv `kernels` does in a run compiled on `device_type` (layers: use_image_conv's), for the log;
    empty for cudnn, the default."""
    if kernels != "triton":
        return ""
    if device_type not in PADDED_ON:
        return f"--image-conv triton: for compiled CUDA steps only; on {device_type} torch's own convolutions run"
    if not layers:
        return ("--image-conv triton: no image convolution runs the Triton kernels (Triton is not installed, or "
                "no layer is one they compute: stride 1, square kernel, few channels on one side); cuDNN runs them")
    return f"the image convolutions ({', '.join(layers)}) run vae.tritonconv's Triton kernels"
