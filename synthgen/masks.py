"""Object masks for what they are: binary, soft-edged or graded, and how many objects they show.

Salient-object masks come in three kinds, and each must become the alpha of exactly one object:
* binary (THUS10000/MSRA10K): 0 and one foreground level;
* soft-edged: binary plus a thin ramp of intermediate values along the border (anti-aliasing, matting);
* graded (PASCAL-S style): whole regions at intermediate grey levels, a level per share of annotators
  who marked the region salient. Read as alpha, those regions would be pasted as see-through objects.

The rule, in order:
1. The mask is scaled so that its maximum is opaque (a 0/1 or 0/200 mask is binary too).
2. A mask is graded when its intermediate values form plateaus, pixels whose 3x3 neighbourhood holds
   one single value, over at least `GRADED_MIN_SHARE` of the mask. A soft edge is a ramp, so its
   pixels never lie on a plateau. Graded masks are cut at the threshold (`--mask-threshold`, a share
   of the maximum): at or above it a pixel is opaque, below it transparent. Soft edges are kept.
3. The pixels at or above the threshold are split into 8-connected parts. Parts smaller than
   `SPECK_SHARE` of the largest (and than `MIN_OBJECT_PIXELS`) are specks of annotation noise and
   are removed with their soft edge. When several parts remain, the mask shows several objects:
   pasted whole it would put them all under one count. `--mask-parts skip` (the default) reports the
   mask and leaves it out; `--mask-parts largest` keeps its largest part.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from synthgen.errors import BadInputError

MIN_OBJECT_PIXELS = 16  # a mask with fewer object pixels has no usable object
GRADED_MIN_SHARE = 0.02  # share of the mask's non-zero pixels on intermediate plateaus that makes it graded
SPECK_SHARE = 0.05  # parts smaller than this share of the largest part are noise, not objects
PART_POLICIES = ("skip", "largest")


@dataclass(frozen=True)
class MaskRule:
    """How masks are read: the threshold as a share of the maximum, and what to do with several parts."""

    threshold: float = 0.5
    parts: str = "skip"


@dataclass(frozen=True)
class MaskInfo:
    """What a mask turned out to be."""

    kind: str  # "binary", "soft" or "graded"
    parts: int  # objects (parts at or above the threshold, specks left out) in the mask as given
    specks: int  # parts removed as noise
    levels: tuple[int, ...] = ()  # the grey levels of a graded mask's plateaus (0-255 of its maximum)


def read_mask(mask: np.ndarray, rule: MaskRule, origin) -> tuple[np.ndarray, MaskInfo]:
    """The alpha (uint8) of the one object a mask shows, and what the mask was; raises BadInputError
    for an empty mask or, under `parts == "skip"`, a mask showing several objects."""
    peak = int(mask.max())
    if peak == 0:
        raise BadInputError(origin, "mask is empty (all zero)")
    alpha = mask if peak == 255 else (mask.astype(np.float32) * (255.0 / peak) + 0.5).astype(np.uint8)
    intermediate = (alpha > 0) & (alpha < 255)
    kind, levels = "binary", ()
    if intermediate.any():
        kernel = np.ones((3, 3), np.uint8)
        plateau = intermediate & (cv2.erode(alpha, kernel) == cv2.dilate(alpha, kernel))
        if plateau.sum() >= max(MIN_OBJECT_PIXELS, GRADED_MIN_SHARE * np.count_nonzero(alpha)):
            kind, levels = "graded", tuple(int(v) for v in np.unique(alpha[plateau]))
        else:
            kind = "soft"
    cut = alpha >= rule.threshold * 255
    if kind == "graded":
        alpha = np.where(cut, np.uint8(255), np.uint8(0))
    n_object = int(np.count_nonzero(cut))
    if n_object < MIN_OBJECT_PIXELS:
        raise BadInputError(origin, f"mask is empty ({n_object} pixels at or above {rule.threshold:g} of its "
                            "maximum)")
    # Most masks show one object, whose part every pixel then belongs to: the distance transform below (3 ms
    # on a 400x300 THUS10000 mask, the costliest step of preparing an object) is needed only for several parts.
    # Its parts are the 8-connected ones, as connectedComponents counts them here (0.3 ms).
    if cv2.connectedComponents(cut.view(np.uint8), connectivity=8)[0] == 2:  # the background and one part
        return alpha, MaskInfo(kind, 1, 0, levels)
    # Each non-zero pixel belongs to its nearest part: soft edges go with the part they border.
    _, nearest = cv2.distanceTransformWithLabels((~cut).astype(np.uint8), cv2.DIST_L2, 5,
                                                 labelType=cv2.DIST_LABEL_CCOMP)
    sizes = np.bincount(nearest[cut])
    labels = np.flatnonzero(sizes)
    largest = sizes.max()
    real = labels[sizes[labels] >= max(MIN_OBJECT_PIXELS, SPECK_SHARE * largest)]
    info = MaskInfo(kind, int(real.size), int(labels.size - real.size), levels)
    if real.size > 1:
        if rule.parts == "skip":
            shown = ", ".join(f"{int(v):,}" for v in sorted(sizes[real], reverse=True)[:5])
            raise BadInputError(origin, f"mask shows {real.size} separate objects (parts of {shown} pixels at "
                                f"{rule.threshold:g} of its maximum{', graded mask' if kind == 'graded' else ''}); "
                                "pasted whole they would be counted as one. --mask-parts largest keeps the largest "
                                "part")
        real = np.array([int(np.argmax(sizes))])
    if real.size < labels.size:  # drop specks (and, under "largest", the other objects) with their edges
        alpha = np.where(np.isin(nearest, real), alpha, np.uint8(0))
    return alpha, info
