"""Which images two sets share, from what they record: the trainer and the readout refuse sets that would put
one image on both sides of a split."""
from __future__ import annotations

import json

from synthgen.manifest import SOURCES
from synthgen.reader import ShardSet


def photos_of(shards: ShardSet) -> tuple[str, frozenset] | None:
    """For a set packed from photos (`synthgen pack`): the photo folder and the photos it took (paths within
    it, from the set's sources.json); None for a set of another kind, or one whose list cannot be read."""
    if shards.kind != "natural":
        return None
    try:
        sources = json.loads((shards.root / SOURCES).read_text())
        return str(sources["root"]), frozenset(sources["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def shared_images(a: ShardSet, b: ShardSet) -> str | None:
    """How sets `a` and `b` hold the same images, in words; None when they share none that can be told from
    what they record. Sets of one build identity hold the same image i wherever both have it (a smaller --n
    is a prefix of a larger one); sets packed from one photo folder share the photos both took, at any
    --size or --fit (disjoint splits share none)."""
    if a.identity == b.identity:
        return f"the same build: its first {min(len(a), len(b))} images are the same"
    photos_a, photos_b = photos_of(a), photos_of(b)
    if photos_a and photos_b and photos_a[0] == photos_b[0]:
        both = photos_a[1] & photos_b[1]
        if both:
            return f"packed from the same photos: {len(both)} of {photos_a[0]} are in both"
    return None


def first_shared(named: list[tuple[str, ShardSet]], among_themselves: frozenset = frozenset()):
    """The first two of these sets (each with the option that named it) that hold the same images, as (option,
    option, "OPTION SET and OPTION SET hold the same images (how)"); None when every image is in one set. Sets
    of an option in `among_themselves` may share images with each other."""
    for i, (option_a, a) in enumerate(named):
        for option_b, b in named[i + 1:]:
            if option_a == option_b and option_a in among_themselves:
                continue
            how = shared_images(a, b)
            if how:
                return option_a, option_b, f"{option_a} {a.root} and {option_b} {b.root} hold the same images ({how})"
    return None
