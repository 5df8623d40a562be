"""`synthgen dots`: binary dot arrays (Stoianov & Zorzi 2012), the positive control of the area analyses.

White dots on black, numerosity N crossed with levels of a continuous property, in the synthgen shard
schema (count, areas, one box per dot), so every tool reads the set unchanged. The design:

* **Cells.** N (`--count`, 1-32 by default) crossed with `--area-levels` log-spaced levels of the
  controlled property, block-stratified like `synthgen build`: every block of N x levels images holds
  each cell once, so the set is balanced exactly and image i never depends on --n.
* **What is held fixed.** `--control total-area` (Stoianov & Zorzi): the cumulative dot area takes the
  level, independently of N, and the mean dot size falls as N grows. `--control item-size`: the mean
  dot area takes the level and the cumulative area grows with N. Either way the dot sizes of an image
  vary around their mean by up to `--item-jitter`, renormalised to the image's cumulative area.
* **Field.** The dots are scattered in a disc at the canvas centre whose area is drawn per image from
  `--field-range` (log-uniform), independently of N and area; LO = HI holds it fixed. What a viewer
  sees, the convex hull of the dots, is recorded per image (`field_area`).
* **Rendering.** Binary: a dot is every pixel whose centre lies within its radius (at least one pixel, so
  a design whose smallest dots are well under a pixel is refused: `MIN_DOT_PIXELS`).
  No two dots come closer than `--min-gap` pixels (8-neighbourhood), so each is seen and counted apart:
  an image's dots are exactly its 8-connected white components, and its visible area is its white
  pixel count. target_area holds the designed cumulative area; full_area = visible_area the drawn one.
* **Determinism.** Every draw of image i comes from a stream seeded by (--seed, i).
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import cv2
import numpy as np

from common import streams
from synthgen import __version__
from synthgen.config import DotConfig, RunOptions, build_identity
from synthgen.diskspace import check_room, planned_shards
from synthgen.errors import PlacementError, UsageError, write_failure
from synthgen.manifest import MANIFEST_FORMAT, looks_finished
from synthgen.parallel import local_workers, parallel_backend, workers_of, workers_starting
from synthgen.parts import Part, clear_parts, finish_part, run_set, write_from_parts
from synthgen.plan import draw_area_shares, stratified_cells
from synthgen.reader import read_labels
from synthgen.shards import SCHEMA_VERSION, SHARD_FORMAT, ShardArrays, shard_path, write_shard
from synthgen.stats import field_summary, label_summary
from synthgen.success_rate import expected_failures_text, probe_tail
from synthgen.writer import SetWriter, holding

KIND = "dots"
EXTRA_LABELS = ("field_area",)


def levels_of(config: DotConfig) -> np.ndarray:
    """The levels of the controlled property: cumulative area or mean dot area, in pixels."""
    lo, hi = config.area_range if config.control == "total-area" else config.item_range
    scale = config.size**2 if config.control == "total-area" else 1.0
    return np.exp(np.linspace(math.log(lo), math.log(hi), config.area_levels)) * scale


def cell_of(config: DotConfig, first: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """N and the level index of images first .. first+n-1."""
    cells = stratified_cells(config.seed, len(config.counts) * config.area_levels, first, n)
    return np.asarray(config.counts)[cells // config.area_levels], cells % config.area_levels


def disc_pixels(cx: float, cy: float, area: float, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The pixels (rows, columns) of a dot of `area` pixels centred at (cx, cy): every pixel whose centre is
    within its radius, at least the nearest one."""
    r = math.sqrt(area / math.pi)
    y0, y1 = max(0, int(cy - r - 1)), min(size, int(cy + r + 2))
    x0, x1 = max(0, int(cx - r - 1)), min(size, int(cx + r + 2))
    ys, xs = np.mgrid[y0:y1, x0:x1]
    inside = (xs + 0.5 - cx) ** 2 + (ys + 0.5 - cy) ** 2 <= r * r
    if not inside.any():
        return np.array([min(size - 1, int(cy))]), np.array([min(size - 1, int(cx))])
    return ys[inside], xs[inside]


