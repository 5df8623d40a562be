"""Per-object transforms: scale a cut-out to its share of the target area, then colour-shift, flip
and rotate it.

As in albumentations, each transform first samples its parameters (`ObjectTransform.sample`, from the
image's own generator) and then applies them (`apply`). The operations are albumentations' own
ColorJitter maths (brightness, saturation, hue, in a random order; tests/test_transforms.py checks
them against albumentations' functional implementations) and a rotation that grows the canvas to fit
(Affine's fit_output), written directly on OpenCV: going through albumentations' Compose cost about
0.5 ms of bookkeeping per object, twice the work itself, and importing albumentations (which imports
torch) added seconds to the start of every build worker.

Everything runs on premultiplied RGBA, so resampling near a soft mask edge never mixes in the colour
of pixels outside the object. Brightness and saturation are linear in the pixel value, so they are
exact on premultiplied colour; the hue shift keeps a pixel's value and saturation, so it is too, up
to rounding.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from synthgen.sources import Cutout

BRIGHTNESS, SATURATION, HUE = 0, 1, 2  # the colour operations, in the order ColorJitter lists them


@dataclass
class Sprite:
    """A transformed object ready to paste: premultiplied RGB and alpha, float32, tightly cropped."""

    premul: np.ndarray | None  # None where only its place is wanted (ObjectTransform's alpha_only)
    alpha: np.ndarray

    @property
    def area(self) -> float:
        return float(self.alpha.sum(dtype=np.float64))

    @property
    def shape(self) -> tuple[int, int]:
        return self.alpha.shape


@dataclass(frozen=True)
class ObjectParams:
    """One object's drawn transform: factors of 1 and angles of 0 leave the object unchanged."""

    flip: bool = False
    angle: float = 0.0  # degrees, counter-clockwise
    brightness: float = 1.0
    saturation: float = 1.0
    hue: float = 0.0  # a fraction of the hue circle
    colour_order: tuple[int, ...] = (BRIGHTNESS, SATURATION, HUE)


def adjust_brightness(rgb: np.ndarray, factor: float) -> np.ndarray:
    """Every channel times `factor`, clipped and truncated (albumentations' adjust_brightness_torchvision)."""
    if factor == 1:
        return rgb
    lut = np.clip(np.arange(256, dtype=np.float32) * np.float32(factor), 0, 255).astype(np.uint8)
    return cv2.LUT(rgb, lut)


