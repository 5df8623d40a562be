"""Every random stream of the toolkit, derived from (seed, stream id, keys...) with numpy's SeedSequence.

The stream ids are listed here, in one place, so that no two uses ever share a stream. A draw that
depends on an item (an image, a block, an epoch, a step) puts the item's index in the keys, so it
never depends on which process or in which order the items are produced.
"""
from __future__ import annotations

import numpy as np

# synthgen
IMAGE = 0  # everything drawn for image i of a build
COUNTS = 1  # the order of the count values in each block of the count plan
OBJECT_POOL = 2  # the order in which objects are tried for --source-objects
PROBE = 3  # the feasibility probes (never the images of the set), keyed by DESIGN in place of the seed
PROBE_OBJECT = 4  # the packing probe of one object (which objects can appear at every area and count)
# In place of the seed where a draw must be the same for every seed: whether a design can be built, and which
# objects can appear in it, are properties of the design. Above SEED_RANGE, so no --seed ever equals it.
DESIGN = 2**63
PROCEDURAL = 0x5EED_0B1E  # the embedded procedural source, apart from every build seed
# vae-train: the data plan
VALIDATION = 11
NATURAL_DROP = 12
NATURAL_ORDER = 13
EPOCH = 14
# vae-train: the steps
STEP = 21
VALIDATION_NOISE = 22
INIT = 23
RANDOM_VGG = 24  # the loss network's weights under --vgg-weights random (tests): the same on --resume
# analyses
NULL_ROTATION = 31  # the random rotations of the null
DECODING_FOLDS = 32  # the cross-validation folds of population decoding
DECODING_BOOTSTRAP = 33  # the bootstrap of the decoding R^2
BETA_BOOTSTRAP = 34  # the bootstrap of Eq. 3's betas
FIGURE_IMAGES = 35  # which images the analysis figures show
READOUT_SPLIT = 36  # the readout's stratified validation part
READOUT_INIT = 37  # the readout's initial weights (torch)
READOUT_BATCHES = 38  # the order of the readout's training batches (torch)
READOUT_BOOTSTRAP = 39  # the bootstrap of the readout's test scores
COMPARISON_BALANCE = 40  # which training images of the larger side the numerosity comparison leaves out
# synthgen dots
DOTS = 41  # everything drawn for dot image i


def rng(*keys: int) -> np.random.Generator:
    """A generator seeded by the key sequence, e.g. rng(seed, EPOCH, epoch)."""
    return np.random.default_rng([int(k) for k in keys])


def seed64(*keys: int) -> int:
    """A 64-bit seed derived from the key sequence (the first word of its SeedSequence state)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, np.uint64)[0])
