"""`synthgen build`: check everything up front, then render and write shards in parallel.

Order of work: scan the sources -> check the output folder (resume / refuse) -> probe feasibility ->
check disk space -> write a provisional manifest -> decode every object once into the shared
prepared store -> write sources.json -> render shards with joblib (each task renders and writes one
whole shard) -> read the labels back for the summary -> write the final manifest and drop the store.
Nothing is written before the checks pass, and a shard appears only when complete.
"""
from __future__ import annotations

import json
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import joblib
import numpy as np
from tqdm import tqdm

from synthgen import __version__
from synthgen.compositor import STAGES, Compositor
from synthgen.config import BuildConfig, RunOptions, build_identity
from synthgen.errors import BadInputError, OutputError, UsageError, write_failure
from synthgen.feasibility import check_feasible
from synthgen.manifest import MANIFEST, MANIFEST_FORMAT, SOURCES, prepare_output, write_json_atomic
from synthgen.plan import counts_for, object_pool_order
from synthgen.prepared import PREPARED_DIR, PreparedObjects, prepare_objects, store_dir
from synthgen.procedural import N_BACKGROUNDS, N_OBJECTS, ProceduralBackgrounds, ProceduralObjects
from synthgen.reader import read_labels
from synthgen.parallel import parallel_backend, workers_of
from synthgen.shards import SCHEMA_VERSION, SHARD_FORMAT, shard_path, stored_checksum, write_shard
from synthgen.sources import (FolderBackgrounds, FolderObjects, Skipped, list_fingerprint, scan_backgrounds,
                              scan_objects)
from synthgen.stats import label_summary


@dataclass
class Sources:
    """The sources of a build, as the main process sees them."""

    description: dict  # what sources.json records, and what workers rebuild the sources from
    fingerprints: dict
    skipped: list[Skipped] = field(default_factory=list)


def scan_sources(config: BuildConfig) -> Sources:
    """Scan --objects and --backgrounds (or take the procedural default) and fingerprint the lists."""
    description, fingerprints, skipped = {}, {}, []
    if config.objects:
        pairs, bad = scan_objects(config.objects)
        description["objects"] = {"kind": "folder", "root": str(Path(config.objects).resolve()), "pairs": pairs,
                                  "count": len(pairs)}
        fingerprints["objects"] = list_fingerprint(config.objects, pairs)
        skipped += bad
    else:
        description["objects"] = {"kind": "procedural", "count": N_OBJECTS}
        fingerprints["objects"] = f"procedural-objects-v1:{N_OBJECTS}"
    if config.backgrounds:
        files, bad = scan_backgrounds(config.backgrounds)
        description["backgrounds"] = {"kind": "folder", "root": str(Path(config.backgrounds).resolve()),
                                      "files": files, "count": len(files)}
        fingerprints["backgrounds"] = list_fingerprint(config.backgrounds, files)
        skipped += bad
    else:
        description["backgrounds"] = {"kind": "procedural", "count": N_BACKGROUNDS}
        fingerprints["backgrounds"] = f"procedural-backgrounds-v1:{N_BACKGROUNDS}"
    return Sources(description, fingerprints, skipped)


def open_objects(description: dict, cache_bytes: int):
    """The object source described in sources.json (decoding directly, with a cache)."""
    objects = description["objects"]
    if objects["kind"] == "folder":
        return FolderObjects(objects["root"], objects["pairs"], cache_bytes)
    return ProceduralObjects(objects["count"], cache_bytes)


def open_backgrounds(description: dict, cache_bytes: int):
    """The background source described in sources.json, with a cache."""
    backgrounds = description["backgrounds"]
    if backgrounds["kind"] == "folder":
        return FolderBackgrounds(backgrounds["root"], backgrounds["files"], cache_bytes)
    return ProceduralBackgrounds(backgrounds["count"], cache_bytes)


