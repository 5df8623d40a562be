"""The placement probes' statistics: Wilson bounds, the rate a set needs, and the sequential probe."""
import numpy as np
import pytest
from statsmodels.stats.proportion import proportion_confint

from synthgen.success_rate import (ALLOWED_FAILURES, MAX_TRIES, TAIL_SHARES, Probed, failed_images, failures_among,
                                   highest_rate, lowest_rate, needed_rate, probe, probe_tail)


@pytest.mark.parametrize("successes,tries", [(0, 1), (0, 8), (3, 16), (13, 32), (31, 32), (64, 64)])
def test_the_bounds_are_the_one_sided_95_percent_wilson_bounds(successes, tries):
    low, high = proportion_confint(successes, tries, alpha=0.10, method="wilson")  # two-sided 90%
    assert lowest_rate(successes, tries) == pytest.approx(low, abs=1e-12)
    assert highest_rate(successes, tries) == pytest.approx(high, abs=1e-12)


def test_at_the_needed_rate_a_set_fails_the_allowed_number_of_times():
    for redraws, images in [(50, 100_000), (50, 100), (3, 30), (1, 1)]:
        rate = needed_rate(redraws, images)
        assert images * (1 - rate) ** redraws == pytest.approx(ALLOWED_FAILURES)
    assert needed_rate(50, 100_000) == pytest.approx(0.2756, abs=1e-4)  # the objects' rule: about 1 in 4
    assert failed_images(0, 10, 50, 300) == 300 and failed_images(10, 10, 50, 300) < 1e-20


def bernoulli(rate: float, seed: int):
    rng = np.random.default_rng(seed)
    return lambda: rng.random() < rate


def test_easy_scenes_are_done_in_two_tries_and_hopeless_ones_in_26():
    easy, hopeless = probe(lambda: True, 50, 100_000), probe(lambda: False, 50, 100_000)
    assert (easy.holds(50, 100_000), easy.tries) == (True, 2)
    assert (hopeless.holds(50, 100_000), hopeless.tries) == (False, 26)
    one_redraw = probe(lambda: True, 1, 1)  # one redraw: no short probe vouches for every image
    assert one_redraw.tries == MAX_TRIES and not one_redraw.holds(1, 1)


def test_the_probe_keeps_rates_that_hold_and_drops_the_ones_that_would_stop_builds():
    runs = {rate: [probe(bernoulli(rate, seed), 50, 100_000) for seed in range(400)] for rate in (0.05, 0.15, 0.5)}
    kept = {rate: np.mean([p.holds(50, 100_000) for p in probed]) for rate, probed in runs.items()}
    # 0.15 fails 3e-4 of the images at R = 50: rarely kept; 0.5 (1e-15) almost always kept
    assert kept[0.05] == 0 and kept[0.15] < 0.05 and kept[0.5] > 0.95
    assert max(p.tries for probed in runs.values() for p in probed) <= MAX_TRIES


def rate_falling_with(share_to_rate):
    """Trial scenes whose rate depends on how far into the hard end they are (the last draw is the hardest)."""
    return lambda share: [bernoulli(share_to_rate(share), seed) for seed in range(PROBES)]


PROBES = 8


def test_the_hard_end_stands_for_the_few_images_near_it():
    # 1 in 4 at the very top is fine for the 0.1 of 100 images near it, and the rate is 0.6 from the 1/1024
    # quantile on; at 1 in 4 for all 100 it would not be (judged by its lower bound, as probes must)
    edge = probe_tail(rate_falling_with(lambda share: 0.25 if share == 0 else 0.6), 50, 100)
    assert edge.passed and edge.share == TAIL_SHARES[1]
    assert not probe_tail(rate_falling_with(lambda share: 0.25), 50, 100).passed
    # the same hardest rate everywhere: refused where its stretch holds too many images
    flat = probe_tail(rate_falling_with(lambda share: 0.1), 50, 100)
    assert not flat.passed and flat.failures > ALLOWED_FAILURES / len(TAIL_SHARES)
    stretch_end = ([*TAIL_SHARES, 1.0])[TAIL_SHARES.index(flat.share) + 1]
    assert flat.images == pytest.approx(100 * (stretch_end - flat.share))  # the images of the refused stretch
    easy = probe_tail(rate_falling_with(lambda share: 1.0), 50, 1e6)
    assert easy.passed and easy.share == 0 and easy.hardest.tries == 2


def test_one_hard_scene_among_easy_ones_counts_for_its_share():
    # scenes are drawn as the set draws its images: a hard one among 8 stands for an eighth of them
    alone = probe_tail(lambda share: [bernoulli(0.35, 1)], 50, 10_000)
    among = probe_tail(lambda share: [bernoulli(1.0, 0)] * 7 + [bernoulli(0.35, 1)], 50, 10_000)
    assert among.passed and not alone.passed and among.hardest.successes < among.hardest.tries
    assert failures_among([Probed(5, 5), Probed(0, 8)], 50, 16) == pytest.approx(8 + failed_images(5, 5, 50, 8))


def test_a_scene_that_comes_out_often_enough_is_rarely_given_up_on():
    # A design probes up to a few hundred scenes, and one given up on refuses it. Giving up as soon as the 95%
    # upper bound fell below the needed rate gave up on scenes 0.05 above it in 9-20% of probes (every try is
    # another look); at 99.9%, in under 1%.
    for redraws, images in [(50, 100_000), (5, 1), (8, 100)]:
        rate = needed_rate(redraws, images) + 0.05
        runs = [probe(bernoulli(rate, seed), redraws, images) for seed in range(1000)]
        given_up = np.mean([p.tries < MAX_TRIES and not p.holds(redraws, images) for p in runs])
        assert given_up < 0.01, (redraws, images, given_up)
    hopeless = [probe(bernoulli(0.05, seed), 50, 100_000) for seed in range(200)]  # still refused, a little later
    assert not any(p.holds(50, 100_000) for p in hopeless) and np.mean([p.tries < MAX_TRIES for p in hopeless]) > 0.75
