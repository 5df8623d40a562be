"""The compositor: renders one image from its plan (count, seed) and the sources.

Order of draws from the image's generator (fixed, so the stream is reproducible):
1. the target cumulative area fraction (drawn even when N = 0, so later draws do not shift);
2. the background: id, crop offset, horizontal flip;
3. a seed for albumentations' Python-side draws;
4. per attempt: the object ids, their area shares, then per object its colour and geometric
   transform and candidate positions.
A scene that cannot be placed is redrawn (step 4 again, same N and same target area) up to
--max-redraws times; it is never shrunk, since shrinking would couple area and number.
"""
from __future__ import annotations

import random
import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from synthgen.config import BuildConfig
from synthgen.errors import BadInputError, PlacementError, SynthgenError
from synthgen.placement import Layout
from synthgen.plan import draw_area_fraction, draw_area_shares, image_rng, image_seed
from synthgen.sources import Skipped
from synthgen.transforms import ObjectTransform

STAGES = ("decode", "transform", "placement", "blend", "write")


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
        self.bad_objects: set[int] = set()
        self.bad_backgrounds: set[int] = set()
        self.skipped: list[Skipped] = []
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
        self.transform.use_streams(rng, random.Random(int(rng.integers(2**63))))
        for _ in range(self.config.max_redraws):
            attempt = self._attempt(rng, count, target)
            if attempt is not None:
                layout, ids = attempt
                break
        else:
            raise PlacementError(
                f"image {index}: could not place {count} object{'s' if count != 1 else ''} covering {fraction:.1%} "
                f"of the {size}x{size} canvas: tried {self.config.max_redraws} draws of the objects "
                f"(--max-redraws), {self.config.placement_tries} positions per object each (--placement-tries), "
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

    # ------------------------------------------------------------------ steps

    def _background(self, rng) -> tuple[int, np.ndarray]:
        size = self.config.size
        k, image = self._draw_usable(rng, self.background_ids, self.bad_backgrounds,
                                     lambda i: self.backgrounds.load(i, size), "background")
        h, w = image.shape[:2]
        x = int(rng.integers(0, w - size + 1))
        y = int(rng.integers(0, h - size + 1))
        crop = image[y:y + size, x:x + size]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        return k, crop.copy(order="C")  # always a copy: blending must never touch the cached background

    def _attempt(self, rng, count: int, target: float):
        """One try at a scene: draw objects, transform and place them; (layout, ids) or None."""
        size = self.config.size
        n_draws = min(count, 1) if self.config.same_object else count
        drawn = [self._draw_usable(rng, self.pool, self.bad_objects, lambda i: self.objects.load(i, size), "object")
                 for _ in range(n_draws)]
        if self.config.same_object:
            drawn = drawn * count
        ids = [k for k, _ in drawn]
        shares = draw_area_shares(rng, count, self.config.size_jitter)
        layout = Layout(size, self.config.max_occlusion, self.config.max_outside)
        max_side = size if self.config.max_outside == 0 else 2 * size
        for (_, cutout), share in zip(drawn, shares):
            start = time.perf_counter()
            sprite = self.transform(cutout, target * share, max_side)
            placed_at = time.perf_counter()
            self.timings["transform"] += placed_at - start
            ok = sprite is not None and layout.try_place(sprite, rng, self.config.placement_tries)
            self.timings["placement"] += time.perf_counter() - placed_at
            if not ok:
                return None
        return layout, ids

    def _draw_usable(self, rng, candidates: np.ndarray, bad: set, load, what: str):
        """Draw ids from `candidates` until one loads; bad files are reported once and redrawn."""
        while True:
            if len(bad) >= len(candidates):  # bad ids always come from the candidates
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
            finally:
                self.timings["decode"] += time.perf_counter() - start