def adjust_saturation(rgb: np.ndarray, factor: float) -> np.ndarray:
    """A blend of the image with its own grey (albumentations' adjust_saturation_torchvision)."""
    if factor == 1:
        return rgb
    grey = cv2.cvtColor(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
    return cv2.addWeighted(rgb, factor, grey, 1 - factor, 0)


def adjust_hue(rgb: np.ndarray, shift: float) -> np.ndarray:
    """The hue turned by `shift` of a full circle, through OpenCV's 8-bit HSV (albumentations'
    adjust_hue_torchvision)."""
    if shift == 0:
        return rgb
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    lut = np.mod(np.arange(256, dtype=np.int16) + 180 * shift, 180).astype(np.uint8)
    hsv[..., 0] = cv2.LUT(hsv[..., 0], lut)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def rotate_to_fit(image: np.ndarray, angle: float) -> np.ndarray:
    """`image` turned by `angle` degrees about its centre, bilinear, on a canvas grown to hold all of it
    (zero outside)."""
    if angle == 0:
        return image
    h, w = image.shape[:2]
    matrix = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), angle, 1.0)
    cos, sin = abs(matrix[0, 0]), abs(matrix[0, 1])
    out_w, out_h = math.ceil(w * cos + h * sin), math.ceil(w * sin + h * cos)
    matrix[0, 2] += (out_w - w) / 2
    matrix[1, 2] += (out_h - h) / 2
    out = cv2.warpAffine(image, matrix, (out_w, out_h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                         borderValue=0)
    return out.reshape(out_h, out_w, *image.shape[2:])  # cv2 drops singleton axes


class ObjectTransform:
    """Scaling to an area, colour shift, random horizontal flip, small rotation."""

    def __init__(self, rotation: float, flip_prob: float, color_shift: tuple[float, float, float],
                 alpha_only: bool = False):
        """`alpha_only`: sprites without their colour, for placing only (the eligibility probe); the same
        draws, sizes and alpha as with colour, since colour changes where nothing can be placed."""
        if alpha_only and any(color_shift):
            raise ValueError("alpha_only sprites have no colour to shift")
        self.rotation = rotation
        self.flip_prob = flip_prob
        self.brightness, self.saturation, self.hue = color_shift
        self.alpha_only = alpha_only

    def sample(self, rng: np.random.Generator) -> ObjectParams:
        """Draw one object's parameters: only the draws the settings need, always in the same order."""
        flip = bool(rng.random() < self.flip_prob) if self.flip_prob > 0 else False
        angle = float(rng.uniform(-self.rotation, self.rotation)) if self.rotation > 0 else 0.0
        if not (self.brightness or self.saturation or self.hue):
            return ObjectParams(flip, angle)
        brightness = float(rng.uniform(max(0.0, 1 - self.brightness), 1 + self.brightness)) if self.brightness else 1.0
        saturation = float(rng.uniform(max(0.0, 1 - self.saturation), 1 + self.saturation)) if self.saturation else 1.0
        hue = float(rng.uniform(-self.hue, self.hue)) if self.hue else 0.0
        return ObjectParams(flip, angle, brightness, saturation, hue, tuple(rng.permutation(3).tolist()))

    def apply(self, rgba: np.ndarray, params: ObjectParams) -> np.ndarray:
        """Colour, then flip and rotation, of premultiplied RGBA uint8 (one warp, alpha included)."""
        # OpenCV's channel copies and flips: numpy's strided equivalents take 5-15x longer at these sizes.
        if (params.brightness, params.saturation, params.hue) != (1.0, 1.0, 0.0):
            rgb = cv2.cvtColor(rgba, cv2.COLOR_RGBA2RGB)
            for operation in params.colour_order:
                if operation == BRIGHTNESS:
                    rgb = adjust_brightness(rgb, params.brightness)
                elif operation == SATURATION:
                    rgb = adjust_saturation(rgb, params.saturation)
                else:
                    rgb = adjust_hue(rgb, params.hue)
            alpha = rgba[..., 3]
            rgba = cv2.cvtColor(rgb, cv2.COLOR_RGB2RGBA)
            rgba[..., 3] = alpha
        if params.flip:
            rgba = cv2.flip(rgba, 1)
        return rotate_to_fit(rgba, params.angle)

    def __call__(self, cutout: Cutout, area_px: float, max_side: int, rng: np.random.Generator) -> Sprite | None:
        """The cut-out scaled so its alpha covers about `area_px` pixels, then augmented with parameters
        drawn from `rng`.

        Returns None when the scaled object would be larger than `max_side` on a side: it cannot be
        placed, and the caller redraws the scene rather than shrinking it (which would couple area
        and number).
        """
        h, w = cutout.shape
        scale = np.sqrt(area_px / cutout.area)
        new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
        if max(new_w, new_h) > max_side:
            return None
        if self.alpha_only:  # flip and rotation treat a single channel as they treat each of four
            return _crop_to_alpha(self.apply(cutout.resized_alpha(new_w, new_h), self.sample(rng)))
        rgba = self.apply(cutout.resized(new_w, new_h), self.sample(rng))
        return _crop_to_alpha(rgba)


def _crop_to_alpha(image: np.ndarray) -> Sprite | None:
    """Tight crop to the non-zero alpha, as float32 (premultiplied RGB in 0..255, alpha in 0..1); `image` is
    RGBA, or alpha alone (a sprite without colour)."""
    alpha = cv2.extractChannel(image, 3) if image.ndim == 3 else image
    x, y, w, h = cv2.boundingRect(alpha)
    if w == 0:
        return None
    weight = alpha[y:y + h, x:x + w].astype(np.float32) * np.float32(1.0 / 255.0)
    if image.ndim == 2:
        return Sprite(None, weight)
    return Sprite(cv2.cvtColor(image[y:y + h, x:x + w], cv2.COLOR_RGBA2RGB).astype(np.float32), weight)
