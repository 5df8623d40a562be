"""The settings of every synthgen command, with their flags, help texts and valid ranges (common.settings).

A `BuildConfig` is saved with every output (manifest and shard attributes), so any set can be traced
back to the command that made it. Settings that only change how the work is run (workers, backend,
cache size) live in `RunOptions` and never change the images.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass

from common.errors import UsageError
from common.settings import (SEED_RANGE, Settings, at_least, between, from_dict, option, progress_option,
                             to_dict, verify_option)

MAX_COUNT = 64
AREA_DISTRIBUTIONS = ("loguniform", "uniform")
COMPRESSIONS = ("none", "lzf", "gzip")
# joblib's "multiprocessing" backend is not offered: it cannot hand results back as they come
# (return_as="generator"), which the progress bar, the parts of a partial round and the disk flushes need.
BACKENDS = ("loky", "threading", "dask")
BAD_INPUT_POLICIES = ("skip", "fail")
MASK_PARTS = ("skip", "largest")
FITS = ("squash", "crop", "pad")
SPLITS = ("train", "test")


MAX_SIZE = 2048  # the largest --size of any set
MAX_IMAGES = 10**9  # a set of a billion images is terabytes; beyond, a number is a typo (and its plan would never end)
MAX_TRIES = 100_000  # positions are tried in one array: beyond, a number is a typo that numpy cannot allocate


def parse_counts(text: str) -> tuple[int, ...]:
    """Parse a count spec such as '0-4', '1,2,4' or '0-2,5' into sorted counts, each given once."""
    counts: set[int] = set()
    parts = [p.strip() for p in str(text).split(",")]
    if not text or any(not p for p in parts):
        raise UsageError(f"--count {text!r}: give a range or a list, e.g. 0-4 or 1,2,4")
    for part in parts:
        match = re.fullmatch(r"(\d+)\s*-\s*(\d+)|(\d+)", part)
        if not match:
            raise UsageError(
                f"--count {text!r}: {part!r} is not a whole number or a range like 0-4 "
                "(counts cannot be negative)"
            )
        if match.group(3) is not None:
            lo = hi = int(match.group(3))
        else:
            lo, hi = int(match.group(1)), int(match.group(2))
        if lo > hi:
            raise UsageError(f"--count {text!r}: range {part!r} must go from low to high, e.g. {hi}-{lo}")
        # Each count is drawn equally often: a count given twice would read as a weight it does not get.
        twice = counts.intersection(range(lo, hi + 1))
        if twice:
            raise UsageError(f"--count {text!r}: {min(twice)} is given twice; every count is drawn equally often, "
                             "so give each once")
        counts.update(range(lo, hi + 1))
    if max(counts) > MAX_COUNT:
        raise UsageError(f"--count {text!r}: at most {MAX_COUNT} objects per image are supported")
    return tuple(sorted(counts))


def format_counts(counts) -> str:
    """Counts as the shortest --count text: runs as ranges, e.g. (0, 1, 2, 3, 4, 7) -> '0-4,7'."""
    parts, run = [], [counts[0]]
    for value in list(counts[1:]) + [None]:
        if value is not None and value == run[-1] + 1:
            run.append(value)
            continue
        parts.append(f"{run[0]}-{run[-1]}" if len(run) > 2 else ",".join(map(str, run)))
        run = [value]
    return ",".join(parts)


def parse_range(text: str, option: str = "--area-range") -> tuple[float, float]:
    """Parse 'LO-HI' or 'LO,HI' (or one number for a fixed value) into a pair of floats."""
    parts = re.split(r"\s*[,:]\s*|(?<=\d)\s*-\s*(?=[\d.])", str(text).strip())
    try:
        values = [float(p) for p in parts if p != ""]
    except ValueError:
        raise UsageError(f"{option} {text!r}: give two numbers LO-HI, e.g. 0.04-0.36") from None
    if len(values) == 1:
        values = values * 2
    if len(values) != 2:
        raise UsageError(f"{option} {text!r}: give two numbers LO-HI, e.g. 0.04-0.36")
    return values[0], values[1]


def parse_color_shift(text: str) -> tuple[float, float, float]:
    """Parse 'BRIGHTNESS,SATURATION,HUE' jitter limits (albumentations ColorJitter), or '0' for none."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if values == (0.0,):
        values = (0.0, 0.0, 0.0)
    if len(values) != 3:
        raise UsageError(f"--color-shift {text!r}: give BRIGHTNESS,SATURATION,HUE limits, e.g. 0.2,0.2,0.05, "
                         "or 0 for none")
    return values  # type: ignore[return-value]


def _color_shift_problem(values) -> str | None:
    if len(values) != 3 or any(v < 0 for v in values) or values[0] >= 1 or values[1] >= 1 or values[2] > 0.5:
        return "brightness and saturation must be in [0, 1), hue in [0, 0.5] of a turn (0 for none)"
    return None


