"""Refusing requests that can never be satisfied, before any work is done.

A probe with the real sources and the real placement code: a few scenes of the hardest cells (most
objects at the largest area, where packing is tightest; fewest objects at the largest area, where
single objects are largest) must be placeable within the redraw budget. Probes draw from their own
streams, so they never change the images of the set.
"""
from __future__ import annotations

from common import streams
from synthgen.compositor import Compositor
from synthgen.errors import PlacementError, UsageError

PROBES_PER_CELL = 8



def check_feasible(config, compositor: Compositor) -> None:
    """Raise UsageError, with the reason, when the requested scenes cannot be composed."""
    counts = [c for c in config.counts if c > 0]
    if not counts:
        return
    hi = config.area_range[1]
    for count in sorted({max(counts), min(counts)}, reverse=True):
        for probe in range(PROBES_PER_CELL):
            rng = streams.rng(config.seed, streams.PROBE, count, probe)
            try:
                compositor.compose(rng, count, area_fraction=hi)
            except PlacementError:
                raise UsageError(
                    f"cannot place {count} object{'s' if count > 1 else ''} covering {hi:.0%} of a "
                    f"{config.size}x{config.size} canvas with --max-occlusion {config.max_occlusion} and "
                    f"--max-outside {config.max_outside}: a trial scene failed after {config.max_redraws} redraws "
                    f"of {config.placement_tries} positions per object. Lower the top of --area-range, allow more "
                    "overlap (--max-occlusion), or use fewer objects (--count)") from None
