"""Argument parsing and validation, and the scene plan (counts, seeds, area draws)."""
import re

import cv2
import numpy as np
import pytest

from synthgen.config import BuildConfig, parse_color_shift, parse_counts, parse_range
from synthgen.errors import UsageError
from synthgen.plan import (MIN_OBJECT_PIXELS, counts_for, draw_area_fraction, draw_area_shares, hull_extent,
                           image_rng, image_seed, rotated_extent, smallest_object_share, too_small_problem)


@pytest.mark.parametrize("text, expected", [
    ("0-4", (0, 1, 2, 3, 4)),
    ("1,2,4", (1, 2, 4)),
    ("1-9", tuple(range(1, 10))),
    ("0-2, 5", (0, 1, 2, 5)),
    ("4,2", (2, 4)),
    ("3", (3,)),
])
def test_count_specs(text, expected):
    assert parse_counts(text) == expected


@pytest.mark.parametrize("text", ["4-1", "-1", "a", "", "1,,2", "0-100", "1.5", "4,2,2", "0-4,3-5"])
def test_bad_count_specs_name_the_option(text):
    with pytest.raises(UsageError, match="--count"):
        parse_counts(text)


def test_ranges_and_colour_shift():
    assert parse_range("0.04-0.36", "--area-range") == (0.04, 0.36)
    assert parse_range("0.1,0.2", "--area-range") == (0.1, 0.2)
    assert parse_range("0.2", "--area-range") == (0.2, 0.2)
    with pytest.raises(UsageError, match="--area-range"):
        parse_range("big", "--area-range")
    assert parse_color_shift("0") == (0, 0, 0)
    assert parse_color_shift("0.2,0.1,0.05") == (0.2, 0.1, 0.05)
    with pytest.raises(UsageError, match="--color-shift"):
        parse_color_shift("0.2,0.1")


@pytest.mark.parametrize("field, value, option", [
    ("n", 0, "--n"), ("area_range", (0.0, 0.3), "--area-range"), ("area_range", (0.5, 0.2), "--area-range"),
    ("area_range", (0.1, 1.5), "--area-range"), ("max_occlusion", 1.0, "--max-occlusion"),
    ("size", 8, "--size"), ("size_jitter", 1.2, "--size-jitter"), ("shard_size", 0, "--shard-size"),
    ("source_objects", 0, "--source-objects"), ("compression", "zip", "--compression"),
])
def test_invalid_config_names_the_option(field, value, option):
    with pytest.raises(UsageError, match=option):
        BuildConfig(**{"n": 10, field: value})


def test_counts_are_balanced_exactly_and_independent_of_n():
    config = BuildConfig(n=1000, counts=(0, 1, 2, 3, 4), seed=7)
    counts = counts_for(config, 0, 1000)
    assert np.bincount(counts).tolist() == [200] * 5
    # A smaller set is a prefix of a larger one, and any slice matches the whole.
    assert np.array_equal(counts_for(config, 0, 333), counts[:333])
    assert np.array_equal(counts_for(config, 417, 101), counts[417:518])
    uneven = counts_for(config, 0, 1003)
    assert np.bincount(uneven).max() - np.bincount(uneven).min() <= 1
    other_seed = counts_for(BuildConfig(n=1000, seed=8), 0, 1000)
    assert not np.array_equal(counts, other_seed)


def test_image_seeds_are_distinct_and_reproducible():
    seeds = [image_seed(3, i) for i in range(2000)]
    assert len(set(seeds)) == 2000
    assert seeds[17] == image_seed(3, 17)
    assert image_seed(3, 17) != image_seed(4, 17)


def test_area_draws_are_loguniform_and_shares_sum_to_one():
    config = BuildConfig(n=1, area_range=(0.04, 0.36))
    rng = image_rng(123)
    fractions = np.array([draw_area_fraction(rng, config) for _ in range(20000)])
    assert fractions.min() >= 0.04 and fractions.max() <= 0.36
    # log-uniform: log A is uniform, so its mean is the log of the geometric mean of the bounds
    assert abs(np.log(fractions).mean() - np.log(np.sqrt(0.04 * 0.36))) < 0.02
    for count in (1, 2, 4, 9):
        shares = draw_area_shares(rng, count, 0.15)
        assert shares.sum() == pytest.approx(1.0)
        assert np.all(shares >= (1 - 0.15) / (1 + 0.15) / count - 1e-12)


