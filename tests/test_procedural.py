"""The embedded default source: its images are computed one colour plane at a time for speed, and must stay
what the straightforward (h, w, 3) formulas below give, bit for bit, or sets built before would change."""
import cv2
import numpy as np
import pytest

from common.streams import PROCEDURAL
from synthgen.procedural import (N_BACKGROUNDS, PATTERNS, SCENES, _hsv_colour, _texture, fractal_noise,
                                 procedural_background, procedural_object, smooth_noise)


def reference_texture(rng, side: int):
    """The object surface as it was written first, on (h, w, 3) arrays; returns it and its pattern."""
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / side
    c1, c2 = _hsv_colour(rng), _hsv_colour(rng)
    pattern = PATTERNS[rng.integers(len(PATTERNS))]
    theta = rng.uniform(0, np.pi)
    u = xx * np.cos(theta) + yy * np.sin(theta)
    if pattern == "solid":
        t = np.zeros_like(xx)
    elif pattern == "stripes":
        t = cv2.GaussianBlur((np.sin(u * 2 * np.pi * rng.uniform(3, 9)) > 0).astype(np.float32), (0, 0), 0.8)
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
    else:
        t = u / max(1e-6, float(u.max()))
    rgb = c1 * (1 - t[..., None]) + c2 * t[..., None]
    lx, ly = rng.uniform(0.2, 0.8, 2)
    shade = 1.15 - 0.55 * np.sqrt((xx - lx) ** 2 + (yy - ly) ** 2)
    grain = 1 + 0.06 * (smooth_noise(rng, side, side, side // 3) - 0.5)
    return np.clip(rgb * (shade * grain)[..., None], 0, 255).astype(np.uint8), pattern


def reference_background(k: int, size: int):
    """Background k as it was written first, on (h, w, 3) arrays; returns it and its scene."""
    rng = np.random.default_rng([PROCEDURAL, 2, k])
    h = size
    w = round(size * rng.uniform(1.0, 1.5))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy /= h
    xx /= w
    scene = SCENES[rng.integers(len(SCENES))]
    muted = dict(sat=(0.1, 0.55), val=(0.35, 0.9))
    if scene == "landscape":
        sky_top, sky_low = _hsv_colour(rng, (0.2, 0.6), (0.6, 1.0)), _hsv_colour(rng, (0.05, 0.3), (0.75, 1.0))
        ground = _hsv_colour(rng, **muted)
        hills = cv2.resize(rng.random((1, 6), dtype=np.float32), (w, 1), interpolation=cv2.INTER_CUBIC)[0]
        ridge = 0.35 + 0.3 * rng.random() + 0.15 * (hills - 0.5)
        sky = sky_top * (1 - yy[..., None]) + sky_low * yy[..., None]
        texture = fractal_noise(rng, h, w, base_cells=6)[..., None]
        earth = ground * (0.7 + 0.5 * texture) * (0.8 + 0.3 * yy[..., None])
        image = np.where((yy > ridge[None, :])[..., None], earth, sky)
    elif scene == "noise":
        palette = np.stack([_hsv_colour(rng, **muted) for _ in range(3)])
        t = fractal_noise(rng, h, w, base_cells=int(rng.integers(2, 6)))
        idx = np.clip(t * 2, 0, 1.999)
        lo = np.floor(idx).astype(int)
        frac = (idx - lo)[..., None]
        image = palette[lo] * (1 - frac) + palette[lo + 1] * frac
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
        image = base * shade[..., None]
        image[mortar] = base * 0.45
        image *= (0.85 + 0.3 * fractal_noise(rng, h, w, base_cells=8))[..., None]
    elif scene == "bokeh":
        top, bottom = _hsv_colour(rng, **muted), _hsv_colour(rng, **muted)
        image = top * (1 - yy[..., None]) + bottom * yy[..., None]
        lights = np.zeros((h, w, 3), np.float32)
        for _ in range(int(rng.integers(10, 30))):
            centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            cv2.circle(lights, centre, int(rng.integers(3, size // 8)), _hsv_colour(rng).tolist(), -1)
        image = image + 0.5 * cv2.GaussianBlur(lights, (0, 0), size / 60)
    else:
        base, dark = _hsv_colour(rng, **muted), _hsv_colour(rng, (0.2, 0.6), (0.2, 0.5))
        theta = rng.uniform(0, np.pi)
        warp = fractal_noise(rng, h, w, base_cells=3) * rng.uniform(2, 6)
        u = (xx * np.cos(theta) + yy * np.sin(theta)) * rng.uniform(6, 20) + warp
        t = (0.5 + 0.5 * np.sin(u * 2 * np.pi))[..., None]
        image = base * (1 - t) + dark * t
    return np.clip(image, 0, 255).astype(np.uint8), scene


@pytest.mark.parametrize("size", [161, 48, 97])
def test_backgrounds_are_the_reference_images_bit_for_bit(size):
    scenes = []
    for k in range(40):
        expected, scene = reference_background(k, size)
        image = procedural_background(k, size)
        assert image.dtype == np.uint8 and image.flags.c_contiguous
        assert np.array_equal(image, expected), f"background {k} ({scene}) at {size} differs"
        assert image.shape[0] == size and size <= image.shape[1] <= round(1.5 * size)
        scenes.append(scene)
    assert {scene: scenes.count(scene) >= 3 for scene in SCENES} == dict.fromkeys(SCENES, True)


def test_object_surfaces_are_the_reference_images_bit_for_bit():
    patterns = []
    for k in range(60):
        rng, reference_rng = np.random.default_rng([PROCEDURAL, 9, k]), np.random.default_rng([PROCEDURAL, 9, k])
        expected, pattern = reference_texture(reference_rng, 96)
        assert np.array_equal(_texture(rng, 96), expected), f"surface {k} ({pattern}) differs"
        assert rng.random() == reference_rng.random()  # the same draws, so what follows is unchanged too
        patterns.append(pattern)
    assert {pattern: patterns.count(pattern) >= 3 for pattern in PATTERNS} == dict.fromkeys(PATTERNS, True)
    rgb, alpha = procedural_object(0)
    assert rgb.shape == (*alpha.shape, 3) and not rgb.flags.writeable



def test_every_background_exists_at_the_smallest_sizes():
    # the bokeh scene drew its light radii from an empty range below 32 px, which `--size 16` to 31 allow
    scenes = [reference_background(k, 32)[1] for k in range(N_BACKGROUNDS)]
    assert scenes.count("bokeh") >= 50
    for size in (16, 23, 31):
        for k in range(N_BACKGROUNDS):
            image = procedural_background(k, size)
            assert image.shape[0] == size and size <= image.shape[1] <= round(1.5 * size), (k, scenes[k])
