"""The VAE objective: alpha * KL + beta * L_rec, with a feature perceptual or a pixel L_rec.

Reductions, stated because beta = 0.03 only means something under one: every term is computed per
image and then averaged over the batch. The KL is summed over the latent dimensions. L_rec is, per
image, the sum over relu1_1, relu2_1 and relu3_1 of the squared feature differences, summed over all
elements of each layer (`rec_reduction="sum"`, the default), or averaged over each layer's elements
(`"mean"`, the literal MSE of Eq. 2). `"bce"` is the Bernoulli reconstruction loss of binary images
(the dot stimuli): the binary cross-entropy summed over pixels and channels.

What is known of the scale: the authors' code summed both terms over the batch and the elements,
as the default here sums over the elements (the batch mean scales both alike). That does not make
beta = 0.03 weigh the terms as it did there: their VGG weights and input preprocessing (Caffe, BGR
0-255) and their log-variance parameterisation differ from ours, and the loss network's feature
scale moves L_rec by orders of magnitude (NOTES). So beta is a value to check, not to copy: the
trainer logs the KL in nats per active dimension every epoch, which shows the regime (collapse near
0; a few nats per dimension is a code that carries information).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vae.vgg import TAPS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
REDUCTIONS = ("sum", "mean")


def kl_per_dimension(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) for every image and latent dimension, shape (B, latent)."""
    mu, sigma = mu.float(), sigma.float()
    return 0.5 * (mu.square() + sigma.square() - 1.0) - torch.log(sigma)


def per_image(elements: torch.Tensor, reduction: str) -> torch.Tensor:
    """Sum (or mean) over all but the batch axis, accumulated in fp32.

    In two stages, over the spatial axes of every image and channel, then over the channels: reduced in
    one go, each image's map is one long reduction, too few of them for a GPU to run in parallel (on an
    H100 at batch 128, the relu1_1 term's forward and backward took 4.5 ms compiled in one stage and 1.7
    in two, and the whole compiled step ran 7% faster). Both stages reduce over axes in place: flattening
    a channels_last map would copy it first."""
    count = math.prod(elements.shape[1:])
    if elements.dim() > 2:
        elements = elements.sum(tuple(range(2, elements.dim())), dtype=torch.float32)
    total = elements.sum(1, dtype=torch.float32)
    return total if reduction == "sum" else total / count


def _reduce(difference: torch.Tensor, reduction: str) -> torch.Tensor:
    """Per-image squared feature difference. The squares stay in the maps' own precision (bf16 under
    autocast: each rounded by at most 2^-9, to nearest) and only the sum is fp32, so no fp32 copy of a
    full-resolution map is made; on 2 CPU cores this halves the time of the loss's reductions and their
    backward, and changes the loss by about 3e-5 of itself (eager, real features; 2.2e-4 on an H100 for
    synthetic maps whose differences are small). Compiled, Inductor keeps the squares in fp32: 1e-7."""
    return per_image(difference.square(), reduction)


class PerceptualLoss(nn.Module):
    """Feature perceptual loss (Hou et al.) with a frozen VGG-19 that always stays in eval mode.

    Takes images in [0, 1]; the ImageNet normalisation happens here. The input's features are
    computed without gradient, the reconstruction's with it: one VGG backward pass instead of the
    two a single pass over cat([x, x_hat]) would need.
    """

    def __init__(self, vgg: nn.Sequential, reduction: str = "sum"):
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"--rec-reduction {reduction!r}: choose one of {REDUCTIONS}")
        self.vgg = vgg
        self.reduction = reduction
        self.taps = sorted(TAPS.values())
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        for parameter in self.vgg.parameters():
            parameter.requires_grad_(False)
        self.vgg.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        self.vgg.eval()  # BatchNorm-free today, but a frozen loss network must never switch modes
        return self

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        h = (images - self.mean) / self.std
        found = []
        for index, layer in enumerate(self.vgg):
            h = layer(h)
            if index in self.taps:
                found.append(h)
                if index == self.taps[-1]:
                    break
        return found

    def forward(self, x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
        """Per-image loss, shape (B,)."""
        with torch.no_grad():
            target = self.features(x)
        return sum(_reduce(a - b, self.reduction) for a, b in zip(self.features(x_hat), target))


class _PerImageLoss(nn.Module):
    """A loss of each element (pixel and channel), summed or averaged per image."""

    def __init__(self, reduction: str = "sum"):
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"--rec-reduction {reduction!r}: choose one of {REDUCTIONS}")
        self.reduction = reduction

    def elements(self, x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
        return per_image(self.elements(x, x_hat).float(), self.reduction)


class PixelLoss(_PerImageLoss):
    """The plain pixel loss the paper compares against (its Figure 2): squared error on [0, 1] pixels."""

    def elements(self, x, x_hat):
        return (x - x_hat).float().square()


class BernoulliLoss(_PerImageLoss):
    """The Bernoulli reconstruction loss of binary images (white dots on black): binary cross-entropy of
    the decoder's output probabilities, per image summed (or averaged) over pixels and channels."""

    def elements(self, x, x_hat):
        with torch.autocast(x.device.type, enabled=False):  # cross-entropy needs fp32 logs
            return F.binary_cross_entropy(x_hat.float(), x.float(), reduction="none")


def vae_loss(x, x_hat, mu, sigma, reconstruction: nn.Module, alpha: float, beta: float) -> dict[str, torch.Tensor]:
    """Batch-mean loss terms: total = alpha * KL + beta * L_rec; also the per-dimension KL (B-mean)."""
    kl = kl_per_dimension(mu, sigma)
    rec = reconstruction(x, x_hat)
    kl_image = kl.sum(1)
    total = alpha * kl_image + beta * rec
    return {"loss": total.mean(), "kl": kl_image.mean(), "rec": rec.mean(), "kl_per_dim": kl.mean(0)}


class Objective(nn.Module):
    """One forward pass and its loss: what a training step and a validation step both compute, and what
    --compile compiles (the model, the reconstruction loss with its VGG-19, and the loss arithmetic)."""

    def __init__(self, net: nn.Module, reconstruction: nn.Module, alpha: float, beta: float):
        super().__init__()
        self.net, self.reconstruction = net, reconstruction
        self.alpha, self.beta = alpha, beta

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> dict[str, torch.Tensor]:
        x_hat, mu, sigma = self.net(x, noise)
        terms = vae_loss(x, x_hat.float(), mu, sigma, self.reconstruction, self.alpha, self.beta)
        return {**terms, "x_hat": x_hat, "mu": mu}
