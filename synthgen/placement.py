"""Placement of sprites on the canvas under occlusion and canvas-boundary constraints.

Objects are stacked in placement order: later ones cover earlier ones. Each placed object keeps its
*visible weight* map, alpha_j * prod_{k later}(1 - alpha_k), which is exactly how much it contributes
to the composited pixels. So its visible area is the sum of that map, the visible areas of all
objects add up to the covered area of the canvas, and soft edges count by their alpha.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from synthgen.transforms import Sprite

# Slack on the occlusion budget in pixels: far below one pixel's overlap of the faintest edge
# (1/512 * 1/512), so --max-occlusion 0 still means no overlap at all.
OCCLUSION_TOLERANCE_PX = 1e-6


@dataclass
class Placed:
    """A sprite at (x, y) (top-left; may be off-canvas) and its bookkeeping."""

    sprite: Sprite
    x: int
    y: int
    window: tuple[int, int, int, int]  # x0, y0, x1, y1: the part inside the canvas
    full: float  # alpha area of the whole object
    inside: float  # alpha area inside the canvas
    hidden: float  # alpha area covered by later objects
    visible: np.ndarray  # visible weight over `window`

    @property
    def visible_area(self) -> float:
        return self.inside - self.hidden


def _index(rect, x: int, y: int):
    """Array index of canvas rectangle `rect` in an array whose top-left sits at canvas (x, y)."""
    x0, y0, x1, y1 = rect
    return slice(y0 - y, y1 - y), slice(x0 - x, x1 - x)


def _intersect(a, b):
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    return (x0, y0, x1, y1) if x0 < x1 and y0 < y1 else None


class Layout:
    """Objects placed so far on a size x size canvas."""

    def __init__(self, size: int, max_occlusion: float, max_outside: float):
        self.size = size
        self.max_occlusion = max_occlusion
        self.max_outside = max_outside
        self.placed: list[Placed] = []

    def try_place(self, sprite: Sprite, rng: np.random.Generator, tries: int) -> bool:
        """Try `tries` random positions; keep the first that respects every constraint."""
        h, w = sprite.shape
        s = self.size
        if self.max_outside == 0:
            if w > s or h > s:
                return False
            xs = rng.integers(0, s - w + 1, tries)
            ys = rng.integers(0, s - h + 1, tries)
        else:
            xs = rng.integers(-w + 1, s, tries)
            ys = rng.integers(-h + 1, s, tries)
        full = sprite.area
        for x, y in zip(xs.tolist(), ys.tolist()):
            window = (max(x, 0), max(y, 0), min(x + w, s), min(y + h, s))
            own = _index(window, x, y)
            inside = full if self.max_outside == 0 else float(sprite.alpha[own].sum(dtype=np.float64))
            if inside < (1 - self.max_outside) * full:
                continue
            hits = self._occlusions(sprite, x, y, window)
            if hits is None:
                continue
            for placed, sprite_index, visible_index, extra in hits:
                placed.visible[visible_index] *= 1.0 - sprite.alpha[sprite_index]
                placed.hidden += extra
            self.placed.append(Placed(sprite, x, y, window, full, inside, 0.0, sprite.alpha[own].copy()))
            return True
        return False

    def _occlusions(self, sprite: Sprite, x: int, y: int, window):
        """What placing the sprite would hide of each object under it; None if a budget breaks."""
        hits = []
        for placed in self.placed:
            overlap = _intersect(window, placed.window)
            if overlap is None:
                continue
            sprite_index = _index(overlap, x, y)
            visible_index = _index(overlap, placed.window[0], placed.window[1])
            extra = float(np.vdot(sprite.alpha[sprite_index], placed.visible[visible_index]))
            if placed.hidden + extra > self.max_occlusion * placed.full + OCCLUSION_TOLERANCE_PX:
                return None
            hits.append((placed, sprite_index, visible_index, extra))
        return hits

    def composite(self, canvas: np.ndarray) -> None:
        """Blend every placed sprite onto a uint8 canvas, in placement order (float math per region)."""
        for placed in self.placed:
            x0, y0, x1, y1 = placed.window
            index = _index(placed.window, placed.x, placed.y)
            region = canvas[y0:y1, x0:x1].astype(np.float32)
            region *= 1.0 - placed.sprite.alpha[index][..., None]
            region += placed.sprite.premul[index]
            region += 0.5
            # premultiplied colour may exceed alpha * 255 by a rounding step: clip before the cast
            canvas[y0:y1, x0:x1] = np.minimum(region, 255.0, out=region).astype(np.uint8)
