"""Benchmark `vae-train` steps: images/s for the paper configuration (161x161, latent 180, VGG-19
perceptual loss), the optimised path against a plain fp32 eager loop of the same model, in one run.

    python benchmarks/bench_vae.py                         # CPU here: small batch, few steps
    python benchmarks/bench_vae.py --device cuda --batch 128 --steps 50 --compile

A step is what the trainer does per batch: uint8 images already in device memory -> augmentation on
the device -> forward -> alpha*KL + beta*perceptual loss -> backward -> Adam. "optimised" is the
trainer's default path (channels_last, bf16 autocast and cudnn autotuning on CUDA, optional
torch.compile); "plain" is NCHW fp32 eager with the same data and augmentation.
"""
from __future__ import annotations

import argparse
import platform
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from vae.augment import AugmentConfig, augment
from vae.losses import PerceptualLoss, vae_loss
from vae.model import VAE, ModelConfig, parameter_counts
from vae.train import COMPILE_TOLERANCE, compiled_difference
from vae.vgg import RANDOM, load_vgg

SHARED_WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "weights" / "vgg19-features-relu3_1.pth"
RECIPE_IMAGES = 140 * (80_000 + 10_000)  # 140 epochs over ~80K synthetic plus ~10K natural images


def measure(optimised: bool, device: torch.device, batch: int, steps: int, warmup: int,
            compile_model: bool) -> tuple[float, str]:
    """Images per second of training steps (after `warmup` untimed steps), and a note on compiling."""
    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = optimised
    model = VAE(ModelConfig()).to(device)
    vgg = load_vgg(str(SHARED_WEIGHTS) if SHARED_WEIGHTS.exists() else RANDOM)[0]
    loss = PerceptualLoss(vgg).to(device)
    if optimised:
        model = model.to(memory_format=torch.channels_last)
        loss = loss.to(memory_format=torch.channels_last)
    net = torch.compile(model) if (optimised and compile_model) else model
    optimizer = torch.optim.Adam(model.parameters(), lr=0.0015)
    images = torch.randint(0, 256, (batch, 161, 161, 3), dtype=torch.uint8, device=device)
    boxes = torch.tensor([[40.0, 40.0, 120.0, 120.0]], device=device).repeat(batch, 1)
    amp = optimised and device.type == "cuda"
    note = ""
    if net is not model:  # a fast wrong model is no speed-up: check it as the trainer does
        x = augment(images, boxes, AugmentConfig(), torch.Generator(device=device).manual_seed(0))
        mean, largest = compiled_difference(model, net, model, x, amp)
        note = f" (compiled vs eager: mean difference {mean:.2g}, {'ok' if mean <= COMPILE_TOLERANCE else 'WRONG'})"

    def step(i: int) -> None:
        generator = torch.Generator(device=device).manual_seed(i)
        x = augment(images, boxes, AugmentConfig(), generator)
        if not optimised:
            x = x.contiguous()  # NCHW
        noise = torch.randn(batch, 180, generator=generator, device=device)
        with torch.autocast(device.type, dtype=torch.bfloat16) if amp else nullcontext():
            x_hat, mu, sigma = net(x, noise)
            terms = vae_loss(x, x_hat.float(), mu, sigma, loss, 1.0, 0.03)
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        optimizer.step()

    for i in range(warmup):
        step(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(steps):
        step(warmup + i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - start), note


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=None, help="default: 128 on CUDA, 4 on CPU")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: 50 on CUDA, 3 on CPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 10 on CUDA, 1 on CPU)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the optimised path")
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    batch = args.batch or (128 if cuda else 4)
    steps = args.steps or (50 if cuda else 3)
    warmup = args.warmup if args.warmup is not None else (10 if cuda else 1)
    name = torch.cuda.get_device_name(device) if cuda else platform.processor() or platform.machine()
    print(f"device: {name} ({device}); torch {torch.__version__}; {torch.get_num_threads()} CPU threads")
    print(f"model: paper configuration, {parameter_counts(VAE())['total']:,} parameters; batch {batch}, "
          f"{warmup} warm-up + {steps} timed steps; VGG weights: "
          f"{'../shared' if SHARED_WEIGHTS.exists() else 'random (same speed)'}\n")
    plain, _ = measure(False, device, batch, steps, warmup, False)
    optimised, note = measure(True, device, batch, steps, warmup, args.compile)
    label = ("channels_last" + (" + bf16 autocast + cudnn.benchmark" if cuda else "")
             + (" + compile" if args.compile else ""))
    print("| path | images/s | x plain | full recipe (140 epochs x 90K images) |")
    print("|---|---|---|---|")
    for title, rate in (("plain fp32 eager (NCHW)", plain), (f"optimised ({label}){note}", optimised)):
        hours = RECIPE_IMAGES / rate / 3600
        print(f"| {title} | {rate:.2f} | {rate / plain:.2f} | {hours:.1f} h |")


if __name__ == "__main__":
    main()