def convex_hull_area(image: np.ndarray) -> float:
    """Area in pixels of the convex hull of the white pixels (their square outlines)."""
    ys, xs = np.nonzero(image)
    if ys.size == 0:
        return 0.0
    corners = np.concatenate([np.stack([xs + dx, ys + dy], axis=1) for dx in (0, 1) for dy in (0, 1)])
    return float(cv2.contourArea(cv2.convexHull(corners.astype(np.float32))))


def place_dots(rng, areas: np.ndarray, field_area: float, config: DotConfig):
    """One try at an array: the dots (largest first) at random positions in the field; (image, dots) or None.
    Each dot is (rows, cols)."""
    size, gap = config.size, config.min_gap
    image = np.zeros((size, size), bool)
    blocked = np.zeros((size, size), np.uint8)  # the dots grown by the gap: no new pixel may land there
    radius = math.sqrt(field_area / math.pi)
    kernel = np.ones((2 * gap + 1, 2 * gap + 1), np.uint8)
    dots = []
    for area in sorted(areas, reverse=True):
        r = math.sqrt(area / math.pi)
        reach = max(radius - r, 0.0)
        for _ in range(config.placement_tries):
            angle, distance = rng.uniform(0, 2 * math.pi), reach * math.sqrt(rng.uniform())
            cx, cy = size / 2 + distance * math.cos(angle), size / 2 + distance * math.sin(angle)
            if not (r <= cx <= size - r and r <= cy <= size - r):
                continue
            rows, cols = disc_pixels(cx, cy, area, size)
            if not blocked[rows, cols].any():
                break
        else:
            return None
        image[rows, cols] = True
        dot = np.zeros((size, size), np.uint8)
        dot[rows, cols] = 1
        blocked |= cv2.dilate(dot, kernel)
        dots.append((rows, cols))
    return image, dots


def render(index: int, count: int, level: float, config: DotConfig) -> dict:
    """Image `index`: N dots at the level of the controlled property, as arrays and labels."""
    rng = streams.rng(config.seed, streams.DOTS, index)
    lo, hi = config.field_range
    field_area = math.exp(rng.uniform(math.log(lo), math.log(hi))) * config.size**2
    total = level if config.control == "total-area" else level * count
    areas = total * draw_area_shares(rng, count, config.item_jitter)
    for _ in range(config.max_redraws):
        placed = place_dots(rng, areas, field_area, config)
        if placed is not None:
            break
    else:
        raise PlacementError(
            f"image {index}: could not place {count} dots covering {total:.0f} pixels in a field of "
            f"{field_area:.0f} pixels with {config.min_gap} pixel(s) between dots: tried {config.max_redraws} "
            f"redraws of {config.placement_tries} positions per dot. Lower the top of --area-range (or --item-range), "
            "widen --field-range, or lower --min-gap, then build into a new --out (or add --overwrite)", index)
    image, dots = placed
    objects = [(0, (int(c.min()), int(r.min()), int(c.max()) + 1, int(r.max()) + 1), float(r.size), float(r.size))
               for r, c in dots]
    drawn = float(image.sum())
    return {"image": np.repeat((image * np.uint8(255))[..., None], 3, axis=2), "count": count, "target_area": total,
            "full_area": drawn, "visible_area": drawn, "objects": objects, "field_area": convex_hull_area(image)}


def _config(config_json: dict) -> DotConfig:
    return DotConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in config_json.items()})


