"""`synthgen build`: check everything up front, then render and write shards in parallel.

Order of work: scan the sources -> check the output folder (resume, extend or refuse) -> probe
feasibility -> check disk space -> write a provisional manifest -> with --scene-store, decode every scene
once into the store unless it holds them (synthgen.scenes) -> decode every object once into the shared
prepared store -> write sources.json -> render shards with joblib (each task renders and
writes one whole shard; a partial last round goes in parts, synthgen.parts) -> read the labels back for
the summary -> write the final manifest and drop the store. Nothing is written before the checks pass,
and a shard appears only when complete. In the code, `_build` reads in that order: `checked_scene_store` and
`open_set_writer`, then `check_before_writing` (the folder, the object pool, the feasibility probes, the room
on disk), `prepare_and_render` (everything the workers do) and `summarise`.

A set's identity (`build_identity`) covers what shapes its images: the settings but --n, the source
file lists, the versions. Image i depends only on (seed, i), so a set is extended by re-running with
a larger --n: the full shards are kept, the last partial one is rebuilt, the rest is added.
"""
from __future__ import annotations

import json
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.cli import out_folder_problem
from common.settings import changed_values
from synthgen import __version__
from synthgen.compositor import STAGES, Compositor
from synthgen.config import BuildConfig, RunOptions, build_identity
from synthgen.diskspace import Planned, check_room, planned_shards
from synthgen.errors import BadInputError, PlacementError, UsageError, write_failure
from synthgen.feasibility import check_feasible
from synthgen.manifest import MANIFEST, MANIFEST_FORMAT, SOURCES, looks_finished, write_json_atomic
from synthgen.masks import MaskRule
from synthgen.parallel import (allow_growth, local_workers, parallel_backend, run_tasks, timeline, workers_starting,
                               workers_of)
from synthgen.parts import Part, finish_part, run_set, write_from_parts
from synthgen.plan import counts_for, keep_more, left_out_because, object_pool_order, too_small_problem
from synthgen.prepared import (PREPARED_DIR, PreparedObjects, prepare_objects, prepared_complete, store_bytes_at_most,
                               store_dir)
from synthgen.procedural import N_BACKGROUNDS, N_OBJECTS, ProceduralBackgrounds, ProceduralObjects
from synthgen.reader import read_labels
from synthgen.scenes import StoredBackgrounds, check_store, estimated_store_bytes, make_store, read_store
from synthgen.shards import SCHEMA_VERSION, SHARD_FORMAT, ShardArrays, shard_path, write_shard
from synthgen.sources import (FolderBackgrounds, FolderObjects, Skipped, inside_sources_problem, scan_backgrounds,
                              scan_objects)
from synthgen.stats import label_summary, mask_summary
from synthgen.writer import SetWriter, holding


@dataclass
class Sources:
    """The sources of a build, as the main process sees them."""

    description: dict  # what sources.json records, and what workers rebuild the sources from
    fingerprints: dict
    skipped: list[Skipped] = field(default_factory=list)


def scan_sources(config: BuildConfig) -> Sources:
    """Scan --objects and --backgrounds (or take the procedural default) and fingerprint the lists."""
    description, fingerprints, skipped = {}, {}, []
    rule = {"mask_threshold": config.mask_threshold, "mask_parts": config.mask_parts}
    if config.objects:
        pairs, bad, fingerprints["objects"] = scan_objects(config.objects)
        description["objects"] = {"kind": "folder", "root": str(Path(config.objects).resolve()), "pairs": pairs,
                                  "count": len(pairs), **rule}
        skipped += bad
    else:
        description["objects"] = {"kind": "procedural", "count": N_OBJECTS, **rule}
        fingerprints["objects"] = f"procedural-objects-v1:{N_OBJECTS}"
    if config.backgrounds:
        files, bad, fingerprints["backgrounds"] = scan_backgrounds(config.backgrounds)
        description["backgrounds"] = {"kind": "folder", "root": str(Path(config.backgrounds).resolve()),
                                      "files": files, "count": len(files)}
        skipped += bad
    else:
        description["backgrounds"] = {"kind": "procedural", "count": N_BACKGROUNDS}
        fingerprints["backgrounds"] = f"procedural-backgrounds-v1:{N_BACKGROUNDS}"
    return Sources(description, fingerprints, skipped)


