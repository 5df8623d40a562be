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
(vae.tritonconv) that read and write each map once; VGG's conv1_1 applies its ReLU inside that pass
(ImageConv2d's `relu`). Eager runs still use cuDNN. Before a run compiles them in, it checks them layer by layer
against cuDNN on its own GPU (checked_kernels): the check of the whole compiled step against eager execution
covers them too, but bf16 rounding leaves it blind to all but gross errors of a gradient."""
from __future__ import annotations

import importlib.util
import math
from importlib import metadata

import torch
import torch.nn.functional as F
from torch import nn

from common.errors import exception_line
from vae.config import IMAGE_CONV_CHOICES

CUDA_CHANNELS = 8
PADDED_ON = ("cuda",)  # device types whose compiled runs pad, or run --image-conv triton
# The kernels against torch's convolution, each pass relative to the norm of torch's result. Under bf16 autocast
# both round their results to bf16: 0.004 apart for the paper's layers in the interpreter against torch's CPU
# convolution (benchmarks/RESULTS.md, "the checks of the compiled step"). A weight gradient with one tap of 9 missing
# gives 0.34-0.35, one of its 64 channels missing 0.12-0.13.
KERNEL_TOLERANCE = 0.02


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


def triton_conv(conv: ImageConv2d, x: torch.Tensor) -> torch.Tensor:
    """conv(x), with its ReLU if it has one, by vae.tritonconv's kernels, in autocast's precision where autocast is
    on, as cuDNN would run it."""
    return _triton_conv(x, conv.weight, conv.bias, conv.padding[0], conv.relu)


def _triton_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int,
                 relu: bool) -> torch.Tensor:
    from vae.tritonconv import image_conv

    on = torch.is_autocast_enabled(x.device.type)  # a custom operator: autocast leaves its inputs as they are
    dtype = torch.get_autocast_dtype(x.device.type) if on else x.dtype
    bias = None if bias is None else bias.to(dtype)
    return image_conv(x.to(dtype), weight.to(dtype), bias, padding, relu)


def kernel_differences(conv: ImageConv2d, x: torch.Tensor, input_gradient: bool = True) -> dict[str, float]:
    """How far vae.tritonconv's kernels are from torch's convolution (cuDNN on CUDA) and ReLU (if `conv` has one)
    for `conv` on input `x`, in autocast's precision where autocast is on, as the compiled step runs them: the
    output, and for a random output gradient the gradients a training step computes, each as the norm of the
    difference relative to the norm of torch's. Those are the input's (with `input_gradient`) and the weights' and
    the bias's where they are trained: a frozen layer (VGG's conv1_1) has none, and the first layer's input is the
    image, whose gradient nobody asks for."""
    # a pass the step does not run is not run here either: the kernels' backward reads which inputs need a gradient
    x = x.detach().requires_grad_(input_gradient)
    weight = conv.weight.detach().requires_grad_(conv.weight.requires_grad)
    bias = None if conv.bias is None else conv.bias.detach().requires_grad_(conv.bias.requires_grad)
    wanted = {name: leaf for name, leaf in (("input gradient", x), ("weight gradient", weight), ("bias gradient", bias))
              if leaf is not None and leaf.requires_grad}
    ours = _triton_conv(x, weight, bias, conv.padding[0], conv.relu)
    theirs = F.conv2d(x, weight, bias, padding=conv.padding)
    if conv.relu:
        theirs = F.relu(theirs)
    results = {"output": (ours, theirs)}
    if wanted:
        grad = torch.randn(theirs.shape, generator=torch.Generator(device=x.device).manual_seed(0), device=x.device,
                           dtype=theirs.dtype)
        ours, theirs = (torch.autograd.grad(y, list(wanted.values()), grad) for y in (ours, theirs))
        results |= dict(zip(wanted, zip(ours, theirs)))
    return {name: ((a.float() - b.float()).norm() / b.float().norm()).item() for name, (a, b) in results.items()}


def checked_kernels(objective: nn.Module, x: torch.Tensor, noise: torch.Tensor, autocast,
                    layers: dict[str, ImageConv2d]) -> dict:
    """Check vae.tritonconv's kernels in each of `layers` (by name) against torch's convolution (kernel_differences),
    on the input the layer gets in a forward pass of `objective` (vae.losses.Objective) in eval mode, under
    `autocast` (Runtime.autocast), in the passes a training step runs there. The record for config.json: the
    differences, the largest and whether it is within KERNEL_TOLERANCE. Unlike the check of the whole compiled step,
    which bf16 rounding limits to gross errors in the gradients, this finds one tap or one channel computed wrongly."""
    inputs, input_gradient = {}, {}

    def keep(module, args, name):
        inputs.setdefault(name, args[0].detach())
        input_gradient[name] = input_gradient.get(name, False) or args[0].requires_grad  # VGG runs on x, then x_hat

    hooks = [layer.register_forward_pre_hook(lambda module, args, name=name: keep(module, args, name))
             for name, layer in layers.items()]
    modes = [(module, module.training) for module in objective.modules()]
    try:
        objective.eval()  # the batch-norm statistics stay as they are
        with torch.enable_grad(), autocast():  # with the graph a step builds: which inputs get a gradient
            objective(x, noise)
    finally:
        for hook in hooks:
            hook.remove()
        for module, training in modes:
            module.train(training)
    record = {"differences": {}, "largest": None, "tolerance": KERNEL_TOLERANCE, "used": False, "error": None}
    try:
        with autocast():
            for name, layer in layers.items():
                record["differences"][name] = kernel_differences(layer, inputs[name], input_gradient[name])
    except torch.OutOfMemoryError:
        raise  # the run's own batch would not fit either
    except Exception as error:  # Triton failing to compile or launch the kernels here: cuDNN runs, and the log says
        return {**record, "error": f"in {name}: {exception_line(error)}"}
    found = [(value, name, what) for name, values in record["differences"].items() for what, value in values.items()]
    value, name, what = max(found, key=lambda item: math.inf if math.isnan(item[0]) else item[0])
    return {**record, "largest": {"layer": name, "what": what, "value": value},
            "used": all(value <= KERNEL_TOLERANCE for value, _, _ in found)}


class ImageConv2d(nn.Conv2d):
    """An nn.Conv2d with 3 input or 3 output channels, padded to CUDA_CHANNELS in compiled CUDA runs, or run by
    vae.tritonconv's kernels there when `kernels` is "triton" (use_image_conv). With `relu`, a ReLU follows, in
    the Triton kernels inside the convolution's own pass."""

    kernels = "cudnn"

    def __init__(self, *args, relu: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type in PADDED_ON and torch.compiler.is_compiling():
            if self.kernels == "triton":
                return triton_conv(self, x)
            y = padded_conv(self, x, CUDA_CHANNELS)
        else:
            y = super().forward(x)
        return F.relu(y, inplace=True) if self.relu else y  # in place, as torchvision's VGG: no second map

    def extra_repr(self) -> str:
        return super().extra_repr() + (", relu=True" if self.relu else "")


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


def triton_layers(kernels: str, modules: list[nn.Module]) -> dict[str, ImageConv2d]:
    """Set which kernels (--image-conv) `modules`' image convolutions run (use_image_conv); the layers that run the
    Triton kernels, by their names in their module."""
    layers = {}
    for module in modules:
        named = dict(module.named_modules())
        layers |= {name: named[name] for name in use_image_conv(module, kernels)}
    return layers


def set_image_conv(kernels: str, modules: list[nn.Module], objective: nn.Module, x: torch.Tensor,
                   noise: torch.Tensor, autocast) -> dict:
    """Set which kernels (--image-conv) run the image convolutions of `modules` (the model, the loss network) in
    a compiled step of `objective` on x's device, and return the record for config.json. The Triton kernels are
    first checked layer by layer on this machine (checked_kernels, on `x` and `noise`, under `autocast`); if any
    pass differs or fails, cuDNN runs every layer."""
    layers = triton_layers(kernels, modules)
    if x.device.type not in PADDED_ON or not layers:  # elsewhere torch's convolutions run
        return {"kernels": kernels, "triton_layers": []}
    check = checked_kernels(objective, x, noise, autocast, layers)
    if not check["used"]:
        for module in modules:
            use_image_conv(module, "cudnn")
    return {"kernels": kernels, "triton_layers": list(layers) if check["used"] else [],
            "triton": metadata.version("triton"), "check": check}


def image_conv_line(kernels: str, layers: list[str], device_type: str, check: dict | None = None) -> str:
    """What --image-conv `kernels` does in a run compiled on `device_type` (layers: those that run the Triton
    kernels; check: checked_kernels's record, if the kernels were checked), for the log; empty for cudnn, the
    default."""
    if kernels != "triton":
        return ""
    if device_type not in PADDED_ON:
        return f"--image-conv triton: for compiled CUDA steps only; on {device_type} torch's own convolutions run"
    if check is not None and check.get("error"):
        return (f"--image-conv triton: vae.tritonconv's kernels failed on this machine ({check['error']}); cuDNN runs "
                "the image convolutions. Please report it with the GPU and the torch and Triton versions")
    if check is not None and not check["used"]:
        largest = check["largest"]
        return (f"--image-conv triton: vae.tritonconv's kernels differ from torch's convolution on this machine, in "
                f"{largest['layer']}'s {largest['what']} by {largest['value']:.3g} of its norm (tolerance "
                f"{check['tolerance']}; every difference is in config.json); cuDNN runs the image convolutions. "
                f"This is a bug: please report it with the GPU and the torch and Triton versions")
    if not layers:
        return ("--image-conv triton: no image convolution runs the Triton kernels (Triton is not installed, or "
                "no layer is one they compute: stride 1, square kernel, few channels on one side); cuDNN runs them")
    largest = "" if check is None else f", checked against torch's (within {check['largest']['value']:.2g})"
    return f"the image convolutions ({', '.join(layers)}) run vae.tritonconv's Triton kernels{largest}"
