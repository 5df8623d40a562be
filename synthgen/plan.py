"""The scene plan: what each image will contain, as a pure function of (seed, image index).

* Counts are stratified in blocks: image indices [b*k, (b+1)*k), for k count values, hold each value
  exactly once, in an order drawn from (seed, block). So a set is balanced exactly (to within one
  image per value when k does not divide n), and image i never depends on --n or on the workers.
* Every other draw of image i comes from one generator seeded by `image_seed(seed, i)`, in a fixed
  order: target area, background, then objects (see compositor.compose_scene).
* The target cumulative area is drawn independently of the count, so log N and log A are
  uncorrelated by construction; each object's share of it is jittered, then renormalised so the
  shares add up to the target exactly.
"""
from __future__ import annotations

import numpy as np

from common import streams
from synthgen.config import BuildConfig


def image_seed(seed: int, index: int) -> int:
    """The 64-bit seed of image `index`; with the build config it reproduces the image alone."""
    return streams.seed64(seed, streams.IMAGE, index)


def image_rng(seed_of_image: int) -> np.random.Generator:
    return np.random.default_rng(seed_of_image)


def counts_for(config: BuildConfig, first: int, n: int) -> np.ndarray:
    """Object counts of images first .. first+n-1 under the block-stratified plan."""
    values = np.asarray(config.counts, dtype=np.int64)
    k = len(values)
    out = np.empty(n, dtype=np.int64)
    for block in range(first // k, (first + n - 1) // k + 1):
        order = streams.rng(config.seed, streams.COUNTS, block).permutation(k)
        lo, hi = max(first, block * k), min(first + n, (block + 1) * k)
        out[lo - first:hi - first] = values[order[lo - block * k:hi - block * k]]
    return out


def draw_area_fraction(rng: np.random.Generator, config: BuildConfig) -> float:
    """Target cumulative object area as a fraction of the canvas, independent of the count."""
    lo, hi = config.area_range
    if config.area_dist == "loguniform":
        return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    return float(rng.uniform(lo, hi))


def draw_area_shares(rng: np.random.Generator, count: int, jitter: float) -> np.ndarray:
    """Each object's share of the cumulative area: 1/count each, jittered by +-jitter, summing to 1."""
    weights = 1.0 + jitter * rng.uniform(-1.0, 1.0, count)
    return weights / weights.sum()


def object_pool_order(n_objects: int, seed: int) -> np.ndarray:
    """The order in which objects are tried when --source-objects restricts the set to K of them."""
    return streams.rng(seed, streams.OBJECT_POOL).permutation(n_objects)
