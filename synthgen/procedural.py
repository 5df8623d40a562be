"""The embedded default source: procedural objects and backgrounds, made by code, no download.

Objects are varied shapes (ellipses, polygons, stars, blobs, rounded rectangles, rings, crescents)
with textures (stripes, checks, dots, noise, gradients) and shading, and anti-aliased masks.
Backgrounds are textured scenes (landscapes, fractal noise, tiles, bokeh, grain). Each item is a pure
function of its id, so the default source is as reproducible as a folder of files.
"""
from __future__ import annotations

import functools

import cv2
import numpy as np

from common.streams import PROCEDURAL
from synthgen.masks import MaskRule
from synthgen.sources import CachedSource, Cutout, cutout_from_arrays

N_OBJECTS = 240
N_BACKGROUNDS = 600
GENERATION_SIDE = 192  # objects are drawn at this size, then shrunk to the build's needs
SHAPES = ("ellipse", "polygon", "star", "blob", "rounded_rect", "ring", "crescent")
PATTERNS = ("solid", "stripes", "checker", "dots", "noise", "gradient")
SCENES = ("landscape", "noise", "tiles", "bokeh", "grain")


def _hsv_colour(rng, sat=(0.4, 1.0), val=(0.4, 1.0)) -> np.ndarray:
    hsv = np.uint8([[[rng.integers(0, 180), rng.uniform(*sat) * 255, rng.uniform(*val) * 255]]])
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def smooth_noise(rng, h: int, w: int, cells: int) -> np.ndarray:
    """Value noise in [0, 1]: a random grid of about `cells` cells upsampled smoothly."""
    gh, gw = max(2, cells), max(2, round(cells * w / h))
    grid = rng.random((gh, gw), dtype=np.float32)
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC).clip(0, 1)


def fractal_noise(rng, h: int, w: int, base_cells: int = 3, octaves: int = 4) -> np.ndarray:
    out = np.zeros((h, w), np.float32)
    total = 0.0
    for octave in range(octaves):
        amplitude = 0.5**octave
        out += amplitude * smooth_noise(rng, h, w, base_cells * 2**octave)
        total += amplitude
    out /= total
    return (out - out.min()) / max(1e-6, float(out.max() - out.min()))


def _shape_mask(rng, side: int) -> np.ndarray:
    """An anti-aliased shape mask (uint8), drawn at 4x and area-averaged down."""
    big = side * 4
    canvas = np.zeros((big, big), np.uint8)
    c = big / 2
    r = big * 0.42
    aspect = rng.uniform(0.55, 1.0)
    angle = rng.uniform(0, 2 * np.pi)
    shape = SHAPES[rng.integers(len(SHAPES))]

    def contour(radius_fn, n=256):
        theta = np.linspace(0, 2 * np.pi, n, endpoint=False)
        rad = radius_fn(theta)
        x, y = rad * np.cos(theta), rad * np.sin(theta) * aspect
        xr = x * np.cos(angle) - y * np.sin(angle)
        yr = x * np.sin(angle) + y * np.cos(angle)
        return np.stack([xr + c, yr + c], axis=1).round().astype(np.int32)

    if shape == "ellipse":
        cv2.ellipse(canvas, (round(c), round(c)), (round(r), round(r * aspect)), np.degrees(angle), 0, 360, 255, -1)
    elif shape == "polygon":
        k = int(rng.integers(3, 9))
        sector = 2 * np.pi / k  # a regular k-gon: the distance from the centre to its edge at angle t
        cv2.fillPoly(canvas, [contour(lambda t: r * np.cos(np.pi / k) / np.cos((t % sector) - np.pi / k))], 255)
    elif shape == "star":
        k = int(rng.integers(4, 8))
        inner = rng.uniform(0.4, 0.7)
        pts = [(r if i % 2 == 0 else r * inner) for i in range(2 * k)]
        theta = np.arange(2 * k) * np.pi / k
        x, y = np.array(pts) * np.cos(theta), np.array(pts) * np.sin(theta) * aspect
        poly = np.stack([x * np.cos(angle) - y * np.sin(angle) + c, x * np.sin(angle) + y * np.cos(angle) + c], 1)
        cv2.fillPoly(canvas, [poly.round().astype(np.int32)], 255)
    elif shape == "blob":
        harmonics = rng.normal(0, 0.12, 5) / np.arange(1, 6) ** 0.5
        phases = rng.uniform(0, 2 * np.pi, 5)
        cv2.fillPoly(canvas, [contour(lambda t: r * 0.8 * (1 + sum(
            a * np.cos((i + 2) * t + p) for i, (a, p) in enumerate(zip(harmonics, phases)))))], 255)
    elif shape == "rounded_rect":
        exponent = rng.uniform(3, 8)  # a superellipse: between an ellipse and a rectangle
        cv2.fillPoly(canvas, [contour(lambda t: r * (np.abs(np.cos(t)) ** exponent
                                                     + np.abs(np.sin(t)) ** exponent) ** (-1 / exponent))], 255)
    elif shape == "ring":
        cv2.ellipse(canvas, (round(c), round(c)), (round(r), round(r * aspect)), np.degrees(angle), 0, 360, 255, -1)
        hole = rng.uniform(0.35, 0.6)
        cv2.ellipse(canvas, (round(c), round(c)), (round(r * hole), round(r * aspect * hole)), np.degrees(angle),
                    0, 360, 0, -1)
    else:  # crescent
        cv2.circle(canvas, (round(c), round(c)), round(r), 255, -1)
        shift = r * rng.uniform(0.35, 0.6)
        cv2.circle(canvas, (round(c + shift * np.cos(angle)), round(c + shift * np.sin(angle))), round(r * 0.85), 0, -1)
    return cv2.resize(canvas, (side, side), interpolation=cv2.INTER_AREA)


