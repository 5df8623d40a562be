"""Per-object transforms: scale a cut-out to its share of the target area, then colour-shift, flip
and rotate it with albumentations.

Everything runs on premultiplied RGBA, so resampling near a soft mask edge never
mixes in the colour of pixels outside the object. The colour shift is ColorJitter's brightness,
saturation and hue, each linear in the pixel value, so it is exact on premultiplied colour too.
albumentations draws from the image's own generators (`use_streams`), never from global state.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import albumentations as A  # synthgen/__init__ has already disabled its network update check
import cv2
import numpy as np

from synthgen.sources import Cutout


@dataclass
class Sprite:
    """A transformed object ready to paste: premultiplied RGB and alpha, float32, tightly cropped."""

    premul: np.ndarray
    alpha: np.ndarray

    @property
    def area(self) -> float:
        return float(self.alpha.sum(dtype=np.float64))

    @property
    def shape(self) -> tuple[int, int]:
        return self.alpha.shape


class ObjectTransform:
    """Scaling to an area, colour shift, random horizontal flip, small rotation."""

    def __init__(self, rotation: float, flip_prob: float, color_shift: tuple[float, float, float]):
        brightness, saturation, hue = color_shift
        self.colour = None
        if any(color_shift):
            self.colour = A.Compose([A.ColorJitter(brightness=brightness, contrast=0, saturation=saturation,
                                                   hue=hue, p=1.0)])
        geometric = []
        if flip_prob > 0:
            geometric.append(A.HorizontalFlip(p=flip_prob))
        if rotation > 0:
            geometric.append(A.Affine(rotate=(-rotation, rotation), fit_output=True, interpolation=cv2.INTER_LINEAR,
                                      border_mode=cv2.BORDER_CONSTANT, fill=0, p=1.0))
        # Geometry runs on the 4-channel premultiplied RGBA as one image: one warp, alpha included.
        self.geometry = A.Compose(geometric) if geometric else None

    def use_streams(self, rng: np.random.Generator, py_random: random.Random) -> None:
        """Make every albumentations draw come from this image's generators."""
        for compose in (self.colour, self.geometry):
            if compose is not None:
                compose.set_random_state(rng, py_random)

    def __call__(self, cutout: Cutout, area_px: float, max_side: int) -> Sprite | None:
        """The cut-out scaled so its alpha covers about `area_px` pixels, then augmented.

        Returns None when the scaled object would be larger than `max_side` on a side: it cannot be
        placed, and the caller redraws the scene rather than shrinking it (which would couple area
        and number).
        """
        h, w = cutout.shape
        scale = np.sqrt(area_px / cutout.area)
        new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
        if max(new_w, new_h) > max_side:
            return None
        rgba = cutout.resized(new_w, new_h)
        if self.colour is not None:
            rgb = self.colour(image=np.ascontiguousarray(rgba[..., :3]))["image"]
            rgba = np.dstack([rgb, rgba[..., 3]])
        if self.geometry is not None:
            rgba = self.geometry(image=rgba)["image"]
        return _crop_to_alpha(rgba[..., :3], rgba[..., 3])


def _crop_to_alpha(premul: np.ndarray, alpha: np.ndarray) -> Sprite | None:
    """Tight crop to the non-zero alpha, as float32 (premultiplied RGB in 0..255, alpha in 0..1)."""
    rows = np.flatnonzero(alpha.any(axis=1))
    cols = np.flatnonzero(alpha.any(axis=0))
    if rows.size == 0:
        return None
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    return Sprite(premul[y0:y1, x0:x1].astype(np.float32), alpha[y0:y1, x0:x1].astype(np.float32) * (1.0 / 255.0))
