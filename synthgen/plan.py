"""The scene plan: what each image will contain, as a pure function of (seed, image index).

* Counts are stratified in blocks: image indices [b*k, (b+1)*k), for k count values, hold each value
  exactly once, in an order drawn from (seed, block). So a set is balanced exactly (to within one
  image per value when k does not divide n), and image i never depends on --n or on the workers.
* Every other draw of image i comes from one generator seeded by `image_seed(seed, i)`, in a fixed
  order: target area, background, then objects (see compositor.compose_scene).
* The target cumulative area is drawn independently of the count, so log N and log A are
  uncorrelated by construction; each object's share of it is jittered, then renormalised so the
  shares add up to the target exactly.
* Which objects appear is independent of the area too. An object too large to fit the canvas at the
  largest area any object can be given (an elongated one, at the top of a wide --area-range) is left
  out of the build altogether (`fits_canvas`), and so is one of which the crowded scenes (copies of the
  object at the top of the range, at every count above 1) cannot be placed (the compositor's packing
  probe). Were they only redrawn when their scene came out large, which objects appear would
  depend on the area, a confound in every area-versus-number analysis. A scene that cannot be placed
  keeps its objects and redraws their transforms and positions.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from common import streams
from synthgen.config import MAX_SIZE, BuildConfig


def image_seed(seed: int, index: int) -> int:
    """The 64-bit seed of image `index`; with the build config it reproduces the image alone."""
    return streams.seed64(seed, streams.IMAGE, index)


def image_rng(seed_of_image: int) -> np.random.Generator:
    return np.random.default_rng(seed_of_image)


def stratified_cells(seed: int, k: int, first: int, n: int) -> np.ndarray:
    """Cells 0..k-1 of images first .. first+n-1: every block of k consecutive images holds each cell
    once, in an order drawn from (seed, block). Balanced exactly, and image i never depends on n."""
    out = np.empty(n, dtype=np.int64)
    for block in range(first // k, (first + n - 1) // k + 1):
        order = streams.rng(seed, streams.COUNTS, block).permutation(k)
        lo, hi = max(first, block * k), min(first + n, (block + 1) * k)
        out[lo - first:hi - first] = order[lo - block * k:hi - block * k]
    return out


def counts_for(config: BuildConfig, first: int, n: int) -> np.ndarray:
    """Object counts of images first .. first+n-1 under the block-stratified plan."""
    values = np.asarray(config.counts, dtype=np.int64)
    return values[stratified_cells(config.seed, len(values), first, n)]


def draw_area_fraction(rng: np.random.Generator, config: BuildConfig) -> float:
    """Target cumulative object area as a fraction of the canvas, independent of the count."""
    lo, hi = config.area_range
    if config.area_dist == "loguniform":
        return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    return float(rng.uniform(lo, hi))


def area_from_top(config: BuildConfig, share: float) -> float:
    """The area fraction that a `share` of the images exceed (draw_area_fraction's quantile from the top)."""
    lo, hi = config.area_range
    if config.area_dist == "loguniform":
        return float(hi * (lo / hi) ** share)
    return float(hi - share * (hi - lo))


def draw_area_shares(rng: np.random.Generator, count: int, jitter: float) -> np.ndarray:
    """Each object's share of the cumulative area: 1/count each, jittered by +-jitter, summing to 1."""
    weights = 1.0 + jitter * rng.uniform(-1.0, 1.0, count)
    return weights / weights.sum()


def object_pool_order(n_objects: int, seed: int) -> np.ndarray:
    """The order in which objects are tried when --source-objects restricts the set to K of them."""
    return streams.rng(seed, streams.OBJECT_POOL).permutation(n_objects)


MIN_OBJECT_PIXELS = 4  # an object given less area than a 2x2 square is a speck, not something one can count


def smallest_object_share(config) -> float:
    """The smallest area (a fraction of the canvas) any one object can be given: the bottom of --area-range,
    in the scenes with the most objects, with the least favourable size jitter."""
    most = max(config.counts)
    j = config.size_jitter
    return config.area_range[0] * (1 - j) / ((1 - j) + (most - 1) * (1 + j)) if most else 1.0


def too_small_problem(config) -> str | None:
    """Why the smallest objects of a build would be too small to count, and what to change; None if they are
    not."""
    share = smallest_object_share(config)
    pixels = share * config.size**2
    if pixels >= MIN_OBJECT_PIXELS:
        return None
    lowest = MIN_OBJECT_PIXELS / config.size**2 * (config.area_range[0] / share)  # a ratio first: no underflow
    side = math.sqrt(MIN_OBJECT_PIXELS / share)  # infinite for a share below what a float can divide by
    larger = f", or --size to {math.ceil(side)} or more" if side <= MAX_SIZE else ""
    return (f"--area-range {config.area_range[0]:g}-{config.area_range[1]:g} at --size {config.size}: the smallest "
            f"object (the bottom of the range shared by {max(config.counts)} objects, --size-jitter "
            f"{config.size_jitter:g}) would cover {pixels:.2g} px, less than the {MIN_OBJECT_PIXELS} px of a 2x2 "
            f"square: a speck, not an object one can count. Raise the bottom of --area-range to {lowest:.2g} or "
            f"more{larger}")


def crowded(config) -> list[int]:
    """The counts at which an object's copies are probed (compositor.Eligibility): those above 1, ascending."""
    return sorted(c for c in config.counts if c > 1)


def crowded_counts(config) -> str:
    """crowded(config) for messages: "2 to 4", or "" when no count is above 1."""
    counts = crowded(config)
    return "" if not counts else str(counts[0]) if len(counts) == 1 else f"{counts[0]} to {counts[-1]}"


def left_out_because(config) -> str:
    """Why an object cannot appear in the design (compositor.Eligibility), as every message and the manifest say it."""
    fit = (f"too large to fit the {config.size}x{config.size} canvas at {largest_object_share(config):.0%} of it "
           "(the largest area an object can be given)")
    copies = crowded_counts(config)
    if not copies:
        return fit
    return (f"{fit}, or placed too rarely as {copies} copies at {config.area_range[1]:.0%} (--max-occlusion "
            f"{config.max_occlusion:g}, --max-redraws {config.max_redraws})")


def keep_more(config) -> str:
    """The options that let more objects appear, for the messages that give left_out_because."""
    fit = "lower the top of --area-range", "let objects cross the canvas edge (--max-outside)"
    options = fit + (("allow more overlap (--max-occlusion)", "raise --max-redraws") if crowded(config) else ())
    return f"{', '.join(options[:-1])} or {options[-1]}"


def largest_object_share(config) -> float:
    """The largest area (a fraction of the canvas) any one object can be given: the top of --area-range,
    in the scenes with the fewest objects, with the most favourable size jitter."""
    fewest = min((c for c in config.counts if c > 0), default=1)
    j = config.size_jitter
    return config.area_range[1] * (1 + j) / ((1 + j) + (fewest - 1) * (1 - j))


def rotated_extent(alpha: np.ndarray, rotation: float) -> tuple[float, float]:
    """The largest side and the largest bounding-box area of an object's outline (pixels of its cut-out)
    over the rotations in [-rotation, rotation] degrees."""
    contours, _ = cv2.findContours((alpha > 0).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    centres = np.concatenate([c.reshape(-1, 2) for c in contours])  # the outline's pixels: enough for the hull
    # The hull of the pixels' squares is the hull of the corners of the centres' hull vertices (a Minkowski
    # sum with the unit square): the same hull from a tenth of the points, 3x faster.
    vertices = cv2.convexHull(centres).reshape(-1, 2)
    corners = np.concatenate([vertices + (dx, dy) for dx in (0, 1) for dy in (0, 1)])
    return hull_extent(cv2.convexHull(corners.astype(np.float32)).reshape(-1, 2).astype(np.float64), rotation)


def hull_extent(hull: np.ndarray, rotation: float) -> tuple[float, float]:
    """The largest side and the largest area of the bounding box of the points `hull` (n, 2) turned through 33
    angles in [-rotation, rotation] degrees."""
    angles = np.radians(np.linspace(-rotation, rotation, 33))
    cos, sin = np.cos(angles), np.sin(angles)
    width = np.ptp(hull[:, :1] * cos + hull[:, 1:] * sin, axis=0)
    height = np.ptp(-hull[:, :1] * sin + hull[:, 1:] * cos, axis=0)
    return float(max(width.max(), height.max())), float((width * height).max())


def fits_canvas(alpha: np.ndarray, area: float, config, extent: float | None = None) -> bool:
    """Whether an object (its alpha map and alpha area in pixels) fits the canvas at the largest share of
    it the object can be given, under the worst rotation allowed (`extent`: its rotated_extent, if known)."""
    extent = rotated_extent(alpha, config.rotation)[0] if extent is None else extent
    scale = math.sqrt(largest_object_share(config) * config.size**2 / max(area, 1e-9))
    # crossing the edges, an object must keep (1 - max_outside) of itself inside along its longer side
    return extent * scale <= min(2 * config.size, config.size / (1 - config.max_outside))