def _fractions(what: str):
    def problem(pair) -> str | None:
        lo, hi = pair
        return None if 0 < lo <= hi <= 1 else f"needs 0 < LO <= HI <= 1 (fractions of the canvas {what})"

    return problem


_area_range_problem = _fractions("covered by all objects together")


def _show_pair(pair) -> str:
    return f"{pair[0]:g}-{pair[1]:g}"


def _show_floats(values) -> str:
    return ",".join(f"{v:g}" for v in values)


class ShardedSet:
    """What a set's settings say about its shards (n images, shard_size each)."""

    n: int
    shard_size: int

    @property
    def n_shards(self) -> int:
        return -(-self.n // self.shard_size)

    def shard_range(self, shard_index: int) -> tuple[int, int]:
        """First image index and number of images of one shard."""
        first = shard_index * self.shard_size
        return first, min(self.shard_size, self.n - first)

    def to_json(self) -> dict:
        return to_dict(self)


WHAT, AREA, OBJECTS, MASKS, OUTPUT, RUN = ("what to build", "area and placement", "objects and their transforms",
                                           "object masks", "output", "how to run")


@dataclass(frozen=True)
class BuildConfig(ShardedSet, Settings):
    """Everything that determines the content of a synthetic set."""

    n: int = option(help="number of images; a smaller --n is a prefix of a larger one, so a set can be "
                    "extended by re-running with a larger --n", valid=between(1, MAX_IMAGES), group=WHAT)
    counts: tuple[int, ...] = option((0, 1, 2, 3, 4), "objects per image: a range or list, e.g. 0-4, 1,2,4, 1-9; "
                                     "balanced exactly over the set", flag="--count", parse=parse_counts,
                                     show=format_counts, group=WHAT)
    objects: str | None = option(None, "THUS10000/MSRA10K-layout folder of NAME.jpg + NAME.png (mask) pairs",
                                 default_help="the embedded procedural objects", group=WHAT)
    backgrounds: str | None = option(None, "folder tree of scene images, e.g. SUN397",
                                     default_help="the embedded procedural backgrounds", group=WHAT)
    size: int = option(161, "side of the square RGB images in pixels", valid=between(16, MAX_SIZE), group=WHAT)
    seed: int = option(0, "image i depends only on (seed, i)", valid=SEED_RANGE, group=WHAT)

    area_range: tuple[float, float] = option(
        (0.04, 0.36), "target cumulative object area LO-HI as fractions of the canvas, drawn per image "
        "independently of N", parse=parse_range, show=_show_pair, check=_area_range_problem, group=AREA)
    area_dist: str = option("loguniform", "distribution of the target area", choices=AREA_DISTRIBUTIONS, group=AREA)
    size_jitter: float = option(0.15, "per-object variation of the area share around target/N, as a fraction; "
                                "shares are renormalised to add up to the target",
                                valid=between(0, 1, high_open=True), group=AREA)
    max_occlusion: float = option(0.2, "largest fraction of any object that later objects may hide; 0 = no overlap",
                                  valid=between(0, 1, high_open=True), group=AREA)
    max_outside: float = option(0.0, "largest fraction of an object that may fall outside the canvas; 0 keeps "
                                "objects inside", valid=between(0, 1, high_open=True), group=AREA)
    placement_tries: int = option(100, "random positions tried per object", valid=between(1, MAX_TRIES), group=AREA)
    max_redraws: int = option(50, "times an unplaceable scene is redrawn (same N and area) before the build stops",
                              valid=at_least(1), group=AREA)

    same_object: bool = option(False, "all N objects of an image are copies of one source object (the paper's "
                               "section 4.4)", group=OBJECTS)
    source_objects: int | None = option(None, "use only K source objects, chosen from the seed (the paper used 15)",
                                        default_help="all", valid=at_least(1), metavar="K", group=OBJECTS)
    rotation: float = option(10.0, "largest rotation in degrees, either way", valid=between(0, 180), group=OBJECTS)
    flip_prob: float = option(0.5, "probability of a horizontal flip", valid=between(0, 1), group=OBJECTS)
    color_shift: tuple[float, float, float] = option(
        (0.2, 0.2, 0.05), "colour jitter limits BRIGHTNESS,SATURATION,HUE (albumentations ColorJitter; hue in "
        "turns), or 0 for none", parse=parse_color_shift, show=_show_floats, check=_color_shift_problem,
        group=OBJECTS)

    mask_threshold: float = option(0.5, "share of a mask's maximum at and above which a pixel is object: graded "
                                   "masks (regions at several grey levels) are cut there, and every mask's parts "
                                   "are counted there (README: 'Masks')", valid=between(0, 1, low_open=True),
                                   group=MASKS)
    mask_parts: str = option("skip", "a mask showing several separate objects: skip it (reported), or keep its "
                             "largest part; never pasted whole, since it would put several objects under one count",
                             choices=MASK_PARTS, group=MASKS)

    shard_size: int = option(1000, "images per HDF5 shard", valid=at_least(1), group=OUTPUT)
    compression: str = option("none", "compression of the image datasets", choices=COMPRESSIONS, group=OUTPUT)

    @property
    def pastes_objects(self) -> bool:
        """Whether any scene holds an object: a build of empty scenes alone (--count 0) reads no object."""
        return max(self.counts) > 0

    def content_json(self) -> dict:
        """The values that shape the images, without --n (image i never depends on it) and without the
        source folders' paths (the sources enter the identity by their file lists): what shards record."""
        return {k: v for k, v in self.to_json().items() if k not in ("n", "objects", "backgrounds")}

    @classmethod
    def from_json(cls, data: dict) -> "BuildConfig":
        return from_dict(cls, data)


def _workers_problem(value: int) -> str | None:
    return None if value == -1 or value >= 1 else "give a number of processes >= 1, or -1 for all cores"


@dataclass(frozen=True)
class RunOptions(Settings):
    """How the work is executed; never changes the images."""

    TITLE = RUN

    workers: int = option(-1, "worker processes; -1 = all cores (more than the cores here run as many as there "
                          "are cores, except with dask)", check=_workers_problem)
    backend: str = option("loky", "joblib backend; dask needs --scheduler", choices=BACKENDS)
    scheduler: str | None = option(None, "dask.distributed scheduler address, e.g. tcp://host:8786; workers must "
                                   "see --out and the source folders")
    on_bad_input: str = option("skip", "skip each bad source file with one line saying why, or stop",
                               choices=BAD_INPUT_POLICIES)
    cache_mb: int = option(256, "memory per worker for decoded sources, in MB", valid=at_least(0))
    overwrite: bool = option(False, "replace a different set in --out (only synthgen's own files are removed)")
    progress: bool = progress_option()

    @property
    def workers_sync(self) -> bool:
        """Whether workers flush their shards to disk themselves: dask workers may run on other machines,
        whose writes the main process cannot flush. Local workers share this machine's page cache, so the
        main process flushes their shards in the background (synthgen.writer) and no worker waits on the
        disk."""
        return self.backend == "dask"

    def check(self) -> None:
        if self.backend == "dask" and not self.scheduler:
            raise UsageError("--backend dask needs --scheduler ADDRESS (e.g. tcp://10.0.0.1:8786, "
                             "from `dask scheduler` or a LocalCluster)")
        if self.scheduler and self.backend != "dask":
            raise UsageError("--scheduler is only used with --backend dask")


@dataclass(frozen=True)
class BuildCommand(Settings):
    """`synthgen build`."""

    out: str = option(help="output folder (created; resumed, or extended to a larger --n, if it holds this same "
                      "build)", group=WHAT)
    scene_store: str | None = option(None, "folder that keeps the --backgrounds decoded at --size: the first build "
                                     "naming it decodes every scene into it once, later ones read them from there "
                                     "(the same images; SUN397 at 161: about 11 GB)", group=RUN, metavar="DIR",
                                     check=lambda v: "give a folder" if v is not None and not v.strip() else None)
    config: BuildConfig = None  # type: ignore[assignment]
    run: RunOptions = None  # type: ignore[assignment]


DOT_CONTROLS = ("total-area", "item-size")


def _positive_counts(counts) -> str | None:
    return None if min(counts) >= 1 else "a dot array has at least one dot: counts start at 1"


def _pixels_range_problem(pair) -> str | None:
    lo, hi = pair
    return None if 0 < lo <= hi else "needs 0 < LO <= HI (pixels)"


@dataclass(frozen=True)
class DotConfig(ShardedSet, Settings):
    """Everything that determines a set of dot arrays (Stoianov & Zorzi 2012)."""

    n: int = option(help="number of images; a smaller --n is a prefix of a larger one",
                    valid=between(1, MAX_IMAGES), group=WHAT)
    counts: tuple[int, ...] = option(tuple(range(1, 33)), "dots per image, crossed with the area levels and "
                                     "balanced exactly", flag="--count", parse=parse_counts, show=format_counts,
                                     check=_positive_counts, group=WHAT)
    size: int = option(32, "side of the square images in pixels", valid=between(16, MAX_SIZE), group=WHAT)
    seed: int = option(0, "image i depends only on (seed, i)", valid=SEED_RANGE, group=WHAT)
    control: str = option("total-area", "the property crossed with N: the cumulative area of the dots (Stoianov & "
                          "Zorzi; the item size then falls as N grows) or the mean item size (the cumulative area "
                          "then grows with N)", choices=DOT_CONTROLS, group="the design")
    area_levels: int = option(8, "levels of the crossed property (Stoianov & Zorzi used 8), log-spaced",
                              valid=between(1, 64), group="the design")
    area_range: tuple[float, float] = option(
        (0.03, 0.16), "with --control total-area: the cumulative dot area LO-HI, fractions of the canvas",
        parse=parse_range, show=_show_pair, check=_fractions("covered by all dots together"), group="the design")
    item_range: tuple[float, float] = option(
        (1.5, 8.0), "with --control item-size: the mean dot area LO-HI, in pixels",
        parse=lambda text: parse_range(text, "--item-range"),
        show=_show_pair, check=_pixels_range_problem, group="the design")
    item_jitter: float = option(0.3, "dot sizes vary within an image by up to this share around their mean "
                                "(renormalised to the image's cumulative area)", valid=between(0, 1, high_open=True),
                                group="the design")
    field_range: tuple[float, float] = option(
        (0.8, 0.8), "area of the disc the dots are scattered in, LO-HI as fractions of the canvas, drawn per image "
        "independently of N and area (LO = HI holds the field fixed); the convex hull of each array is recorded",
        parse=lambda text: parse_range(text, "--field-range"), show=_show_pair,
        check=_fractions("taken by the field"), group="the design")
    min_gap: int = option(1, "pixels of background between any two dots, so that every dot is seen (and counted) "
                          "apart", valid=between(1, 16), group="the design")
    placement_tries: int = option(200, "random positions tried per dot", valid=between(1, MAX_TRIES),
                                  group="the design")
    max_redraws: int = option(50, "times an unplaceable array is redrawn (same N and sizes) before the build stops",
                              valid=at_least(1), group="the design")
    shard_size: int = option(1000, "images per HDF5 shard", valid=at_least(1), group=OUTPUT)
    compression: str = option("none", "compression of the image datasets", choices=COMPRESSIONS, group=OUTPUT)

    def content_json(self) -> dict:
        """The values that shape the images: all but --n (image i never depends on it)."""
        return {k: v for k, v in self.to_json().items() if k != "n"}


@dataclass(frozen=True)
class DotsCommand(Settings):
    """`synthgen dots`."""

    out: str = option(help="output folder (created; resumed, or extended to a larger --n, if it holds this same set)",
                      group=WHAT)
    config: DotConfig = None  # type: ignore[assignment]
    run: RunOptions = None  # type: ignore[assignment]


@dataclass(frozen=True)
class PackConfig(Settings):
    """Everything that determines the content of a packed set."""

    root: str = option(help="folder with subfolders 0, 1, 2, 3, 4+ of images (folders 5, 6, ... are 4+ as well), "
                       "or the image root of --split-file's paths", positional=True)
    size: int = option(161, "side of the square images", valid=between(16, MAX_SIZE))
    fit: str = option("squash", "squash to the square (every object stays in view), centre-crop, or pad",
                      choices=FITS)
    split_file: str | None = option(None, "SOS split file: lines 'path,label,split' (paths relative to ROOT; "
                                    "README: 'synthgen pack'); use with --split")
    split: str | None = option(None, "which split of --split-file to pack", choices=SPLITS)
    shard_size: int = option(1000, "images per shard", valid=at_least(1))

    def check(self) -> None:
        if (self.split_file is None) != (self.split is None):
            raise UsageError("--split-file and --split go together: --split-file FILE --split train|test")

    def to_json(self) -> dict:
        return to_dict(self)


@dataclass(frozen=True)
class PackCommand(Settings):
    """`synthgen pack`."""

    out: str = option(help="output folder (created; resumed if it holds this same pack)")
    config: PackConfig = None  # type: ignore[assignment]
    run: RunOptions = None  # type: ignore[assignment]


@dataclass(frozen=True)
class InspectCommand(Settings):
    """`synthgen inspect`."""

    dir: str = option(help="a synthgen output folder", positional=True)
    out: str | None = option(None, "where to write the figures", default_help="DIR/inspect")
    samples: int = option(40, "images on the contact sheet", valid=between(1, 1000))
    progress: bool = progress_option()
    verify_shards: bool = verify_option()


@dataclass(frozen=True)
class VerifyCommand(Settings):
    """`synthgen verify`."""

    dir: str = option(help="a synthgen output folder", positional=True)
    progress: bool = progress_option()


def canonical_json(data) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def build_identity(content: dict, fingerprints: dict, version: str, schema_version: int) -> str:
    """A hash of everything that determines a set's content (the settings that shape the images, the
    source lists, the versions): same identity, same images and labels. Used by build and pack."""
    payload = {"config": content, "sources": fingerprints, "synthgen": version, "schema": schema_version}
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()
