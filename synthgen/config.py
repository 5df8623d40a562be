"""The build configuration: every argument that shapes the images, validated in one place.

A `BuildConfig` is saved with every output (manifest and shard attributes), so any set can be traced
back to the command that made it. Arguments that only change how the work is run (workers, backend,
cache size) live in `RunOptions` and do not change the images.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass

from synthgen.errors import UsageError

MAX_COUNT = 64
AREA_DISTRIBUTIONS = ("loguniform", "uniform")
COMPRESSIONS = ("none", "lzf", "gzip")
BACKENDS = ("loky", "multiprocessing", "threading", "dask")
BAD_INPUT_POLICIES = ("skip", "fail")


def parse_counts(text: str) -> tuple[int, ...]:
    """Parse a count spec such as '0-4', '1,2,4' or '0-2,5' into sorted unique counts."""
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
            counts.add(int(match.group(3)))
            continue
        lo, hi = int(match.group(1)), int(match.group(2))
        if lo > hi:
            raise UsageError(f"--count {text!r}: range {part!r} must go from low to high, e.g. {hi}-{lo}")
        counts.update(range(lo, hi + 1))
    if max(counts) > MAX_COUNT:
        raise UsageError(f"--count {text!r}: at most {MAX_COUNT} objects per image are supported")
    return tuple(sorted(counts))


def parse_range(text: str, option: str) -> tuple[float, float]:
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
    if len(values) != 3 or any(v < 0 for v in values) or values[0] >= 1 or values[1] >= 1 or values[2] > 0.5:
        raise UsageError(f"--color-shift {text!r}: give BRIGHTNESS,SATURATION,HUE limits, e.g. 0.2,0.2,0.05 "
                         "(brightness and saturation in [0, 1), hue in [0, 0.5] of a turn), or 0 for none")
    return values  # type: ignore[return-value]


@dataclass(frozen=True)
class BuildConfig:
    """Everything that determines the content of a synthetic set."""

    n: int
    counts: tuple[int, ...] = (0, 1, 2, 3, 4)
    size: int = 161
    area_range: tuple[float, float] = (0.04, 0.36)
    area_dist: str = "loguniform"
    size_jitter: float = 0.15
    max_occlusion: float = 0.2
    max_outside: float = 0.0
    same_object: bool = False
    source_objects: int | None = None
    rotation: float = 10.0
    flip_prob: float = 0.5
    color_shift: tuple[float, float, float] = (0.2, 0.2, 0.05)
    seed: int = 0
    shard_size: int = 1000
    compression: str = "none"
    placement_tries: int = 100
    max_redraws: int = 50
    objects: str | None = None
    backgrounds: str | None = None

    def __post_init__(self):
        def check(ok, option, value, what):
            if not ok:
                raise UsageError(f"{option} {value!r}: {what}")

        check(isinstance(self.n, int) and self.n >= 1, "--n", self.n, "must be a whole number of images >= 1")
        check(len(self.counts) >= 1, "--count", self.counts, "needs at least one count")
        check(16 <= self.size <= 2048, "--size", self.size, "must be between 16 and 2048 pixels")
        lo, hi = self.area_range
        check(0 < lo <= hi <= 1, "--area-range", f"{lo}-{hi}",
              "needs 0 < LO <= HI <= 1 (fractions of the canvas covered by all objects together)")
        check(self.area_dist in AREA_DISTRIBUTIONS, "--area-dist", self.area_dist,
              f"choose one of {AREA_DISTRIBUTIONS}")
        check(0 <= self.size_jitter < 1, "--size-jitter", self.size_jitter, "must be in [0, 1)")
        check(0 <= self.max_occlusion < 1, "--max-occlusion", self.max_occlusion, "must be in [0, 1)")
        check(0 <= self.max_outside < 1, "--max-outside", self.max_outside, "must be in [0, 1)")
        check(self.source_objects is None or self.source_objects >= 1, "--source-objects",
              self.source_objects, "must be >= 1")
        check(0 <= self.rotation <= 180, "--rotation", self.rotation, "must be in [0, 180] degrees")
        check(0 <= self.flip_prob <= 1, "--flip-prob", self.flip_prob, "must be a probability in [0, 1]")
        check(0 <= self.seed < 2**63, "--seed", self.seed, "must be a non-negative integer")
        check(self.shard_size >= 1, "--shard-size", self.shard_size, "must be >= 1")
        check(self.compression in COMPRESSIONS, "--compression", self.compression, f"choose one of {COMPRESSIONS}")
        check(self.placement_tries >= 1, "--placement-tries", self.placement_tries, "must be >= 1")
        check(self.max_redraws >= 1, "--max-redraws", self.max_redraws, "must be >= 1")

    @property
    def n_shards(self) -> int:
        return -(-self.n // self.shard_size)

    def shard_range(self, shard_index: int) -> tuple[int, int]:
        """First image index and number of images of one shard."""
        first = shard_index * self.shard_size
        return first, min(self.shard_size, self.n - first)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "BuildConfig":
        fields = {f.name for f in dataclasses.fields(cls)}
        data = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k in fields}
        return cls(**data)


@dataclass(frozen=True)
class RunOptions:
    """How the build is executed; never changes the images."""

    workers: int = -1
    backend: str = "loky"
    scheduler: str | None = None
    overwrite: bool = False
    on_bad_input: str = "skip"
    cache_mb: int = 256
    progress: bool = True

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise UsageError(f"--backend {self.backend!r}: choose one of {BACKENDS}")
        if self.backend == "dask" and not self.scheduler:
            raise UsageError("--backend dask needs --scheduler ADDRESS (e.g. tcp://10.0.0.1:8786, "
                             "from `dask scheduler` or a LocalCluster)")
        if self.scheduler and self.backend != "dask":
            raise UsageError("--scheduler is only used with --backend dask")
        if self.workers == 0 or self.workers < -1:
            raise UsageError(f"--workers {self.workers}: give a number of processes >= 1, or -1 for all cores")
        if self.on_bad_input not in BAD_INPUT_POLICIES:
            raise UsageError(f"--on-bad-input {self.on_bad_input!r}: choose one of {BAD_INPUT_POLICIES}")
        if self.cache_mb < 0:
            raise UsageError(f"--cache-mb {self.cache_mb}: must be >= 0")


def canonical_json(data) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def build_identity(config_json: dict, fingerprints: dict, version: str, schema_version: int) -> str:
    """A hash of everything that determines a set's content (the settings, the source lists, the
    versions): same identity, same images and labels. Used by build and pack."""
    payload = {"config": config_json, "sources": fingerprints, "synthgen": version, "schema": schema_version}
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()