def select_object_pool(config: BuildConfig, objects, on_bad_input: str, skipped: list) -> list[int] | None:
    """With --source-objects K: K usable objects, tried in an order drawn from the seed (None: all)."""
    if config.source_objects is None:
        return None
    pool = []
    for k in object_pool_order(len(objects), config.seed).tolist():
        try:
            objects.load(k, config.size)
        except BadInputError as error:
            if on_bad_input == "fail":
                raise
            skipped.append(Skipped(error.path, error.reason))
            continue
        pool.append(k)
        if len(pool) == config.source_objects:
            return sorted(pool)
    raise UsageError(f"--source-objects {config.source_objects}: only {len(pool)} usable objects are available")


def check_disk_space(out: Path, config: BuildConfig, n_images: int) -> None:
    need = n_images * config.size * config.size * 3
    existing = next(p for p in [out, *out.parents] if p.exists())
    free = shutil.disk_usage(existing).free
    if config.compression == "none" and need > free:
        raise OutputError(f"--out {out}: the images need about {need / 1e9:.2f} GB but only {free / 1e9:.2f} GB is "
                          "free there; free space, write elsewhere, or use --compression lzf")


# ------------------------------------------------------------------ worker side

_COMPOSITORS: dict = {}


def in_worker(function, *args):
    """Every parallel task runs through here. This module imports albumentations (and with it
    torch) when a worker unpickles the task, so the worker's first task already holds every heavy
    module: loky measures a worker's memory after its first task and restarts workers that grow by
    300 MB, which a later import of torch would otherwise trigger."""
    cv2.setNumThreads(1)  # workers are the parallelism; OpenCV's own threads only contend
    return function(*args)


def run_in_workers(calls, progress: bool = False, desc: str = "") -> list:
    """Run (function, args) calls under the active joblib backend, results in order."""
    results = joblib.Parallel(return_as="generator")(joblib.delayed(in_worker)(function, *args)
                                                     for function, args in calls)
    return list(tqdm(results, total=len(calls), desc=desc, unit="part", disable=not progress, dynamic_ncols=True))


