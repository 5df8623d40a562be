"""How often a random placement must come out for a set to build.

A scene (objects, or dots) is placed by random positions; one try succeeds with some rate p, and an
image whose every one of its R = --max-redraws tries fails stops the build, which happens with
(1 - p)^R. Probes measure p with a few tries of the hardest scenes and judge by a lower bound on it
(one-sided 95%, Wilson), so a scene that came out by luck in a short probe is not taken as easy: a
design passes when the expected number of images of each count that fail all their redraws stays under
ALLOWED_FAILURES. A rule that judges by a handful of whole redraw cycles instead decides near its limit
by the seed, and lets through scenes that fail once in a few thousand images. A probe gives up early on a
scene only when its rate is below what is needed at 99.9% (Z_GIVE_UP): it looks after every try, and
giving up at 95% gave up on scenes 0.05 above the needed rate in 9-20% of probes.

What each probe stands for: the trial scenes are drawn as the set draws its scenes, so each stands for
an equal share of the images; and images of one cell differ in how hard they are by a continuous draw
(a build's area, the field of dot arrays), whose hardest value only a few of them get, so the hard end
is tried at a few quantiles (TAIL_SHARES), each point standing for the images up to the next. Every
point is still taken as hard as its hardest image, so the judgement errs towards refusing.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Callable

Z = NormalDist().inv_cdf(0.95)  # one-sided 95%: 1.645
# A scene is given up on as too rare only at one-sided 99.9%: a design probes up to a few hundred scenes (every
# count, four points of the hard end), and any one of them given up on wrongly refuses the whole design.
Z_GIVE_UP = NormalDist().inv_cdf(0.999)  # 3.09
# Expected failed images among the images of one probed count (a cell), at most: a quarter per probed point. Not
# split among the counts: a set of k counts may lose up to k times this, judged at the rates' lower bounds, which
# is conservative (24 designs at the edge, 1,140 seed-builds: none stopped). Split 32 ways, the dots probe refused
# README designs that build.
ALLOWED_FAILURES = 0.01
REFERENCE_IMAGES = 100_000  # the set size for decisions that must not depend on --n (which objects appear)
# Probed points of the hard end, as the share of a cell's images harder than the point: the hardest value, then
# the 1/1024, 1/64 and 1/8 quantiles from that end. Each stands for the images up to the next point.
TAIL_SHARES = (0.0, 1 / 1024, 1 / 64, 1 / 8)
ALLOWED_PER_POINT = ALLOWED_FAILURES / len(TAIL_SHARES)
MAX_TRIES = 64  # tries per probed scene: enough to pass p = 0.4 at R = 50 (its lower bound then 0.3)


def _wilson(successes: int, tries: int, sign: int, z: float) -> float:
    p, z2 = successes / tries, z * z
    centre = p + z2 / (2 * tries)
    spread = z * math.sqrt(p * (1 - p) / tries + z2 / (4 * tries * tries))
    return min(1.0, max(0.0, (centre + sign * spread) / (1 + z2 / tries)))


def lowest_rate(successes: int, tries: int) -> float:
    """The lower end of the one-sided 95% Wilson interval of a success rate."""
    return _wilson(successes, tries, -1, Z) if tries else 0.0


def highest_rate(successes: int, tries: int, z: float = Z) -> float:
    """The upper end of the one-sided Wilson interval of a success rate (95%, or as `z` says)."""
    return _wilson(successes, tries, +1, z) if tries else 1.0


def needed_rate(redraws: int, images: float, allowed: float = ALLOWED_FAILURES) -> float:
    """The rate at which `images` scenes, each with `redraws` tries, fail `allowed` times on average."""
    return 1.0 - min(1.0, allowed / max(images, 1e-9)) ** (1.0 / redraws)


def failed_images(successes: int, tries: int, redraws: int, images: float) -> float:
    """The expected number of images that fail all their redraws, were each as hard as the probed scene
    (at the lower bound of its rate)."""
    return images * (1.0 - lowest_rate(successes, tries)) ** redraws


@dataclass(frozen=True)
class Probed:
    """The tries of one trial scene and how many came out."""

    successes: int
    tries: int

    def describe(self) -> str:
        return f"{self.successes} of {self.tries} tries"

    def holds(self, redraws: int, images: float, allowed: float = ALLOWED_FAILURES) -> bool:
        """Whether `images` scenes like this one, `redraws` tries each, fail at most `allowed` times on average
        (at the lower bound of its rate)."""
        return lowest_rate(self.successes, self.tries) >= needed_rate(redraws, images, allowed)


def probe(try_once: Callable[[], bool], redraws: int, images: float, allowed: float = ALLOWED_FAILURES,
          max_tries: int = MAX_TRIES, fewest_images: float | None = None) -> Probed:
    """Try a scene until its rate surely holds for `images` (95%) or surely does not for `fewest_images`
    (default `images`; 99.9%), or `max_tries` are spent. An easy scene is done in 2 tries, a hopeless one in 26
    (at R = 50)."""
    surely = needed_rate(redraws, images, allowed)
    at_least = needed_rate(redraws, images if fewest_images is None else fewest_images, allowed)
    successes = 0
    for tries in range(1, max_tries + 1):
        successes += bool(try_once())
        if lowest_rate(successes, tries) >= surely or highest_rate(successes, tries, Z_GIVE_UP) < at_least:
            break
    return Probed(successes, tries)


@dataclass(frozen=True)
class Verdict:
    """What the probe of a cell's hard end found, and where it decided."""

    passed: bool
    share: float  # of the cell's images, harder than the point that decided
    images: float  # the images that point stood for
    failures: float  # the expected failed images among them (at the lower bounds of the scenes' rates)
    hardest: Probed  # the scene with the lowest rate there


def failures_among(probed: list[Probed], redraws: int, images: float) -> float:
    """The expected failed images among `images` whose scenes are like the probed ones, each standing for an
    equal share (they are drawn as the set draws its scenes)."""
    return sum(failed_images(p.successes, p.tries, redraws, images / len(probed)) for p in probed)


def probe_tail(scenes_at: Callable[[float], list[Callable[[], bool]]], redraws: int, images: float) -> Verdict:
    """Probe a cell of `images` at the TAIL_SHARES quantiles of its hard end: `scenes_at(share)` gives the trial
    scenes at the quantile. Stops at the first point whose scenes hold for all the images from it on (the rest
    are easier), or at one whose scenes do not hold even for its own stretch (refused)."""
    ends = [*TAIL_SHARES[1:], 1.0]
    for share, end in zip(TAIL_SHARES, ends):
        remaining, own = images * (1.0 - share), images * (end - share)
        probed = [probe(scene, redraws, remaining, ALLOWED_PER_POINT, fewest_images=own)
                  for scene in scenes_at(share)]
        hardest = min(probed, key=lambda p: lowest_rate(p.successes, p.tries))
        from_here_on = failures_among(probed, redraws, remaining)
        if from_here_on <= ALLOWED_PER_POINT:
            return Verdict(True, share, remaining, from_here_on, hardest)
        in_stretch = failures_among(probed, redraws, own)
        if in_stretch > ALLOWED_PER_POINT:
            return Verdict(False, share, own, in_stretch, hardest)
    raise AssertionError("the last stretch holds for all the images from it on")


def expected_failures_text(verdict: Verdict, images_of: str) -> str:
    """How many images a refused design could lose, against how many are allowed, for messages."""
    return (f"of the set's about {verdict.images:.2g} images {images_of}, on average up to {verdict.failures:.2g} "
            f"could fail every redraw and stop the build ({ALLOWED_PER_POINT:g} allowed)")