def _ramp(n: int) -> np.ndarray:
    """0, 1/n, ..., (n-1)/n in float32: one axis of a pixel grid scaled to [0, 1)."""
    return np.arange(n, dtype=np.float32) / n


def _rgb(planes) -> np.ndarray:
    """Three float colour planes as one RGB uint8 image, clipped to [0, 255] and truncated."""
    return cv2.merge([np.clip(plane, 0, 255).astype(np.uint8) for plane in planes])


# The images below are computed one colour plane at a time, with rows and columns as (n, 1) and (1, n)
# arrays where a term varies along one axis only. numpy's arithmetic on whole (h, w) planes runs in SIMD;
# on (h, w, 3) arrays broadcast from (3,) colours it runs 3 elements at a time, and took 4-5 times as long.
# Every pixel goes through the same float operations, in the same order and precision, as when the images
# were computed on (h, w, 3) arrays, so the images are the same bit for bit (tests/test_procedural.py pins
# them): the default source of every set built before stays what it was.


def _texture(rng, side: int) -> np.ndarray:
    """A textured, shaded object surface as RGB uint8."""
    yy, xx = _ramp(side)[:, None], _ramp(side)[None, :]
    c1, c2 = _hsv_colour(rng), _hsv_colour(rng)
    pattern = PATTERNS[rng.integers(len(PATTERNS))]
    theta = rng.uniform(0, np.pi)
    u = xx * np.cos(theta) + yy * np.sin(theta)
    if pattern == "solid":
        t = np.zeros((side, side), np.float32)
    elif pattern == "stripes":
        t = (np.sin(u * 2 * np.pi * rng.uniform(3, 9)) > 0).astype(np.float32)
        t = cv2.GaussianBlur(t, (0, 0), 0.8)
    elif pattern == "checker":
        f = rng.uniform(3, 8)
        v = -xx * np.sin(theta) + yy * np.cos(theta)
        t = ((np.floor(u * f) + np.floor(v * f)) % 2).astype(np.float32)
    elif pattern == "dots":
        f = rng.uniform(4, 9)
        t = ((np.sin(u * f * np.pi * 2) * np.sin((-xx * np.sin(theta) + yy * np.cos(theta)) * f * np.pi * 2)) > 0.5)
        t = cv2.GaussianBlur(t.astype(np.float32), (0, 0), 1.0)
    elif pattern == "noise":
        t = fractal_noise(rng, side, side, base_cells=4, octaves=3)
    else:  # gradient
        t = u / max(1e-6, float(u.max()))
    # Lit from a random direction, so objects read as solid things rather than flat stickers.
    lx, ly = rng.uniform(0.2, 0.8, 2)
    shade = 1.15 - 0.55 * np.sqrt((xx - lx) ** 2 + (yy - ly) ** 2)
    grain = 1 + 0.06 * (smooth_noise(rng, side, side, side // 3) - 0.5)
    light = shade * grain
    rest = 1 - t
    return _rgb((c1[c] * rest + c2[c] * t) * light for c in range(3))


@functools.lru_cache(maxsize=N_OBJECTS)
def procedural_object(k: int, side: int = GENERATION_SIDE) -> tuple[np.ndarray, np.ndarray]:
    """Object k as (RGB uint8, alpha uint8), both side x side; read-only (memoised per process)."""
    rng = np.random.default_rng([PROCEDURAL, 1, k])
    alpha = _shape_mask(rng, side)
    rgb = _texture(rng, side)
    rgb.flags.writeable = alpha.flags.writeable = False
    return rgb, alpha


def procedural_background(k: int, size: int) -> np.ndarray:
    """Background k as RGB uint8 with shorter side `size` and a wider aspect (up to 3:2)."""
    rng = np.random.default_rng([PROCEDURAL, 2, k])
    h = size
    w = round(size * rng.uniform(1.0, 1.5))
    yy, xx = _ramp(h)[:, None], _ramp(w)[None, :]
    scene = SCENES[rng.integers(len(SCENES))]
    muted = dict(sat=(0.1, 0.55), val=(0.35, 0.9))
    if scene == "landscape":
        sky_top, sky_low = _hsv_colour(rng, (0.2, 0.6), (0.6, 1.0)), _hsv_colour(rng, (0.05, 0.3), (0.75, 1.0))
        ground = _hsv_colour(rng, **muted)
        hills = cv2.resize(rng.random((1, 6), dtype=np.float32), (w, 1), interpolation=cv2.INTER_CUBIC)[0]
        ridge = 0.35 + 0.3 * rng.random() + 0.15 * (hills - 0.5)
        lit = 0.7 + 0.5 * fractal_noise(rng, h, w, base_cells=6)
        depth = 0.8 + 0.3 * yy
        below = yy > ridge[None, :]
        planes = [np.where(below, ground[c] * lit * depth, sky_top[c] * (1 - yy) + sky_low[c] * yy)
                  for c in range(3)]
    elif scene == "noise":
        palette = np.stack([_hsv_colour(rng, **muted) for _ in range(3)])
        t = fractal_noise(rng, h, w, base_cells=int(rng.integers(2, 6)))
        idx = np.clip(t * 2, 0, 1.999)
        lo = np.floor(idx).astype(int)
        frac = idx - lo
        rest = 1 - frac
        planes = [palette[lo, c] * rest + palette[lo + 1, c] * frac for c in range(3)]
    elif scene == "tiles":
        tile = rng.uniform(size / 10, size / 4)
        base = _hsv_colour(rng, **muted)
        rows = np.floor(yy * h / (tile * 0.5))
        offset = (rows % 2) * tile * 0.5
        cols = np.floor((xx * w + offset) / tile)
        jitter = np.random.default_rng([PROCEDURAL, 3, k]).uniform(0.75, 1.2,
                                                                   (int(rows.max()) + 2, int(cols.max()) + 2))
        shade = jitter[rows.astype(int), cols.astype(int)]
        mortar = ((yy * h % (tile * 0.5)) < 1.5) | (((xx * w + offset) % tile) < 1.5)
        mortar_colour = base * 0.45
        relief = 0.85 + 0.3 * fractal_noise(rng, h, w, base_cells=8)
        planes = []
        for c in range(3):
            plane = base[c] * shade
            plane[mortar] = mortar_colour[c]
            plane *= relief
            planes.append(plane)
    elif scene == "bokeh":
        top, bottom = _hsv_colour(rng, **muted), _hsv_colour(rng, **muted)
        lights = np.zeros((h, w, 3), np.float32)
        for _ in range(int(rng.integers(10, 30))):
            centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            # below size 32 the radius range would be empty; from 32 on the draws are those of every earlier build
            radius = int(rng.integers(3, max(size // 8, 4)))
            cv2.circle(lights, centre, radius, _hsv_colour(rng).tolist(), -1)
        glow = 0.5 * cv2.GaussianBlur(lights, (0, 0), size / 60)
        planes = [top[c] * (1 - yy) + bottom[c] * yy + glow[..., c] for c in range(3)]
    else:  # grain: wood, curtains, fields
        base, dark = _hsv_colour(rng, **muted), _hsv_colour(rng, (0.2, 0.6), (0.2, 0.5))
        theta = rng.uniform(0, np.pi)
        warp = fractal_noise(rng, h, w, base_cells=3) * rng.uniform(2, 6)
        u = (xx * np.cos(theta) + yy * np.sin(theta)) * rng.uniform(6, 20) + warp
        t = 0.5 + 0.5 * np.sin(u * 2 * np.pi)
        rest = 1 - t
        planes = [base[c] * rest + dark[c] * t for c in range(3)]
    return _rgb(planes)


class ProceduralObjects(CachedSource):
    """The embedded default object source."""

    kind = "procedural"

    def __init__(self, n: int = N_OBJECTS, cache_bytes: int = 256 << 20, rule: MaskRule = MaskRule()):
        super().__init__(cache_bytes)
        self.n = n
        self.rule = rule

    def __len__(self):
        return self.n

    def decode(self, k: int, size: int) -> Cutout:
        rgb, alpha = procedural_object(k)
        return cutout_from_arrays(rgb, alpha, size, self.mask_path(k), self.rule)

    def mask_path(self, k: int) -> str:
        return f"procedural object {k}"


class ProceduralBackgrounds(CachedSource):
    """The embedded default background source."""

    kind = "procedural"

    def __init__(self, n: int = N_BACKGROUNDS, cache_bytes: int = 256 << 20):
        super().__init__(cache_bytes)
        self.n = n

    def __len__(self):
        return self.n

    def decode(self, k: int, size: int) -> np.ndarray:
        return procedural_background(k, size)