def open_objects(description: dict, cache_bytes: int):
    """The object source described in sources.json (decoding directly, with a cache)."""
    objects = description["objects"]
    rule = MaskRule(objects["mask_threshold"], objects["mask_parts"])
    if objects["kind"] == "folder":
        return FolderObjects(objects["root"], objects["pairs"], cache_bytes, rule)
    return ProceduralObjects(objects["count"], cache_bytes, rule)


def open_backgrounds(description: dict, cache_bytes: int):
    """The background source described in sources.json, with a cache."""
    backgrounds = description["backgrounds"]
    if backgrounds.get("store"):  # the same scenes, decoded once before (synthgen.scenes)
        return StoredBackgrounds(backgrounds["store"], backgrounds["root"], cache_bytes)
    if backgrounds["kind"] == "folder":
        return FolderBackgrounds(backgrounds["root"], backgrounds["files"], cache_bytes)
    return ProceduralBackgrounds(backgrounds["count"], cache_bytes)


def select_object_pool(config: BuildConfig, objects, sizer: Compositor, on_bad_input: str, skipped: list,
                       too_large: set) -> list[int] | None:
    """With --source-objects K: K usable objects that fit the canvas, tried in an order drawn from the seed
    (None: all)."""
    if config.source_objects is None or not config.pastes_objects:  # scenes without objects draw from no pool
        return None
    pool = []
    for k in object_pool_order(len(objects), config.seed).tolist():
        try:
            cutout = objects.load(k, config.size)
        except BadInputError as error:
            if on_bad_input == "fail":
                raise
            skipped.append(Skipped(error.path, error.reason))
            continue
        if not sizer.eligible(k, cutout):
            too_large.add(k)
            continue
        pool.append(k)
        if len(pool) == config.source_objects:
            return sorted(pool)
    available = "1 usable object is" if len(pool) == 1 else f"{len(pool)} usable objects are"
    message = f"--source-objects {config.source_objects}: only {available} available"
    fewer = f"ask for {len(pool)} or fewer, " if pool else ""
    if not too_large:
        raise UsageError(f"{message}: {fewer}give more objects (--objects)")
    raise UsageError(f"{message}; {len(too_large)} more are each {left_out_because(config)}. To go on, {fewer}"
                     f"give more objects (--objects), or {keep_more(config)}")


def few_objects_note(config: BuildConfig, appear: int, left_out: int) -> str | None:
    """A note, before any image is made, when the design leaves out more objects than it keeps: the set
    then varies its objects far less than its sources do, which a user reading only the count histogram
    would not know (None when at least half can appear, and with --source-objects, which asks for its number)."""
    if not config.pastes_objects or config.source_objects is not None or left_out <= appear:
        return None
    return (f"synthgen: note: only {appear} of the {appear + left_out} objects that were tried can appear; "
            f"{left_out} are each {left_out_because(config)}, so the set's objects vary much less than its sources. "
            f"To keep more, {keep_more(config)}")


def planned_writes(out: Path, config: BuildConfig, todo: list[int], workers: int | None, objects_to_prepare: int,
                   scene_store: Path | None = None, scene_bytes: int = 0) -> list[Planned]:
    """What the build will write, for diskspace.check_room: its shards (raw ones: the size of compressed ones is
    not known before), with the parts a partial last round holds besides (`workers`: None where a dask cluster
    has not said yet); the prepared object store of `objects_to_prepare` objects; a scene store to make."""
    sizes = {s: config.shard_range(s)[1] for s in todo}
    planned = planned_shards(out, todo, sizes, workers, config.size, config.compression)
    if objects_to_prepare:
        planned.append(Planned("--out", out, "decoded objects (while it runs)",
                               store_bytes_at_most(objects_to_prepare, config.size), at_most=True))
    if scene_store is not None and scene_bytes:
        planned.append(Planned("--scene-store", scene_store, "decoded scenes (kept for later builds)", scene_bytes,
                               remedy="build without --scene-store"))
    return planned


