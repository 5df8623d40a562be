"""The VAE objective: alpha * KL + beta * L_rec, with a feature perceptual or a pixel L_rec.

Reductions, stated because beta = 0.03 only means something under one: every term is computed per
image and then averaged over the batch. The KL is summed over the latent dimensions. L_rec is, per
image, the sum over relu1_1, relu2_1 and relu3_1 of the squared feature differences, summed over all
elements of each layer (`rec_reduction="sum"`, the default: the ratio of the two terms is then the
one of the authors' code, which summed both over batch and elements), or averaged over each layer's
elements (`"mean"`, the literal MSE of Eq. 2).
"""
from __future__ import annotations

import torch
from torch import nn

from vae.vgg import TAPS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
REDUCTIONS = ("sum", "mean")


def kl_per_dimension(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) for every image and latent dimension, shape (B, latent)."""
    mu, sigma = mu.float(), sigma.float()
    return 0.5 * (mu.square() + sigma.square() - 1.0) - torch.log(sigma)


def _reduce(difference: torch.Tensor, reduction: str) -> torch.Tensor:
    squared = difference.float().square().flatten(1)
    return squared.sum(1) if reduction == "sum" else squared.mean(1)


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


class PixelLoss(nn.Module):
    """The plain pixel loss the paper compares against (its Figure 2): squared error on [0, 1] pixels."""

    def __init__(self, reduction: str = "sum"):
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"--rec-reduction {reduction!r}: choose one of {REDUCTIONS}")
        self.reduction = reduction

    def forward(self, x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
        return _reduce(x - x_hat, self.reduction)


def vae_loss(x, x_hat, mu, sigma, reconstruction: nn.Module, alpha: float, beta: float) -> dict[str, torch.Tensor]:
    """Batch-mean loss terms: total = alpha * KL + beta * L_rec; also the per-dimension KL (B-mean)."""
    kl = kl_per_dimension(mu, sigma)
    rec = reconstruction(x, x_hat)
    kl_image = kl.sum(1)
    total = alpha * kl_image + beta * rec
    return {"loss": total.mean(), "kl": kl_image.mean(), "rec": rec.mean(), "kl_per_dim": kl.mean(0)}