def _dot_rows(config: DotConfig, first: int, n: int) -> dict[str, np.ndarray]:
    """The shard arrays of dot images first .. first+n-1."""
    counts, level_index = cell_of(config, first, n)
    levels = levels_of(config)
    shard = ShardArrays(config.size)
    for row in range(n):
        dots = render(first + row, int(counts[row]), float(levels[level_index[row]]), config)
        shard.add(dots["image"], count=dots["count"], index=first + row,
                  image_seed=streams.seed64(config.seed, streams.DOTS, first + row), target_area=dots["target_area"],
                  full_area=dots["full_area"], visible_area=dots["visible_area"], objects=dots["objects"],
                  extra={"field_area": dots["field_area"]})
    return shard.arrays()


def _write(out_dir: str, shard_index: int, arrays: dict, config: DotConfig, identity: str, sync: bool) -> str:
    first, n = config.shard_range(shard_index)
    attrs = {"format": SHARD_FORMAT, "schema_version": SCHEMA_VERSION, "synthgen_version": __version__, "kind": KIND,
             "build_identity": identity, "config_json": json.dumps(config.content_json(), sort_keys=True),
             "seed": config.seed, "shard_index": shard_index, "first_index": first, "n_images": n,
             "image_size": config.size}
    path = shard_path(out_dir, shard_index)
    try:
        return write_shard(path, arrays, attrs, config.compression, sync)
    except OSError as exc:
        raise write_failure(path.name, out_dir, exc) from None


def dot_shard(out_dir: str, shard_index: int, config_json: dict, identity: str, sync: bool) -> dict:
    """Render and write one shard of dot arrays (runs in a worker; `sync` as in build.build_shard)."""
    started = time.perf_counter()
    config = _config(config_json)
    first, n = config.shard_range(shard_index)
    checksum = _write(out_dir, shard_index, _dot_rows(config, first, n), config, identity, sync)
    return {"shard": shard_index, "n_images": n, "checksum": checksum, "seconds": time.perf_counter() - started}


def dot_part(out_dir: str, parts: list[Part], index: int, config_json: dict, identity: str, sync: bool) -> dict:
    """Render part `index` of a shard's `parts` (synthgen.parts), and the shard if that completes it."""
    started = time.perf_counter()
    config, part = _config(config_json), parts[index]
    arrays = _dot_rows(config, config.shard_range(part.shard)[0] + part.first_row, part.n_rows)
    written = finish_part(out_dir, parts, index, arrays,
                          lambda joined: _write(out_dir, part.shard, joined, config, identity, sync))
    return {"shard": part.shard, "part": part.index, "n_images": part.n_rows, **written,
            "seconds": time.perf_counter() - started}


def dot_assemble(out_dir: str, parts: list[Part], config_json: dict, identity: str, sync: bool) -> dict:
    """Write a shard from its parts where no part's worker did (runs in a worker)."""
    started = time.perf_counter()
    config, shard = _config(config_json), parts[0].shard
    checksum = write_from_parts(out_dir, parts,
                                lambda joined: _write(out_dir, shard, joined, config, identity, sync))
    return {"shard": shard, "n_images": 0, "checksum": checksum, "seconds": time.perf_counter() - started}


# A dot is drawn as at least one pixel, so a small one is drawn larger than designed: by 11% on average at 0.96 px
# (the defaults' smallest, N = 32 at the lowest level), a third at 0.75 px, twice at 0.5 px. Beyond a third the
# drawn cumulative area grows with N, the very confound the design holds apart.
MIN_DOT_PIXELS = 0.75


def small_dots_problem(config: DotConfig, smallest_dot: float) -> str:
    """Why a design whose smallest dots are drawn much larger than designed is refused, and what would do."""
    drawn = (f"a dot is drawn as at least one pixel, so one under {MIN_DOT_PIXELS} px comes out a third or more "
             "larger than designed")
    if config.control == "item-size":
        lo, hi = config.item_range
        return (f"--item-range {lo:g}-{hi:g}: the smallest level's dots would cover {smallest_dot:.2g} px on average; "
                f"{drawn}, and the lowest levels would not hold in the images. Raise the bottom of --item-range to "
                f"{MIN_DOT_PIXELS} or more")
    lo, hi = config.area_range
    most = max(config.counts)
    size = math.ceil(math.sqrt(MIN_DOT_PIXELS * most / lo))
    return (f"--area-range {lo:g}-{hi:g} at --size {config.size}: the smallest dots ({most} dots at the lowest level) "
            f"would cover {smallest_dot:.2g} px on average; {drawn}, and the drawn cumulative area would grow with N, "
            f"the confound the design removes. Build at --size {size} or more, raise the bottom of --area-range to "
            f"{MIN_DOT_PIXELS * most / config.size**2:.3g}, or use fewer dots (--count)")