def check_same_pool(out: Path, done, usable: list[int], previous: dict) -> None:
    """Refuse to add shards that would draw their objects from another pool than the finished ones did (a set
    begun by a synthgen that decided otherwise which objects can appear): put the set back as it was, and say so."""
    recorded = out / SOURCES
    kept = json.loads(recorded.read_text()).get("pool") if done and recorded.exists() else None
    if kept is None or kept == usable:
        return
    if previous:
        write_json_atomic(out / MANIFEST, previous)
        if previous.get("complete"):
            shutil.rmtree(out / PREPARED_DIR, ignore_errors=True)
    raise UsageError(f"--out {out}: its {len(done)} finished shard(s) drew their objects from {len(kept)} objects, "
                     f"but {len(usable)} can appear now (this synthgen decides differently which objects can appear "
                     "at every area and count); shards from both would mix two sets. The set is left as it was: "
                     "build into a new --out, or add --overwrite")


# ------------------------------------------------------------------ worker side

_COMPOSITORS: dict = {}
WORKER_MODULES = ("synthgen.build",)  # imported in every worker's first task (parallel.in_worker)


def _worker_compositor(out_dir: str, identity: str, config: BuildConfig, cache_mb: int, on_bad_input: str):
    """One compositor per worker process (and thread), reused across shards: its caches persist."""
    key = (out_dir, identity, cache_mb, on_bad_input, threading.get_ident())
    compositor = _COMPOSITORS.get(key)
    if compositor is None:
        description = json.loads((Path(out_dir) / SOURCES).read_text())
        # Objects are reused across images, backgrounds (in large sets) hardly: objects get most memory.
        cache = cache_mb << 20
        allow_growth(cache)
        objects = PreparedObjects(store_dir(out_dir, config.size), description["objects"]["count"], cache * 3 // 4)
        backgrounds = open_backgrounds(description, cache // 4)
        if len(_COMPOSITORS) > 8:
            _COMPOSITORS.clear()
        compositor = _COMPOSITORS[key] = Compositor(config, objects, backgrounds, description["pool"], on_bad_input)
        compositor.eligible.known.update(objects.eligible)  # found once, while preparing the store
    return compositor


def shard_attrs(config: BuildConfig, identity: str, fingerprints: dict, shard_index: int) -> dict:
    """A shard's provenance: only what determines its content (not --n, not how a path was spelled),
    so checksums match across runs, resumes and extensions."""
    first, n = config.shard_range(shard_index)
    return {
        "format": SHARD_FORMAT, "schema_version": SCHEMA_VERSION, "synthgen_version": __version__,
        "build_identity": identity, "config_json": json.dumps(config.content_json(), sort_keys=True),
        "seed": config.seed, "shard_index": shard_index, "first_index": first, "n_images": n,
        "image_size": config.size, "objects_fingerprint": fingerprints["objects"],
        "backgrounds_fingerprint": fingerprints["backgrounds"],
    }


def shard_arrays(scenes: list, size: int) -> dict[str, np.ndarray]:
    """The datasets of a shard (docs/SHARD_FORMAT.md) from its rendered scenes."""
    shard = ShardArrays(size)
    for scene in scenes:
        shard.add(scene.image, count=scene.count, index=scene.index, image_seed=scene.image_seed,
                  target_area=scene.target_area, full_area=scene.full_area, visible_area=scene.visible_area,
                  background_id=scene.background_id,
                  objects=[(o.source_id, o.box, o.full_area, o.visible_area) for o in scene.objects])
    return shard.arrays()


def _render_rows(out_dir: str, config: BuildConfig, identity: str, cache_mb: int, on_bad_input: str, first: int,
                 n: int) -> tuple[dict[str, np.ndarray], dict]:
    """Render images first .. first+n-1 in this worker: their shard arrays, and what the task's result
    reports of them (stage times, bad inputs met, objects found too large)."""
    compositor = _worker_compositor(out_dir, identity, config, cache_mb, on_bad_input)
    timings_before = dict(compositor.timings)
    skipped_before = len(compositor.skipped)
    scenes = [compositor.render(first + row, int(count)) for row, count in enumerate(counts_for(config, first, n))]
    arrays_start = time.perf_counter()
    arrays = shard_arrays(scenes, config.size)
    timings = {stage: compositor.timings.get(stage, 0.0) - timings_before.get(stage, 0.0) for stage in STAGES}
    timings["write"] = time.perf_counter() - arrays_start  # assembling the arrays is part of writing them
    return arrays, {"n_images": n, "timings": timings, "pid": os.getpid(),
                    "skipped": [(s.path, s.reason) for s in compositor.skipped[skipped_before:]],
                    "too_large": sorted(compositor.too_large)}


def _write(out_dir: str, shard_index: int, arrays: dict, config: BuildConfig, identity: str, fingerprints: dict,
           sync: bool) -> str:
    path = shard_path(out_dir, shard_index)
    try:
        return write_shard(path, arrays, shard_attrs(config, identity, fingerprints, shard_index), config.compression,
                           sync)
    except OSError as exc:
        raise write_failure(path.name, out_dir, exc) from None


def build_shard(out_dir: str, shard_index: int, config_json: dict, identity: str, fingerprints: dict,
                cache_mb: int, on_bad_input: str, sync: bool) -> dict:
    """Render and write one whole shard (runs in a worker; `sync`: flush it to disk here, else the main
    process does). Returns what the summary needs."""
    started = time.perf_counter()
    config = BuildConfig.from_json(config_json)
    first, n = config.shard_range(shard_index)
    arrays, result = _render_rows(out_dir, config, identity, cache_mb, on_bad_input, first, n)
    write_start = time.perf_counter()
    checksum = _write(out_dir, shard_index, arrays, config, identity, fingerprints, sync)
    result["timings"]["write"] += time.perf_counter() - write_start
    return {"shard": shard_index, "checksum": checksum, "seconds": time.perf_counter() - started, **result}


def render_part(out_dir: str, parts: list[Part], index: int, config_json: dict, identity: str, fingerprints: dict,
                cache_mb: int, on_bad_input: str, sync: bool) -> dict:
    """Render part `index` of a shard's `parts` (synthgen.parts); if that completes the shard, write the
    shard too (its result then has a "checksum"). Runs in a worker."""
    started = time.perf_counter()
    config = BuildConfig.from_json(config_json)
    part = parts[index]
    first = config.shard_range(part.shard)[0] + part.first_row
    arrays, result = _render_rows(out_dir, config, identity, cache_mb, on_bad_input, first, part.n_rows)
    write_start = time.perf_counter()
    result |= finish_part(out_dir, parts, index, arrays,
                          lambda joined: _write(out_dir, part.shard, joined, config, identity, fingerprints, sync))
    result["timings"]["write"] += time.perf_counter() - write_start
    return {"shard": part.shard, "part": part.index, "seconds": time.perf_counter() - started, **result}


def assemble_shard(out_dir: str, parts: list[Part], config_json: dict, identity: str, fingerprints: dict,
                   sync: bool) -> dict:
    """Write a shard from its rendered parts where no part's worker did (runs in a worker). Its images were
    counted with the parts: the result has none of its own."""
    started = time.perf_counter()
    config, shard = BuildConfig.from_json(config_json), parts[0].shard
    checksum = write_from_parts(out_dir, parts,
                                lambda joined: _write(out_dir, shard, joined, config, identity, fingerprints, sync))
    seconds = time.perf_counter() - started
    return {"shard": shard, "checksum": checksum, "n_images": 0,
            "timings": {**dict.fromkeys(STAGES, 0.0), "write": seconds}, "seconds": seconds, "skipped": [],
            "too_large": []}


# ------------------------------------------------------------------ main process


def _scene_store(store: Path, ready: bool, sources: Sources, size: int, run: RunOptions, workers: int, log) -> None:
    """Make the scene store unless it holds these scenes already; say which."""
    backgrounds = sources.description["backgrounds"]
    if ready:
        log(f"synthgen: reading the scenes from --scene-store {store} (decoded at {size} pixels by an earlier build)")
        return
    started = time.perf_counter()
    usable = make_store(store, backgrounds["root"], backgrounds["files"], sources.fingerprints["backgrounds"], size,
                        lambda calls: run_tasks(calls, run.progress and len(calls) > 1,
                                                "synthgen decoding the scenes once", preload=WORKER_MODULES), workers)
    log(f"synthgen: decoded {usable} scenes of {backgrounds['root']} at {size} pixels into --scene-store {store} "
        f"in {time.perf_counter() - started:.1f} s; later builds of this size that name it read them from there")


def identity_of(config: BuildConfig, sources: Sources) -> str:
    return build_identity(config.content_json(), sources.fingerprints, __version__, SCHEMA_VERSION)


def differences(old: dict, config: BuildConfig, sources: Sources) -> str:
    """What differs between the set in the folder and the one asked for, under the real flag names."""
    old_config = {**old.get("config", {}), "n": config.n, "objects": config.objects,
                  "backgrounds": config.backgrounds}
    changed = changed_values(BuildConfig, old_config, config)
    for kind in ("objects", "backgrounds"):
        before = old.get("sources", {}).get(kind, {})
        if before.get("fingerprint") != sources.fingerprints[kind]:
            changed.append(f"the --{kind} files differ ({before.get('root') or 'procedural'} -> "
                           f"{sources.description[kind].get('root') or 'procedural'})")
    if old.get("synthgen_version") != __version__:
        changed.append(f"synthgen {old.get('synthgen_version')} -> {__version__}")
    return "; ".join(changed) or "the build settings differ"


def build(config: BuildConfig, run: RunOptions, out_dir, command: list[str] | None = None, log=print,
          scene_store=None) -> dict:
    """Build (or resume, or extend) a set in `out_dir`; `scene_store`: a folder keeping the --backgrounds
    decoded at the build's size (synthgen.scenes), made here if it does not hold them yet. Returns the summary
    that also goes into manifest.json."""
    started = time.perf_counter()
    problem = too_small_problem(config)
    if problem:
        raise UsageError(problem)
    likely_needed = run.overwrite or not looks_finished(out_dir, config.n)
    with holding(out_dir) as lock:  # the folder is this command's from its first look into it to the end
        with workers_starting(run, WORKER_MODULES, likely_needed) as workers_started:  # they start while this checks
            return _build(config, run, out_dir, command, log, started, workers_started, scene_store, lock)


def _build(config: BuildConfig, run: RunOptions, out_dir, command: list[str] | None, log, started: float,
           workers_started, scene_store, lock) -> dict:
    """`build` within the held folder, while the workers start: the checks, then the work, then the summary."""
    out = Path(out_dir).resolve()
    read_whole = [("--objects", config.objects), ("--backgrounds", config.backgrounds)]
    problem = inside_sources_problem(out, "--out", read_whole) or (
        scene_store is not None and inside_sources_problem(scene_store, "--scene-store", read_whole))
    if problem:
        raise UsageError(problem)
    sources = scan_sources(config)
    scene_store, store_ready = checked_scene_store(scene_store, out, config, sources)
    if run.on_bad_input == "fail" and sources.skipped:
        first = sources.skipped[0]
        raise BadInputError(first.path, first.reason + " (--on-bad-input fail)")
    writer = open_set_writer(out, config, sources, command, run, log, lock)
    previous = writer.existing() or {}
    if previous.get("build_identity") != writer.identity:  # another set (replaced with --overwrite): nothing to keep
        previous = {}
    checked = check_before_writing(out, config, run, writer, sources, scene_store, store_ready)

    writer.manifest["object_pool"] = checked.pool
    writer.begin()
    rendered = Rendered()
    checks_ended = waited = time.perf_counter()
    if checked.todo:
        workers_started()
        waited = time.perf_counter()
        rendered = prepare_and_render(out, config, run, writer, sources, checked, previous, scene_store, store_ready,
                                      log)
    summary = summarise(out, config, run, rendered, started, checks_ended, waited)
    if scene_store is not None:  # its pixels came from the machine that made it
        made_with = (read_store(scene_store) or {}).get("made_with")
        summary["scene_store"] = {"path": str(scene_store), "made_with": made_with}
    too_large = checked.too_large | rendered.too_large | {k for r in rendered.results for k in r["too_large"]}
    if too_large or not rendered.results:
        summary["excluded_objects"] = (excluded_objects(config, checked.objects, too_large)
                                       or previous.get("summary", {}).get("excluded_objects", []))
    if rendered.masks:
        summary["masks"], writer.manifest["mask_notes"] = mask_summary(rendered.masks, config.mask_threshold)
    elif "masks" in previous.get("summary", {}):  # nothing decoded in this run: keep what the last one found
        summary["masks"], writer.manifest["mask_notes"] = previous["summary"]["masks"], previous.get("mask_notes", [])
    writer.finish(config.n_shards, summary)
    shutil.rmtree(out / PREPARED_DIR, ignore_errors=True)  # only an unfinished build needs the store
    return summary


def checked_scene_store(scene_store, out: Path, config: BuildConfig, sources: Sources) -> tuple[Path | None, bool]:
    """--scene-store resolved and checked (None: not given), and whether it holds these scenes already; one that
    does not must be writable, to be made."""
    if scene_store is None:
        return None, False
    if not config.backgrounds:
        raise UsageError(f"--scene-store {scene_store}: keeps the scenes of --backgrounds decoded; the embedded "
                         "default draws its scenes, so there is nothing to keep. Give --backgrounds, or drop "
                         "--scene-store")
    scene_store = Path(scene_store).resolve()
    if scene_store == out or out in scene_store.parents or scene_store in out.parents:
        raise UsageError(f"--scene-store {scene_store}: give a folder apart from --out {out}, neither inside it "
                         "nor holding it: the store outlives the set, and each folder holds only its own files")
    backgrounds = sources.description["backgrounds"]
    ready = check_store(scene_store, backgrounds["root"], sources.fingerprints["backgrounds"], config.size)
    # a ready store is only read (it may lie on shared, read-only storage); one to make must be writable
    unwritable = not ready and out_folder_problem(scene_store, "--scene-store")
    if unwritable:
        raise UsageError(unwritable)
    return scene_store, ready


def open_set_writer(out: Path, config: BuildConfig, sources: Sources, command: list[str] | None, run: RunOptions,
                    log, lock) -> SetWriter:
    """The writer of the set in `out`, its manifest's record of the build, and the sources' unreadable files
    reported."""
    writer = SetWriter(out, {
        "format": MANIFEST_FORMAT, "schema_version": SCHEMA_VERSION, "synthgen_version": __version__,
        "build_identity": identity_of(config, sources), "command": command, "config": config.to_json(),
        "n_images": config.n, "image_size": config.size, "n_shards": config.n_shards,
        "sources": {kind: {"kind": d["kind"], "root": d.get("root"), "fingerprint": sources.fingerprints[kind],
                           "count": d["count"]}
                    for kind, d in (("objects", sources.description["objects"]),
                                    ("backgrounds", sources.description["backgrounds"]))},
    }, log, sync_shards=not run.workers_sync, lock=lock)
    for item in sources.skipped:
        writer.report(item)
    return writer


@dataclass
class Checked:
    """What the checks before any write found: the finished shards and those to build, the objects and which of
    them the images may draw."""

    done: set[int]  # the finished shards a resumed build keeps
    todo: list[int]
    objects: FolderObjects | ProceduralObjects  # the object source (open_objects)
    sizer: Compositor  # decides which objects fit the canvas at every area
    pool: list[int] | None  # --source-objects' objects (None: all)
    too_large: set[int]  # objects left out so far


def check_before_writing(out: Path, config: BuildConfig, run: RunOptions, writer: SetWriter, sources: Sources,
                         scene_store: Path | None, store_ready: bool) -> Checked:
    """The checks before anything is written: the folder (resume, extend or refuse), the object pool, whether the
    design can be placed (check_feasible), and the room on disk."""
    done = writer.check(config.n_shards, run.overwrite, lambda old: differences(old, config, sources),
                        keep=lambda s, attrs: (attrs["first_index"], attrs["n_images"]) == config.shard_range(s),
                        n_images=config.n, progress=run.progress)
    todo = [s for s in range(config.n_shards) if s not in done]
    objects = open_objects(sources.description, (run.cache_mb << 20) // 2)
    backgrounds = open_backgrounds(sources.description, (run.cache_mb << 20) // 2)
    skipped: list[Skipped] = []
    too_large: set[int] = set()
    sizer = Compositor(config, objects, backgrounds, range(len(objects)), run.on_bad_input)
    pool = select_object_pool(config, objects, sizer, run.on_bad_input, skipped, too_large)
    if todo:
        probe = Compositor(config, objects, backgrounds, pool if pool is not None else range(len(objects)),
                           run.on_bad_input)
        probe.eligible = sizer.eligible
        check_feasible(config, probe)
        skipped += probe.skipped
        too_large |= probe.too_large
        store_kept = not writer.replacing and prepared_complete(out, config.size)  # a resumed build's
        to_prepare = (0 if store_kept or not config.pastes_objects else len(pool) if pool is not None
                      else len(objects))
        scene_bytes = 0
        if scene_store is not None and not store_ready:
            scenes = sources.description["backgrounds"]
            scene_bytes = estimated_store_bytes(scenes["root"], scenes["files"], config.size)
        check_room(planned_writes(out, config, todo, local_workers(run), to_prepare, scene_store, scene_bytes),
                   freed={out: writer.replaced_bytes()})
    for item in skipped:
        writer.report(item)
    return Checked(done, todo, objects, sizer, pool, too_large)


@dataclass
class Rendered:
    """What the workers did: each shard's result, the objects they left out, the masks they decoded, the time."""

    results: list[dict] = field(default_factory=list)
    workers: int | None = None
    prepare_seconds: float = 0.0
    render_seconds: float = 0.0
    timeline: dict | None = None
    too_large: set[int] = field(default_factory=set)
    masks: list = field(default_factory=list)


def prepare_and_render(out: Path, config: BuildConfig, run: RunOptions, writer: SetWriter, sources: Sources,
                       checked: Checked, previous: dict, scene_store: Path | None, store_ready: bool,
                       log) -> Rendered:
    """With the workers: the scene store made (or read), every object decoded once into the prepared store, the
    objects that can appear fixed in sources.json, then the missing shards."""
    rendered = Rendered()
    with parallel_backend(run) as client:
        rendered.workers = workers = workers_of(client, run)
        pool, objects = checked.pool, checked.objects
        # scenes without objects paste none: preparing them (18-30 s for THUS10000 on 2 cores) would be for nothing
        ids = [] if not config.pastes_objects else pool if pool is not None else list(range(len(objects)))
        prepare_start = time.perf_counter()
        if scene_store is not None:
            _scene_store(scene_store, store_ready, sources, config.size, run, workers, log)
            sources.description["backgrounds"]["store"] = str(scene_store)
        store = prepare_objects(
            objects, ids, config.size, out, run.on_bad_input, checked.sizer.eligible,
            lambda calls: run_tasks(calls, run.progress and len(calls) > 1, "synthgen decoding objects",
                                    preload=WORKER_MODULES), workers)
        rendered.prepare_seconds = time.perf_counter() - prepare_start
        rendered.masks = store.masks
        for item in store.bad:
            writer.report(item)
        rendered.too_large = {k for k, fits in store.eligible.items() if not fits}
        usable = [k for k in store.ids if store.eligible[k]]
        if not store.ids and config.pastes_objects:
            raise UsageError(f"--objects {config.objects}: none of the {len(ids)} objects is usable "
                             "(each is listed above with the reason)")
        if not usable and config.pastes_objects:
            raise UsageError(f"--objects: none of the {len(store.ids)} usable objects can appear at every area "
                             f"and count: each is {left_out_because(config)}. To keep some, {keep_more(config)}")
        check_same_pool(out, checked.done, usable, previous)
        note = few_objects_note(config, len(usable), len(checked.too_large | rendered.too_large))
        if note:
            log(note)
        write_json_atomic(out / SOURCES, {**sources.description, "pool": usable})
        try:
            rendered.results, rendered.render_seconds, rendered.timeline = _render_shards(
                out, checked.todo, config, writer, sources.fingerprints, run, workers)
        except PlacementError as exc:
            writer.fail({"image": exc.index, "message": str(exc)})
            raise
    return rendered


def summarise(out: Path, config: BuildConfig, run: RunOptions, rendered: Rendered, started: float,
              checks_ended: float, waited: float) -> dict:
    """The set's summary for manifest.json: its labels read back from every shard, and where this build's time
    went (the build started at `started`, its checks ended at `checks_ended`, its workers were ready at `waited`)."""
    labels = read_labels([shard_path(out, s) for s in range(config.n_shards)],
                         ("count", "target_area", "visible_area"))
    summary = label_summary(labels["count"], labels["target_area"], labels["visible_area"], config.size)
    results, prepare_seconds, render_seconds = rendered.results, rendered.prepare_seconds, rendered.render_seconds
    built = sum(r["n_images"] for r in results)
    ended = time.perf_counter()
    # Where a build's time goes outside the render: what scaling with workers loses at the start and the end.
    phases = {"scan_and_checks": checks_ended - started, "waiting_for_workers": waited - checks_ended,
              "prepare": prepare_seconds, "render": render_seconds,
              "labels_and_other": ended - waited - prepare_seconds - render_seconds}
    summary.update({
        "images_built": built, "images_resumed": config.n - built,
        "prepare_seconds": round(prepare_seconds, 3), "render_seconds": round(render_seconds, 3),
        "total_seconds": round(ended - started, 3),
        "phase_seconds": {name: round(seconds, 3) for name, seconds in phases.items()},
        "images_per_second": round(built / render_seconds, 1) if built else None,
        "render_timeline": rendered.timeline,
        "workers": rendered.workers, "backend": run.backend,
        "ms_per_image": {stage: round(1e3 * sum(r["timings"][stage] for r in results) / built, 4)
                         for stage in STAGES} if built else None,
    })
    return summary


def excluded_objects(config: BuildConfig, objects, too_large: set[int]) -> list[dict]:
    """The objects left out of the set, each with why: so that which objects appear does not depend on the area."""
    reason = f"{left_out_because(config)}: left out so that which objects appear does not depend on the area"
    return [{"path": objects.mask_path(k), "reason": reason} for k in sorted(too_large)]


def _render_shards(out: Path, todo: list[int], config: BuildConfig, writer: SetWriter, fingerprints: dict,
                   run: RunOptions, workers: int) -> tuple[list[dict], float, dict]:
    """Render and write the missing shards in parallel, a partial last round in parts (synthgen.parts),
    with a progress bar over images; the seconds it took, until the last shard was on disk, and where they
    went (parallel.timeline)."""
    started = time.perf_counter()
    common = (config.to_json(), writer.identity, fingerprints)
    rendering = (run.cache_mb, run.on_bad_input, run.workers_sync)
    results, in_parts = run_set(
        out, todo, {s: config.shard_range(s)[1] for s in todo}, workers,
        whole=lambda shard: (build_shard, (str(out), shard, *common, *rendering)),
        part=lambda parts, index: (render_part, (str(out), parts, index, *common, *rendering)),
        assemble=lambda parts: (assemble_shard, (str(out), parts, *common, run.workers_sync)),
        writer=writer, total=config.n, progress=run.progress, desc="synthgen build", preload=WORKER_MODULES)
    writer.settle()
    ended = time.perf_counter()
    return results, ended - started, {**timeline(results, started, ended, workers), "shards_in_parts": in_parts,
                                      "worker_processes": len({r["pid"] for r in results if "pid" in r})}
