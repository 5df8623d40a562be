"""Convolutions whose input or output is an image's 3 channels (the encoder's first layer, the decoder's
output layer, VGG-19's conv1_1), padded with zero channels to CUDA_CHANNELS when compiled for CUDA.

cuDNN 9 runs these three far below both the card's arithmetic and its memory bandwidth (18-61 TFLOP/s on
an H100, bf16, channels_last, batch 128) and pads a 3-channel input with a kernel of its own. Padded to 8
channels, cuDNN picks other kernels and Inductor fuses the padding into the kernel that makes the input:
the compiled step runs 0.6-1.4% faster (benchmarks/RESULTS.md). Eagerly the padding is one more pass over
the maps and the step was 0.3% slower, so eager runs, and the CPU, keep the plain convolution. Zero
channels add exact zeros to every sum, so the padded convolution computes the same function; the weights
keep their shape, so checkpoints are unchanged."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

CUDA_CHANNELS = 8
PADDED_ON = ("cuda",)  # device types whose compiled runs pad


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


class ImageConv2d(nn.Conv2d):
    """An nn.Conv2d with 3 input or 3 output channels, padded to CUDA_CHANNELS in compiled CUDA runs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type in PADDED_ON and torch.compiler.is_compiling():
            return padded_conv(self, x, CUDA_CHANNELS)
        return super().forward(x)