def smallest_field(config: DotConfig, share: float) -> float:
    """The field area in pixels that a `share` of the images fall below (render's log-uniform draw)."""
    lo, hi = config.field_range
    return lo * (hi / lo) ** share * config.size**2


# Trial arrays of each probed cell (their dot sizes differ; redraws keep an image's sizes, so each is probed apart).
PROBE_ARRAYS = 4


def check_feasible(config: DotConfig) -> None:
    """Refuse, before any work, a design whose levels cannot show in the images, or whose arrays of some count
    at the top level in the smallest field come out too rarely for every image of the set to be placed
    (synthgen.success_rate). The same for every --seed."""
    levels = levels_of(config)
    largest_dot = levels[-1] / min(config.counts) if config.control == "total-area" else levels[-1]
    if largest_dot < 1:  # a dot is at least one pixel: every level would be drawn the same
        option, (lo, hi) = (("--area-range", config.area_range) if config.control == "total-area" else
                            ("--item-range", config.item_range))
        raise UsageError(f"{option} {lo:g}-{hi:g}: even the largest dots would cover {largest_dot:.2g} px on average, "
                         "less than a pixel; every dot is drawn as at least one pixel, so the levels would not differ "
                         f"in the images. Raise {option} so that dots cover a pixel or more")
    smallest_dot = levels[0] / max(config.counts) if config.control == "total-area" else levels[0]
    if smallest_dot < MIN_DOT_PIXELS:
        raise UsageError(small_dots_problem(config, smallest_dot))
    # The images of the probed cell (the design is block-stratified: each cell holds n / cells), their fields drawn
    # log-uniformly: the smallest field stands for the few images near it (success_rate.probe_tail). At
    # --field-range 0.35-0.9 --area-range 0.03-0.12, where the hardest array comes out 1 try in 50, two of four
    # seeds' builds of 25,600 stopped part-way.
    # Every count: two dots sharing the top level's area can come out more rarely than three (79% against 98%
    # of tries in the smallest field of --field-range 0.38-0.9 --area-range 0.03-0.12).
    cell_images = config.n / (len(config.counts) * config.area_levels)
    for count in sorted(set(config.counts), reverse=True):
        total = levels[-1] if config.control == "total-area" else levels[-1] * count

        def arrays_at(share: float) -> list:
            field = smallest_field(config, share)
            tries = []
            for array in range(PROBE_ARRAYS):
                rng = streams.rng(streams.DESIGN, streams.PROBE, count, array)
                areas = total * draw_area_shares(rng, count, config.item_jitter)
                tries.append(lambda rng=rng, areas=areas: place_dots(rng, areas, field, config) is not None)
            return tries

        verdict = probe_tail(arrays_at, config.max_redraws, cell_images)
        if not verdict.passed:
            field = smallest_field(config, verdict.share)
            at_bottom = field <= config.field_range[0] * config.size**2  # a fixed field: every array
            where = ("the smallest of --field-range" if at_bottom else
                     f"{verdict.share:.2%} of these arrays have a smaller field")
            raise UsageError(
                f"cannot place {count} dots covering {total:.0f} pixels in a field of {field:.0f} pixels ({where}) "
                f"with {config.min_gap} pixel(s) between dots often enough: the hardest trial array came out in "
                f"{verdict.hardest.describe()}, so with --max-redraws {config.max_redraws}, "
                f"{expected_failures_text(verdict, f'with {count} dots at the top level and about that field')}. "
                "Raise the bottom of --field-range, lower the top of --area-range (or --item-range), lower "
                "--min-gap, use fewer dots (--count), or raise --max-redraws")


