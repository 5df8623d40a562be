"""Refusing requests that can never be satisfied, before any work is done.

A probe with the real sources and the real placement code: scenes of every count at the top of the area
range (which count packs worst depends on the design, often 2), drawn as the set draws them, must come
out often enough that no image of the set is likely to fail all its redraws (synthgen.success_rate), at
the top of the range and at a few quantiles below it. Probes draw from streams fixed by the design (never
--seed), so a design is accepted or refused the same for every seed, and they never change the images of
the set.
"""
from __future__ import annotations

from common import streams
from synthgen.compositor import Compositor
from synthgen.errors import UsageError
from synthgen.plan import area_from_top
from synthgen.success_rate import expected_failures_text, probe_tail

PROBES_PER_CELL = 8


def check_feasible(config, compositor: Compositor) -> None:
    """Raise UsageError, with the reason, when the requested scenes cannot be composed."""
    counts = [c for c in config.counts if c > 0]
    if not counts:
        return
    # Each probe stands for the images of its count (the count plan is block-stratified), their areas drawn from
    # --area-range: the top of the range for the few images near it (success_rate.probe_tail). Every count, not
    # only the largest and the smallest: with overlap allowed, two objects at a large area can pack worse than six
    # (at 45% of 161x161 and --max-occlusion 0.2, 77% of tries against 96%), and so can copies of one object
    # without overlap; designs probed at their ends stopped part-way at an image of 2 objects for every seed tried.
    count_images = config.n / len(config.counts)
    for count in sorted(set(counts), reverse=True):

        def scenes_at(share: float) -> list:
            fraction = area_from_top(config, share)
            return [compositor.placing(streams.rng(streams.DESIGN, streams.PROBE, count, scene), count, fraction)
                    for scene in range(PROBES_PER_CELL)]

        verdict = probe_tail(scenes_at, config.max_redraws, count_images)
        if not verdict.passed:
            objects = f"{count} object{'s' if count > 1 else ''}"
            area = area_from_top(config, verdict.share)
            at_top = area >= config.area_range[1]  # a fixed area: every scene
            where = "the top of --area-range" if at_top else f"{verdict.share:.2%} of these scenes are larger"
            which = f"with {objects} and about that area"
            raise UsageError(
                f"cannot place {objects} covering {area:.0%} of a "
                f"{config.size}x{config.size} canvas ({where}) often enough under --max-occlusion "
                f"{config.max_occlusion:g} and --max-outside {config.max_outside:g}: the hardest trial scene came out "
                f"in {verdict.hardest.describe()} of {config.placement_tries} positions per object, so with "
                f"--max-redraws {config.max_redraws}, {expected_failures_text(verdict, which)}. "
                "Lower the top of --area-range, allow more overlap (--max-occlusion), use fewer objects (--count), "
                "or raise --max-redraws")
