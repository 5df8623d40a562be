"""Argument parsing and validation, and the scene plan (counts, seeds, area draws)."""
import numpy as np
import pytest

from synthgen.config import BuildConfig, parse_color_shift, parse_counts, parse_range
from synthgen.errors import UsageError
from synthgen.plan import counts_for, draw_area_fraction, draw_area_shares, image_rng, image_seed


@pytest.mark.parametrize("text, expected", [
    ("0-4", (0, 1, 2, 3, 4)),
    ("1,2,4", (1, 2, 4)),
    ("1-9", tuple(range(1, 10))),
    ("0-2, 5", (0, 1, 2, 5)),
    ("4,2,2", (2, 4)),
    ("3", (3,)),
])
def test_count_specs(text, expected):
    assert parse_counts(text) == expected


@pytest.mark.parametrize("text", ["4-1", "-1", "a", "", "1,,2", "0-100", "1.5"])
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