WORKER_MODULES = ("synthgen.dots",)  # imported in every worker's first task (parallel.in_worker)


def dots(config: DotConfig, run: RunOptions, out_dir, command: list[str] | None = None, log=print) -> dict:
    """Build (or resume, or extend) a set of dot arrays in `out_dir`; returns the summary."""
    started = time.perf_counter()
    likely_needed = run.overwrite or not looks_finished(out_dir, config.n)
    with holding(out_dir) as lock:  # the folder is this command's from its first look into it to the end
        with workers_starting(run, WORKER_MODULES, likely_needed) as workers_started:  # they start while this checks
            return _dots(config, run, out_dir, command, log, started, workers_started, lock)


def _dots(config: DotConfig, run: RunOptions, out_dir, command: list[str] | None, log, started: float,
          workers_started, lock) -> dict:
    out = Path(out_dir).resolve()
    identity = build_identity(config.content_json(), {"source": f"{KIND}-v1"}, __version__, SCHEMA_VERSION)
    writer = SetWriter(out, {"format": MANIFEST_FORMAT, "schema_version": SCHEMA_VERSION,
                             "synthgen_version": __version__, "kind": KIND, "build_identity": identity,
                             "command": command, "config": config.to_json(), "n_images": config.n,
                             "image_size": config.size, "n_shards": config.n_shards,
                             "extra_labels": list(EXTRA_LABELS), "levels": levels_of(config).tolist()}, log,
                       sync_shards=not run.workers_sync, lock=lock)
    done = writer.check(config.n_shards, run.overwrite,
                        lambda old: f"the dot design differs (was {old.get('command')})",
                        keep=lambda s, attrs: (attrs["first_index"], attrs["n_images"]) == config.shard_range(s),
                        n_images=config.n, progress=run.progress)
    todo = [s for s in range(config.n_shards) if s not in done]
    if todo:
        check_feasible(config)
        sizes = {s: config.shard_range(s)[1] for s in todo}
        check_room(planned_shards(out, todo, sizes, local_workers(run), config.size, config.compression),
                   freed={out: writer.replaced_bytes()})
    writer.begin()
    results, workers, in_parts = [], None, 0
    if todo:
        workers_started()
        with parallel_backend(run) as client:
            workers = workers_of(client, run)
            args = (config.to_json(), identity, run.workers_sync)
            try:
                results, in_parts = run_set(
                    out, todo, {s: config.shard_range(s)[1] for s in todo}, workers,
                    whole=lambda shard: (dot_shard, (str(out), shard, *args)),
                    part=lambda parts, index: (dot_part, (str(out), parts, index, *args)),
                    assemble=lambda parts: (dot_assemble, (str(out), parts, *args)),
                    writer=writer, total=config.n, progress=run.progress, desc="synthgen dots",
                    preload=WORKER_MODULES)
                writer.settle()
            except PlacementError as exc:
                writer.fail({"image": exc.index, "message": str(exc)})
                raise
    labels = read_labels([shard_path(out, s) for s in range(config.n_shards)],
                         ("count", "target_area", "visible_area", "field_area"))
    summary = label_summary(labels["count"], labels["target_area"], labels["visible_area"], config.size)
    summary["field_area"] = field_summary(labels["count"], labels["field_area"], config.size)
    built = sum(r["n_images"] for r in results)
    seconds = time.perf_counter() - started
    summary.update({"images_built": built, "images_resumed": config.n - built, "workers": workers,
                    "render_seconds": round(seconds, 3), "total_seconds": round(seconds, 3),
                    "images_per_second": round(built / seconds, 1) if built else None, "shards_in_parts": in_parts})
    writer.finish(config.n_shards, summary)
    clear_parts(out)  # the claims of this run, or parts an interrupted one left
    return summary