def _extent_from_every_corner(alpha: np.ndarray, rotation: float) -> tuple[float, float]:
    """rotated_extent as first written: the hull of the corners of every outline pixel (the oracle; only the
    hull changed, so the turned boxes are measured by the same hull_extent)."""
    contours, _ = cv2.findContours((alpha > 0).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    centres = np.concatenate([c.reshape(-1, 2) for c in contours])
    corners = np.concatenate([centres + (dx, dy) for dx in (0, 1) for dy in (0, 1)])
    return hull_extent(cv2.convexHull(corners.astype(np.float32)).reshape(-1, 2).astype(np.float64), rotation)


def test_rotated_extent_is_the_hull_of_every_pixel_square():
    # A 30x12 rectangle: unrotated, its sides and area exactly; turned by up to 10 degrees, the bounding box
    # of its corners at 10 degrees (the widest of the angles tried).
    rectangle = np.zeros((40, 50), np.uint8)
    rectangle[5:17, 8:38] = 255
    assert rotated_extent(rectangle, 0) == (30.0, 360.0)
    t = np.radians(10)
    side, box = rotated_extent(rectangle, 10)
    assert side == pytest.approx(30 * np.cos(t) + 12 * np.sin(t))
    assert box == pytest.approx((30 * np.cos(t) + 12 * np.sin(t)) * (30 * np.sin(t) + 12 * np.cos(t)))
    # Blobs of every kind, several parts and single pixels among them: the same floats as the hull of the
    # corners of every outline pixel, the form the shortcut through the centres' hull must equal.
    rng = np.random.default_rng(5)
    for trial in range(60):
        alpha = np.zeros((rng.integers(3, 90), rng.integers(3, 90)), np.uint8)
        h, w = alpha.shape
        for _ in range(rng.integers(1, 5)):
            cv2.ellipse(alpha, (int(rng.integers(w)), int(rng.integers(h))),
                        (int(rng.integers(0, w)), int(rng.integers(0, h))), float(rng.uniform(0, 180)), 0, 360,
                        int(rng.integers(1, 256)), -1)
        alpha[rng.random(alpha.shape) < 0.01] = 7  # specks
        if not alpha.any():
            continue
        rotation = float(rng.choice([0.0, 3.5, 10.0, 45.0]))
        assert rotated_extent(alpha, rotation) == _extent_from_every_corner(alpha, rotation), trial


def test_objects_too_small_to_count_are_refused_with_a_fix_that_works():
    config = BuildConfig(n=10, size=16, area_range=(0.01, 0.2))
    drawn = min(draw_area_shares(np.random.default_rng(k), 4, 0.15).min() for k in range(20000))
    bound = smallest_object_share(config) / config.area_range[0]
    assert bound <= drawn < 1.02 * bound  # the least share a drawn object gets, reached in the limit
    problem = too_small_problem(config)
    assert problem.startswith("--area-range 0.01-0.2 at --size 16: the smallest object (the bottom of the range "
                              "shared by 4 objects, --size-jitter 0.15) would cover 0.51 px")
    lowest, side = re.search(r"to (\S+) or more, or --size to (\d+) or more", problem).groups()
    assert too_small_problem(BuildConfig(n=10, size=16, area_range=(float(lowest) * 1.01, 0.2))) is None
    assert too_small_problem(BuildConfig(n=10, size=int(side), area_range=(0.01, 0.2))) is None
    assert too_small_problem(BuildConfig(n=10, size=int(side) - 1, area_range=(0.01, 0.2))) is not None
    for fine in (BuildConfig(n=10), BuildConfig(n=10, size=32, area_range=(0.02, 0.2)), BuildConfig(n=10, counts=(0,))):
        assert too_small_problem(fine) is None
    assert smallest_object_share(BuildConfig(n=10, size=32, area_range=(0.02, 0.2))) * 32**2 >= MIN_OBJECT_PIXELS
