"""The compositor: renders one image from its plan (count, seed) and the sources.

Order of draws from the image's generator (fixed, so the stream is reproducible):
1. the target cumulative area fraction (drawn even when N = 0, so later draws do not shift);
2. the background: id, crop offset, horizontal flip;
3. the object ids and their area shares;
4. per attempt: per object its transform's parameters (transforms.ObjectTransform.sample), then its
   candidate positions.
A scene that cannot be placed is redrawn (step 4 again: same N, same target area, same objects) up
to --max-redraws times. It is never shrunk, since shrinking would couple area and number, and its
objects are kept, since drawing others would couple which objects appear with the area. Objects that
can never fit at the top of the area range are left out of the build instead (plan.fits_canvas).
"""
from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable

import cv2
import numpy as np

from common import streams
from synthgen.config import BuildConfig
from synthgen.errors import BadInputError, PlacementError, SynthgenError, UsageError
from synthgen.placement import Layout
from synthgen.plan import (area_from_top, crowded, draw_area_fraction, draw_area_shares, fits_canvas, image_rng,
                           image_seed, keep_more, left_out_because, rotated_extent)
from synthgen.sources import Skipped
from synthgen.success_rate import REFERENCE_IMAGES, probe_tail
from synthgen.transforms import ObjectTransform

STAGES = ("decode", "transform", "placement", "blend", "write")
# An object's crowded scenes are tried only when copies of its worst-case bounding box would cover more of the
# canvas than this (at any count: the copies share the area): sparser scenes are always placed by random positions.
LOOSE_PACKING = 0.3
# A crowded scene of the object must come out often enough that, were all the images of any count above 1 in a
# set of REFERENCE_IMAGES its copies, with their areas drawn from --area-range, fewer than ALLOWED_FAILURES would
# fail every redraw (synthgen.success_rate.probe_tail, judged by lower bounds, so an object that came out by
# luck in a few tries is not kept). Which objects appear must not depend on --n, hence the fixed reference.


class _TooLarge(Exception):
    """An object that cannot fit the canvas at the largest area it can be given: left out of the build."""


def place_scene(config: BuildConfig, rng, cutouts, shares, target: float, transform: ObjectTransform,
                timings: dict | None = None) -> Layout | None:
    """One try at placing a scene's objects: transform and place each, in order; the layout, or None."""
    size = config.size
    layout = Layout(size, config.max_occlusion, config.max_outside)
    max_side = size if config.max_outside == 0 else 2 * size
    for cutout, share in zip(cutouts, shares):
        start = time.perf_counter()
        sprite = transform(cutout, target * share, max_side, rng)
        placed_at = time.perf_counter()
        ok = sprite is not None and layout.try_place(sprite, rng, config.placement_tries)
        if timings is not None:
            timings["transform"] += placed_at - start
            timings["placement"] += time.perf_counter() - placed_at
        if not ok:
            return None
    return layout


class Eligibility:
    """Whether an object can appear at every area and count of a build (plan.py says why it matters):
    it fits the canvas at the largest share it can be given (plan.fits_canvas), and scenes of its copies at
    the top of the area range come out often enough at every count above 1 (not only the largest). The
    probe draws from the object's own stream, fixed by the design, so every process and every --seed
    finds the same; results are cached."""

    def __init__(self, config: BuildConfig):
        self.config = config
        self.known: dict[int, bool] = {}
        # colour never changes where an object fits: the probe skips it, and resamples the alpha alone
        self.transform = ObjectTransform(config.rotation, config.flip_prob, (0.0, 0.0, 0.0), alpha_only=True)

    def __call__(self, k: int, cutout) -> bool:
        if k not in self.known:
            extent, box = rotated_extent(cutout.levels[0][..., 3], self.config.rotation)
            self.known[k] = (fits_canvas(cutout.levels[0][..., 3], cutout.area, self.config, extent)
                             and self._packs(k, cutout, box))
        return self.known[k]

    def _packs(self, k: int, cutout, box: float) -> bool:
        config = self.config
        target = config.area_range[1] * config.size**2
        counts = crowded(config)
        if not counts or box * target / cutout.area <= LOOSE_PACKING * config.size**2:
            return True
        # Every count, not only the largest: two large copies can pack worse than four small ones (with or without
        # overlap; benchmarks/RESULTS.md, "Placement probes: every count"). The largest keeps the stream it had. The
        # smallest first: objects that fail mostly fail there (a fifth less time in the section 4.4 design).
        for count in counts:
            rng = streams.rng(streams.DESIGN, streams.PROBE_OBJECT, k, *(() if count == counts[-1] else (count,)))
            shares = draw_area_shares(rng, count, config.size_jitter)

            def copies_at(share: float) -> list:
                area = area_from_top(config, share) * config.size**2
                return [lambda: place_scene(config, rng, [cutout] * count, shares, area, self.transform) is not None]

            if not probe_tail(copies_at, config.max_redraws, REFERENCE_IMAGES / len(config.counts)).passed:
                return False
        return True


