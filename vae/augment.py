"""Batched data augmentation on the training device: horizontal flips, crops, colour shifts.

Images arrive as uint8 (B, H, W, 3) wherever the model is (the GPU when training on one) and leave
as float (B, 3, S, S) in [0, 1]. Crops never cut an object: each crop contains the box around all
of an image's objects, since the count is the label (natural images, without boxes, are only
trimmed by at most `crop_max` of a side). Flip and crop are one affine resampling
(`grid_sample`); the colour shifts are per-image linear maps.

Sample, then apply: `draw` takes every random number of a batch from the generator passed in, which
the trainer seeds from (seed, epoch, step), so a resumed run repeats them exactly; `apply` is a pure
function of the images and those draws, which torch.compile fuses into a few kernels (the trainer
compiles it with the objective: vae.train.Run.compile).
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from vae.config import AugmentConfig

# RGB <-> YIQ: a hue shift is a rotation of the (I, Q) chroma plane.
_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


@functools.lru_cache(maxsize=None)
def _colour_constants(device: torch.device):
    """Luma weights and the YIQ matrices, on the device once (no host-to-device copy per step)."""
    to_yiq = _RGB_TO_YIQ.to(torch.float64)
    return (_RGB_TO_YIQ[0].view(1, 3, 1, 1).to(device), to_yiq.float().to(device),
            torch.linalg.inv(to_yiq).float().to(device))


def _check_images(images: torch.Tensor) -> None:
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        # float images already in [0, 1] would be divided by 255 again: near-black images, without a word
        raise ValueError(f"to_float takes uint8 images of shape (B, H, W, 3), as shards and PIL give them; got "
                         f"{str(images.dtype).removeprefix('torch.')} of shape {tuple(images.shape)}")


def to_float(images, size: int | None = None) -> torch.Tensor:
    """uint8 (B, H, W, 3), a tensor or a numpy array -> float (B, 3, size, size) in [0, 1], channels-last in
    memory."""
    if not isinstance(images, torch.Tensor):  # as downstream code has images: np.asarray of a PIL image, or a
        images = torch.from_numpy(np.ascontiguousarray(images))  # cv2 image flipped to RGB (strides < 0)
    _check_images(images)
    x = images.permute(0, 3, 1, 2).float().div_(255.0)  # a view: the NHWC bytes stay channels-last
    if size is not None and size != x.shape[-1]:
        x = F.interpolate(x, size=(size, size), mode="area")
    return x


class Params(NamedTuple):
    """A batch's augmentation as `draw` samples it and `apply` applies it: per image, the affine map of its crop
    and flip (affine_grid's theta), its brightness, contrast and saturation factors, and its hue shift as a
    matrix on RGB (None without hue jitter); and the luma weights, on the images' device."""
    theta: torch.Tensor  # (n, 2, 3)
    brightness: torch.Tensor  # (n, 1, 1, 1)
    contrast: torch.Tensor  # (n, 1, 1, 1)
    saturation: torch.Tensor  # (n, 1, 1, 1)
    hue: torch.Tensor | None  # (n, 3, 3)
    luma: torch.Tensor  # (1, 3, 1, 1)


def augment(images: torch.Tensor, boxes: torch.Tensor, config: AugmentConfig, generator: torch.Generator,
            size: int | None = None) -> torch.Tensor:
    """Augmented float images (B, 3, size, size); `boxes` are (x0, y0, x1, y1) pixels, NaN for none."""
    return apply(images, draw(images, boxes, config, generator, size), size)


def draw(images: torch.Tensor, boxes: torch.Tensor, config: AugmentConfig, generator: torch.Generator,
         size: int | None = None) -> Params:
    """Every random draw of a batch's augmentation (one call on `generator`), and the parameters they make for
    `images` (uint8, (B, H, W, 3)) and their `boxes`, at `size`."""
    _check_images(images)
    n, width = images.shape[0], images.shape[2]
    side = width if size is None else size
    device = images.device
    boxes = boxes.to(device=device, dtype=torch.float32) * (side / width)
    u = torch.rand(n, 8, generator=generator, device=device)

    # Crop: a square of side c >= every object's extent, positioned so that it contains them all.
    c = side * (1 - config.crop_max * u[:, 0])
    has_box = ~torch.isnan(boxes[:, 0])
    extent = torch.where(has_box, torch.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]), 0)
    c = torch.minimum(torch.maximum(c, extent), torch.full_like(c, side))
    lo_x = torch.where(has_box, (boxes[:, 2] - c).clamp(min=0), 0)
    hi_x = torch.where(has_box, torch.minimum(boxes[:, 0], side - c), side - c)
    lo_y = torch.where(has_box, (boxes[:, 3] - c).clamp(min=0), 0)
    hi_y = torch.where(has_box, torch.minimum(boxes[:, 1], side - c), side - c)
    x0 = lo_x + u[:, 1] * (hi_x - lo_x).clamp(min=0)
    y0 = lo_y + u[:, 2] * (hi_y - lo_y).clamp(min=0)
    flip = u[:, 3] < config.flip_prob
    scale = c / side
    theta = torch.zeros(n, 2, 3, device=device)
    theta[:, 0, 0] = torch.where(flip, -scale, scale)
    theta[:, 1, 1] = scale
    theta[:, 0, 2] = (x0 + c / 2) / side * 2 - 1
    theta[:, 1, 2] = (y0 + c / 2) / side * 2 - 1

    # Colour: brightness, contrast, saturation, hue, each a per-image linear map.
    def factor(column, amount):
        return (1 + amount * (2 * u[:, column] - 1)).view(n, 1, 1, 1)

    luma, to_yiq, from_yiq = _colour_constants(device)
    hue = None
    if config.hue:
        angle = (2 * u[:, 7] - 1) * config.hue * 2 * math.pi
        cos, sin = torch.cos(angle), torch.sin(angle)
        rotation = torch.zeros(n, 3, 3, device=device)
        rotation[:, 0, 0] = 1
        rotation[:, 1, 1], rotation[:, 1, 2], rotation[:, 2, 1], rotation[:, 2, 2] = cos, -sin, sin, cos
        hue = from_yiq @ rotation @ to_yiq
    return Params(theta, factor(4, config.brightness), factor(5, config.contrast), factor(6, config.saturation),
                  hue, luma)


def apply(images: torch.Tensor, params: Params, size: int | None = None) -> torch.Tensor:
    """The augmentation `params` (`draw`) applied to uint8 `images` (B, H, W, 3): float (B, 3, size, size) in
    [0, 1], channels-last. No random draw and no host-device copy, so that torch.compile can take it whole."""
    x = to_float(images, size)
    n, side = x.shape[0], x.shape[-1]
    grid = F.affine_grid(params.theta, [n, 3, side, side], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    x = x * params.brightness
    grey = (x * params.luma).sum(1, keepdim=True)
    x = grey.mean((2, 3), keepdim=True) + params.contrast * (x - grey.mean((2, 3), keepdim=True))
    grey = (x * params.luma).sum(1, keepdim=True)
    x = grey + params.saturation * (x - grey)
    if params.hue is not None:
        x = torch.einsum("bij,bjhw->bihw", params.hue, x)
    return x.clamp_(0, 1).contiguous(memory_format=torch.channels_last)