def _worker_compositor(out_dir: str, identity: str, config: BuildConfig, cache_mb: int, on_bad_input: str):
    """One compositor per worker process (and thread), reused across shards: its caches persist."""
    key = (out_dir, identity, cache_mb, on_bad_input, threading.get_ident())
    compositor = _COMPOSITORS.get(key)
    if compositor is None:
        description = json.loads((Path(out_dir) / SOURCES).read_text())
        # Objects are reused across images, backgrounds (in large sets) hardly: objects get most memory.
        cache = cache_mb << 20
        objects = PreparedObjects(store_dir(out_dir, config.size), description["objects"]["count"], cache * 3 // 4)
        backgrounds = open_backgrounds(description, cache // 4)
        if len(_COMPOSITORS) > 8:
            _COMPOSITORS.clear()
        compositor = _COMPOSITORS[key] = Compositor(config, objects, backgrounds, description["pool"], on_bad_input)
    return compositor


def shard_attrs(config: BuildConfig, identity: str, fingerprints: dict, shard_index: int) -> dict:
    """A shard's provenance: only what determines its content, so checksums match across runs."""
    first, n = config.shard_range(shard_index)
    return {
        "format": SHARD_FORMAT, "schema_version": SCHEMA_VERSION, "synthgen_version": __version__,
        "build_identity": identity, "config_json": json.dumps(config.to_json(), sort_keys=True),
        "seed": config.seed, "shard_index": shard_index, "first_index": first, "n_images": n,
        "image_size": config.size, "objects_fingerprint": fingerprints["objects"],
        "backgrounds_fingerprint": fingerprints["backgrounds"],
    }


def shard_arrays(scenes: list) -> dict[str, np.ndarray]:
    """The datasets of a shard (docs/SHARD_FORMAT.md) from its rendered scenes."""
    objects = [obj for scene in scenes for obj in scene.objects]
    return {
        "images": np.stack([scene.image for scene in scenes]),
        "count": np.array([scene.count for scene in scenes], np.int16),
        "index": np.array([scene.index for scene in scenes], np.int64),
        "image_seed": np.array([scene.image_seed for scene in scenes], np.uint64),
        "target_area": np.array([scene.target_area for scene in scenes], np.float32),
        "full_area": np.array([scene.full_area for scene in scenes], np.float32),
        "visible_area": np.array([scene.visible_area for scene in scenes], np.float32),
        "background_id": np.array([scene.background_id for scene in scenes], np.int32),
        "object_offset": np.concatenate([[0], np.cumsum([len(scene.objects) for scene in scenes])]).astype(np.int64),
        "objects/source_id": np.array([obj.source_id for obj in objects], np.int32),
        "objects/box": np.array([obj.box for obj in objects], np.int16).reshape(-1, 4),
        "objects/full_area": np.array([obj.full_area for obj in objects], np.float32),
        "objects/visible_area": np.array([obj.visible_area for obj in objects], np.float32),
    }


def build_shard(out_dir: str, shard_index: int, config_json: dict, identity: str, fingerprints: dict,
                cache_mb: int, on_bad_input: str) -> dict:
    """Render and write one whole shard (runs in a worker). Returns what the summary needs."""
    config = BuildConfig.from_json(config_json)
    compositor = _worker_compositor(out_dir, identity, config, cache_mb, on_bad_input)
    timings_before = dict(compositor.timings)
    skipped_before = len(compositor.skipped)
    first, n = config.shard_range(shard_index)
    scenes = [compositor.render(first + row, int(count)) for row, count in enumerate(counts_for(config, first, n))]
    path = shard_path(out_dir, shard_index)
    write_start = time.perf_counter()
    try:
        checksum = write_shard(path, shard_arrays(scenes), shard_attrs(config, identity, fingerprints, shard_index),
                               config.compression)
    except OSError as exc:
        raise write_failure(path.name, out_dir, exc) from None
    timings = {stage: compositor.timings.get(stage, 0.0) - timings_before.get(stage, 0.0) for stage in STAGES}
    timings["write"] = time.perf_counter() - write_start
    return {"shard": shard_index, "n_images": n, "checksum": checksum, "timings": timings,
            "skipped": [(s.path, s.reason) for s in compositor.skipped[skipped_before:]]}


# ------------------------------------------------------------------ main process


def build(config: BuildConfig, run: RunOptions, out_dir, command: list[str] | None = None, log=print) -> dict:
    """Build (or resume) a set in `out_dir`. Returns the summary that also goes into manifest.json."""
    started = time.perf_counter()
    out = Path(out_dir).resolve()
    sources = scan_sources(config)
    skipped: dict[str, str] = {}  # every bad input met anywhere in the build, reported once

    def report(item: Skipped, write=log):
        if item.path not in skipped:
            skipped[item.path] = item.reason
            write(item.line())

    if run.on_bad_input == "fail" and sources.skipped:
        first = sources.skipped[0]
        raise BadInputError(first.path, first.reason + " (--on-bad-input fail)")
    for item in sources.skipped:
        report(item)

    # Checks, before anything is written.
    identity = build_identity(config.to_json(), sources.fingerprints, __version__, SCHEMA_VERSION)
    done = prepare_output(out, identity, config.to_json(), config.n_shards, run.overwrite)
    todo = [s for s in range(config.n_shards) if s not in done]
    objects = open_objects(sources.description, (run.cache_mb << 20) // 2)
    backgrounds = open_backgrounds(sources.description, (run.cache_mb << 20) // 2)
    pool_skipped: list[Skipped] = []
    pool = select_object_pool(config, objects, run.on_bad_input, pool_skipped)
    if todo:
        probe = Compositor(config, objects, backgrounds, pool if pool is not None else range(len(objects)),
                           run.on_bad_input)
        check_feasible(config, probe)
        pool_skipped += probe.skipped
        check_disk_space(out, config, sum(config.shard_range(s)[1] for s in todo))
    for item in pool_skipped:
        report(item)

    out.mkdir(parents=True, exist_ok=True)
    manifest = {
        "format": MANIFEST_FORMAT, "schema_version": SCHEMA_VERSION, "synthgen_version": __version__,
        "complete": False, "build_identity": identity, "command": command, "config": config.to_json(),
        "n_images": config.n, "image_size": config.size, "n_shards": config.n_shards,
        "sources": {kind: {"kind": d["kind"], "root": d.get("root"), "fingerprint": sources.fingerprints[kind],
                           "count": d["count"]}
                    for kind, d in (("objects", sources.description["objects"]),
                                    ("backgrounds", sources.description["backgrounds"]))},
        "object_pool": pool,
    }
    write_json_atomic(out / MANIFEST, manifest)

    results, workers, render_seconds, prepare_seconds = [], None, 0.0, 0.0
    if todo:
        with parallel_backend(run) as client:
            workers = workers_of(client, run)
            ids = pool if pool is not None else list(range(len(objects)))
            prepare_start = time.perf_counter()
            usable, bad = prepare_objects(
                objects, ids, config.size, out, run.on_bad_input,
                lambda calls: run_in_workers(calls, run.progress and len(calls) > 1, "synthgen decoding objects"))
            prepare_seconds = time.perf_counter() - prepare_start
            for item in bad:
                report(item)
            if not usable and max(config.counts) > 0:
                raise UsageError(f"--objects {config.objects}: none of the {len(ids)} objects is usable "
                                 "(each is listed above with the reason)")
            write_json_atomic(out / SOURCES, {**sources.description, "pool": usable})
            results, render_seconds = _render_shards(out, todo, config, identity, sources.fingerprints, run, report)

    paths = [shard_path(out, s) for s in range(config.n_shards)]
    labels = read_labels(paths, ("count", "target_area", "visible_area"))
    summary = label_summary(labels["count"], labels["target_area"], labels["visible_area"], config.size)
    built = sum(r["n_images"] for r in results)
    summary.update({
        "images_built": built, "images_resumed": config.n - built,
        "prepare_seconds": round(prepare_seconds, 3), "render_seconds": round(render_seconds, 3),
        "total_seconds": round(time.perf_counter() - started, 3),
        "images_per_second": round(built / render_seconds, 1) if built else None,
        "workers": workers, "backend": run.backend,
        "ms_per_image": {stage: round(1e3 * sum(r["timings"][stage] for r in results) / built, 4)
                         for stage in STAGES} if built else None,
        "skipped_inputs": [{"path": path, "reason": reason} for path, reason in skipped.items()],
    })
    checksums = {r["shard"]: r["checksum"] for r in results}
    manifest["shards"] = [{"file": path.name, "first_index": config.shard_range(s)[0],
                           "n_images": config.shard_range(s)[1],
                           "content_sha256": checksums.get(s) or stored_checksum(path)}
                          for s, path in enumerate(paths)]
    manifest.update({"complete": True, "summary": summary})
    write_json_atomic(out / MANIFEST, manifest)
    shutil.rmtree(out / PREPARED_DIR, ignore_errors=True)  # only an unfinished build needs the store
    return summary


def _render_shards(out: Path, todo: list[int], config: BuildConfig, identity: str, fingerprints: dict,
                   run: RunOptions, report) -> tuple[list[dict], float]:
    """Render and write the missing shards in parallel, with a progress bar over images."""
    started = time.perf_counter()
    results = []
    task_args = (config.to_json(), identity, fingerprints, run.cache_mb, run.on_bad_input)
    already = config.n - sum(config.shard_range(s)[1] for s in todo)
    with tqdm(total=config.n, initial=already, unit="img", desc="synthgen build", disable=not run.progress,
              dynamic_ncols=True) as bar:
        tasks = (joblib.delayed(in_worker)(build_shard, str(out), s, *task_args) for s in todo)
        for result in joblib.Parallel(return_as="generator_unordered")(tasks):
            results.append(result)
            bar.update(result["n_images"])
            for path, reason in result["skipped"]:
                report(Skipped(path, reason), bar.write)
    return results, time.perf_counter() - started