@dataclass
class SceneObject:
    source_id: int
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 on the canvas, x1/y1 exclusive
    full_area: float  # pixels, alpha-weighted
    visible_area: float  # pixels, after occlusion by later objects and the canvas edge


@dataclass
class Scene:
    index: int
    image_seed: int
    count: int
    target_area: float  # pixels
    background_id: int
    image: np.ndarray  # uint8, size x size x 3
    objects: list[SceneObject] = field(default_factory=list)

    @property
    def visible_area(self) -> float:
        return float(sum(o.visible_area for o in self.objects))

    @property
    def full_area(self) -> float:
        return float(sum(o.full_area for o in self.objects))


class Compositor:
    """Renders images of one build; one instance per worker process (it caches decoded sources)."""

    def __init__(self, config: BuildConfig, objects, backgrounds, object_pool, on_bad_input: str = "skip"):
        self.config = config
        self.objects = objects
        self.backgrounds = backgrounds
        self.pool = np.asarray(object_pool, dtype=np.int64)
        self.background_ids = np.arange(len(backgrounds))
        self.on_bad_input = on_bad_input
        self.transform = ObjectTransform(config.rotation, config.flip_prob, config.color_shift)
        self.eligible = Eligibility(config)  # shared between compositors, prefilled from the prepared store
        self.bad_objects: set[int] = set()  # bad inputs, and objects too large to ever fit (in self.too_large)
        self.bad_backgrounds: set[int] = set()
        self.skipped: list[Skipped] = []
        self.too_large: set[int] = set()
        self.timings: dict[str, float] = defaultdict(float)

    # ------------------------------------------------------------------ public

    def render(self, index: int, count: int) -> Scene:
        """Image `index` of the set, with `count` objects (from the count plan)."""
        seed = image_seed(self.config.seed, index)
        return self.compose(image_rng(seed), count, index=index, seed=seed)

    def compose(self, rng: np.random.Generator, count: int, *, index: int = -1, seed: int = 0,
                area_fraction: float | None = None) -> Scene:
        """Compose a scene from a generator; `area_fraction` overrides the drawn target (probes)."""
        size = self.config.size
        drawn = draw_area_fraction(rng, self.config)
        fraction = drawn if area_fraction is None else area_fraction
        target = fraction * size * size if count > 0 else 0.0
        background_id, canvas = self._background(rng)
        ids, cutouts, shares = self._draw_objects(rng, count)
        for _ in range(self.config.max_redraws):
            layout = self._place(rng, cutouts, shares, target)
            if layout is not None:
                break
        else:
            raise PlacementError(
                f"image {index}: could not place {count} object{'s' if count != 1 else ''} covering {fraction:.1%} "
                f"of the {size}x{size} canvas: tried {self.config.max_redraws} draws of the objects' transforms and "
                f"positions (--max-redraws), {self.config.placement_tries} positions per object each "
                "(--placement-tries), "
                f"under --max-occlusion {self.config.max_occlusion:g} and --max-outside {self.config.max_outside:g}. "
                "The upfront probe passed, but this image's objects are harder to pack; image i depends only on "
                "(seed, i), so the same command would stop here again. Lower the top of --area-range, allow more "
                "overlap (--max-occlusion) or edge crossing (--max-outside), or raise --max-redraws, then build "
                "into a new --out (or add --overwrite)", index)
        start = time.perf_counter()
        layout.composite(canvas)
        self.timings["blend"] += time.perf_counter() - start
        objects = [SceneObject(int(k), p.window, p.full, p.visible_area) for k, p in zip(ids, layout.placed)]
        return Scene(index, seed, count, target, background_id, canvas, objects)

    def placing(self, rng: np.random.Generator, count: int, area_fraction: float) -> Callable[[], bool]:
        """The objects of one scene of `count` at `area_fraction`, drawn as the set draws them, and one try at
        placing them per call (the feasibility probe)."""
        target = area_fraction * self.config.size**2
        _, cutouts, shares = self._draw_objects(rng, count)
        return lambda: self._place(rng, cutouts, shares, target) is not None

    # ------------------------------------------------------------------ steps

    def _background(self, rng) -> tuple[int, np.ndarray]:
        size = self.config.size
        k, image = self._draw_usable(rng, self.background_ids, self.bad_backgrounds,
                                     lambda i: self.backgrounds.load(i, size), "background")
        h, w = image.shape[:2]
        x = int(rng.integers(0, w - size + 1))
        y = int(rng.integers(0, h - size + 1))
        crop = image[y:y + size, x:x + size]
        # Always a copy: blending must never touch the cached background. OpenCV's flip writes one 25x
        # faster than numpy's copy of a reversed view (8 against 180 us).
        return k, cv2.flip(crop, 1) if rng.random() < 0.5 else crop.copy()

    def _draw_objects(self, rng, count: int):
        """The scene's objects (ids and decoded cut-outs) and their shares of the target area."""
        size = self.config.size
        n_draws = min(count, 1) if self.config.same_object else count
        drawn = [self._draw_usable(rng, self.pool, self.bad_objects, lambda i: self._load_object(i, size), "object")
                 for _ in range(n_draws)]
        if self.config.same_object:
            drawn = drawn * count
        return [k for k, _ in drawn], [cutout for _, cutout in drawn], draw_area_shares(rng, count,
                                                                                        self.config.size_jitter)

    def _load_object(self, k: int, size: int):
        cutout = self.objects.load(k, size)
        if not self.eligible(k, cutout):
            raise _TooLarge(k)
        return cutout

    def _place(self, rng, cutouts, shares, target: float) -> Layout | None:
        return place_scene(self.config, rng, cutouts, shares, target, self.transform, self.timings)

    def _draw_usable(self, rng, candidates: np.ndarray, bad: set, load, what: str):
        """Draw ids from `candidates` until one loads; bad files are reported once and redrawn, objects
        too large to ever fit are set aside and redrawn (the same draws whichever worker knows it)."""
        while True:
            if len(bad) >= len(candidates):  # bad ids always come from the candidates
                if what == "object" and self.too_large:
                    raise UsageError(
                        f"no object can appear at every area and count: {len(self.too_large)} of the "
                        f"{len(candidates)} objects are each {left_out_because(self.config)}"
                        + (", the rest are bad inputs" if len(bad) > len(self.too_large) else "")
                        + f". To keep some, {keep_more(self.config)}")
                raise SynthgenError(f"no usable {what} left: all {len(candidates)} candidates are bad inputs "
                                    "(see the skipped lines above)")
            k = int(candidates[rng.integers(len(candidates))])
            if k in bad:
                continue
            start = time.perf_counter()
            try:
                return k, load(k)
            except BadInputError as error:
                if self.on_bad_input == "fail":
                    raise
                bad.add(k)
                self.skipped.append(Skipped(error.path, error.reason))
            except _TooLarge:
                bad.add(k)
                self.too_large.add(k)
            finally:
                self.timings["decode"] += time.perf_counter() - start
