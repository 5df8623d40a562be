"""`synthgen pack`: natural labelled images (the SOS layout) into shards of the synthgen schema.

Input: a folder tree with one subfolder per count label (`0`, `1`, `2`, `3`, `4+`), or a split file
(the Salient Object Subitizing release: one line per image, `path,label,split`). Labels above 4 mean
"4 or more" in both: a folder `5`, `6`, ... and a label `5` or `7+` in a split file are all packed as
4 (the class 4+), the way SOS labels them. Output: the same shards as `synthgen build`, with `count`
the label (4 means "4 or more"), no per-object records, and NaN for the areas that natural images do
not have. `index` is the image's position in sources.json `files` (a skipped bad file leaves a gap).
Use the authors' train/test split, never a re-split: pack each split into its own set; an image
listed twice in a split file (in the same split or in both) is an error.

The steps of a pack: list_images (the labelled files, checked) -> open_pack_writer (the manifest's record)
-> pack_shards (on the workers: pack_shard, or pack_part and pack_assemble) -> summarise.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from common.settings import changed_values
from synthgen import __version__
from synthgen.config import SPLITS, PackConfig, RunOptions, build_identity
from synthgen.diskspace import check_room, planned_shards
from synthgen.errors import BadInputError, UsageError, write_failure
from synthgen.manifest import MANIFEST_FORMAT, SOURCES, looks_finished, write_json_atomic
from synthgen.parallel import local_workers, parallel_backend, workers_of, workers_starting
from synthgen.parts import Part, clear_parts, finish_part, run_set, write_from_parts
from synthgen.reader import read_labels
from synthgen.shards import SCHEMA_VERSION, SHARD_FORMAT, ShardArrays, shard_path, write_shard
from synthgen.sources import (IMAGE_EXTENSIONS, Skipped, _check_folder, inside_sources_problem, list_fingerprint,
                              load_photo, not_read_reason, walk_files)
from synthgen.stats import count_histogram
from synthgen.writer import SetWriter, holding

TOP_CLASS = 4  # the class "4+": every count of 4 or more
LABEL_RE = re.compile(r"(\d+)\+?")


def parse_label(text: str) -> int | None:
    """A count label ('0', '3', '4+', '7') as its class, 0..4 (4 means 4 or more); None if not a label."""
    match = LABEL_RE.fullmatch(text.strip())
    return min(int(match.group(1)), TOP_CLASS) if match else None


def scan_label_folders(root: Path) -> tuple[list[tuple[str, int]], list[Skipped]]:
    """Images under count folders `0/` ... `4+/` (or `5/`, `6/`... also 4+; nested folders allowed)."""
    items, skipped = [], []
    for rel, _ in walk_files(root):
        label = parse_label(rel.split("/", 1)[0]) if "/" in rel else None
        if label is None:
            skipped.append(Skipped(f"{root}/{rel}", "not inside a count folder (0, 1, 2, 3, 4+ or any larger count)"))
        elif os.path.splitext(rel)[1].lower() not in IMAGE_EXTENSIONS:
            skipped.append(Skipped(f"{root}/{rel}", not_read_reason(rel)))
        else:
            items.append((rel, label))
    return items, skipped


def read_split_file(split_file: Path, root: Path, split: str) -> tuple[list[tuple[str, int]], list[Skipped]]:
    """The images of one split from an SOS-style file of `path,label,split` lines (a header is allowed)."""
    items, skipped, first_line = [], [], {}
    try:
        # utf-8-sig: spreadsheet programs save CSV with a byte-order mark, which would become part of the first path
        rows = list(csv.reader(split_file.read_text(encoding="utf-8-sig").splitlines()))
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--split-file {split_file}: cannot be read ({exc})") from None
    for number, row in enumerate(rows, 1):
        fields = [f.strip() for f in row]
        if not any(fields) or fields[0].startswith("#"):
            continue
        if len(fields) != 3 or not fields[0]:
            raise UsageError(f"--split-file {split_file}, line {number}: expected 'path,label,split', got {row}")
        path, label_text, which = fields
        if "\\" in path and not (root / path).is_file():  # a split file written on Windows
            path = path.replace("\\", "/")
        label = parse_label(label_text)
        if label is None:
            if number == 1:
                continue  # a header line
            raise UsageError(f"--split-file {split_file}, line {number}: label {label_text!r} is not a count "
                             "(0, 1, 2, 3, 4+ or any whole number)")
        if which.lower() not in SPLITS:
            raise UsageError(f"--split-file {split_file}, line {number}: split {which!r} is not train or test")
        key = path_within(root, path)
        if key is None:
            raise UsageError(f"--split-file {split_file}, line {number}: {path} lies outside ROOT {root}; give as ROOT "
                             "the folder that holds every listed image (a set records its photos by their paths "
                             "within ROOT, to tell which photos two sets share)")
        image = (root / path).resolve()  # one image however it is spelled (./a.jpg, a/../a.jpg, a link to it)
        if image in first_line:
            line, first_key, spelled = first_line[image]
            same = (f"lines {line} ({first_key}) and {number} ({key}) name one image, {image}" if first_key != key
                    else f"{key} is listed twice, on lines {line} and {number}"
                    + ("" if spelled == path else f" (as {spelled} and {path})"))
            raise UsageError(f"--split-file {split_file}: {same}; each image belongs to one split, once")
        first_line[image] = (number, key, path)
        if which.lower() != split:
            continue
        if not (root / key).is_file():
            what = "a folder, not an image file" if (root / key).is_dir() else "not found"
            skipped.append(Skipped(str(root / key), f"listed in {split_file.name} but {what}"))
            continue
        items.append((key, label))
    return items, skipped


def path_within(root: Path, path: str) -> str | None:
    """A split file's path as one spelling within `root` (a resolved folder): `./a.jpg`, `b/../a.jpg` and
    `ROOT/a.jpg` are all `a.jpg`, so that sets packed from one folder compare their photos by name
    (synthgen.overlap). None for a path outside root."""
    if os.path.isabs(path):  # as spelled (a link inside ROOT may lead elsewhere), else with ROOT's own links resolved
        for image in (Path(os.path.normpath(path)), Path(path).resolve()):
            if image.is_relative_to(root):
                return image.relative_to(root).as_posix()
        return None
    key = os.path.normpath(path).replace(os.sep, "/")
    if key == ".." or key.startswith("../"):
        return None
    if (root / key).resolve() != (root / path).resolve():  # `link/..` leaves the link's folder: keep it as given
        return Path(path).as_posix()
    return key


# A shard records its bad files (`skipped_json`), so that a resumed pack can report them again. A shard
# rendered in parts (synthgen.parts) carries each part's as one more dataset of its part file: JSON lines
# as bytes, which join end to end like any other dataset.
SKIPPED_LINES = "skipped_lines"


def _pack_rows(config: PackConfig, first: int, items: list, on_bad_input: str) -> tuple[dict, list]:
    """Decode the images of `items` (their positions in sources.json from `first` on): their shard arrays,
    and the (path, reason) of each bad file left out."""
    root = Path(config.root)
    shard, skipped = ShardArrays(config.size), []
    for position, (rel, label) in enumerate(items, start=first):
        try:
            image = load_photo(root / rel, config.size, config.fit)
        except BadInputError as error:
            if on_bad_input == "fail":
                raise
            skipped.append((error.path, error.reason))
            continue
        shard.add(image, count=label, index=position)
    return shard.arrays(), skipped


def _write(out_dir: str, shard_index: int, arrays: dict, skipped: list, config_json: dict, identity: str,
           sync: bool) -> str:
    config = PackConfig(**config_json)
    attrs = {"format": SHARD_FORMAT, "schema_version": SCHEMA_VERSION, "synthgen_version": __version__,
             "kind": "natural", "build_identity": identity,
             "config_json": json.dumps(config_json | {"root": None, "split_file": None}, sort_keys=True),
             "shard_index": shard_index, "first_index": shard_index * config.shard_size,
             "n_images": len(arrays["count"]), "image_size": config.size, "skipped_json": json.dumps(skipped)}
    path = shard_path(out_dir, shard_index)
    try:
        return write_shard(path, arrays, attrs, sync=sync)
    except OSError as exc:
        raise write_failure(path.name, out_dir, exc) from None


def _write_joined(out_dir: str, shard_index: int, joined: dict, config_json: dict, identity: str,
                  sync: bool) -> str:
    """Write a shard from its joined parts: their bad files, in order, go back into the shard's record."""
    lines = joined.pop(SKIPPED_LINES).tobytes().decode().splitlines()
    return _write(out_dir, shard_index, joined, [tuple(json.loads(line)) for line in lines], config_json, identity,
                  sync)


def pack_shard(out_dir: str, shard_index: int, items: list, config_json: dict, identity: str, on_bad_input: str,
               sync: bool) -> dict:
    """Decode and write one shard of natural images (runs in a worker; `sync` as in build.build_shard)."""
    started = time.perf_counter()
    config = PackConfig(**config_json)
    arrays, skipped = _pack_rows(config, shard_index * config.shard_size, items, on_bad_input)
    checksum = _write(out_dir, shard_index, arrays, skipped, config_json, identity, sync)
    return {"shard": shard_index, "n_images": len(arrays["count"]), "skipped": skipped, "checksum": checksum,
            "seconds": time.perf_counter() - started}


def pack_part(out_dir: str, parts: list[Part], index: int, items: list, config_json: dict, identity: str,
              on_bad_input: str, sync: bool) -> dict:
    """Decode part `index` of a shard's `parts` (`items`: its rows), and write the shard if that completes it
    (synthgen.parts; runs in a worker)."""
    started = time.perf_counter()
    config, part = PackConfig(**config_json), parts[index]
    arrays, skipped = _pack_rows(config, part.shard * config.shard_size + part.first_row, items, on_bad_input)
    n_images = len(arrays["count"])
    arrays[SKIPPED_LINES] = np.frombuffer("".join(json.dumps(s) + "\n" for s in skipped).encode(), np.uint8)
    written = finish_part(out_dir, parts, index, arrays,
                          lambda joined: _write_joined(out_dir, part.shard, joined, config_json, identity, sync))
    return {"shard": part.shard, "part": part.index, "n_images": n_images, "skipped": skipped, **written,
            "seconds": time.perf_counter() - started}


def pack_assemble(out_dir: str, parts: list[Part], config_json: dict, identity: str, sync: bool) -> dict:
    """Write a shard from its parts where no part's worker did (runs in a worker)."""
    started = time.perf_counter()
    shard = parts[0].shard
    checksum = write_from_parts(out_dir, parts,
                                lambda joined: _write_joined(out_dir, shard, joined, config_json, identity, sync))
    return {"shard": shard, "n_images": 0, "checksum": checksum, "seconds": time.perf_counter() - started}


def differences(old: dict, config: PackConfig, fingerprint: str, labels: str) -> str:
    changed = changed_values(PackConfig, {**old.get("config", {}), "root": config.root,
                                          "split_file": config.split_file}, config)
    if old.get("sources", {}).get("fingerprint") != fingerprint or old.get("sources", {}).get("labels") != labels:
        changed.append(f"the listed image files or labels differ ({old.get('sources', {}).get('root')} -> "
                       f"{Path(config.root).resolve()})")
    if old.get("synthgen_version") != __version__:
        changed.append(f"synthgen {old.get('synthgen_version')} -> {__version__}")
    return "; ".join(changed) or "the pack settings differ"


def nothing_to_pack(root: Path, config: PackConfig, skipped: list[Skipped]) -> str:
    """Why a pack found no image, with the first file it passed over (a wrong ROOT makes every listed path
    'not found', which the message would otherwise hide)."""
    expected = (f"lines 'path,label,{config.split}' in {config.split_file}, with paths relative to ROOT"
                if config.split_file else "folders 0, 1, 2, 3, 4+ of images")
    message = f"pack {root}: no labelled images found (expected {expected})"
    if skipped:
        first = skipped[0]
        message += (f"; {len(skipped)} file{'s' if len(skipped) > 1 else ''} passed over, the first "
                    f"{first.path}: {first.reason}")
    return message


WORKER_MODULES = ("synthgen.pack",)  # imported in every worker's first task (parallel.in_worker)


def pack(config: PackConfig, run: RunOptions, out_dir, command: list[str] | None = None, log=print) -> dict:
    """Pack (or resume packing) natural images into `out_dir`; returns the summary."""
    started = time.perf_counter()
    likely_needed = run.overwrite or not looks_finished(out_dir)  # its number of images is known after the scan
    with holding(out_dir) as lock:  # the folder is this command's from its first look into it to the end
        with workers_starting(run, WORKER_MODULES, likely_needed) as workers_started:  # they start while this scans
            return _pack(config, run, out_dir, command, log, started, workers_started, lock)


def _pack(config: PackConfig, run: RunOptions, out_dir, command: list[str] | None, log, started: float,
          workers_started, lock) -> dict:
    """`pack` within the held folder, while the workers start: the listing and its checks, then the work, then
    the summary."""
    out = Path(out_dir).resolve()
    listed = list_images(config, run, out)
    writer = open_pack_writer(out, config, listed, command, run, log, lock)
    n_shards = writer.manifest["n_shards"]
    done = writer.check(n_shards, run.overwrite,
                        lambda old: differences(old, config, listed.fingerprint, listed.labels), progress=run.progress)
    todo = [s for s in range(n_shards) if s not in done]
    sizes = {s: len(listed.shard_items(s, config.shard_size)) for s in todo}
    check_room(planned_shards(out, todo, sizes, local_workers(run), config.size), freed={out: writer.replaced_bytes()})
    writer.begin()
    write_json_atomic(out / SOURCES, {"kind": "natural", "root": str(listed.root),
                                      "files": [rel for rel, _ in listed.items],
                                      "labels": [label for _, label in listed.items]})
    workers_started()
    results, workers, in_parts = pack_shards(out, config, run, listed, writer, todo, sizes)
    clear_parts(out)  # the claims of this run
    return summarise(out, writer, results, workers, in_parts, started)


@dataclass
class Listed:
    """The images a pack reads, and what identifies them: the files and their labels, not where they lie (a
    moved folder of the same files is the same pack)."""

    root: Path  # pack ROOT, resolved
    items: list[tuple[str, int]]  # (path relative to ROOT, label), in sources.json's order
    skipped: list[Skipped]  # files passed over while listing
    fingerprint: str  # of the listed files (sources.list_fingerprint)
    labels: str  # sha256 of the items

    def shard_items(self, shard: int, shard_size: int) -> list[tuple[str, int]]:
        return self.items[shard * shard_size:(shard + 1) * shard_size]

    def recorded_config(self, config: PackConfig) -> dict:
        """The settings as the manifest and the workers get them: ROOT and the split file resolved."""
        split_file = str(Path(config.split_file).resolve()) if config.split_file else None
        return config.to_json() | {"root": str(self.root), "split_file": split_file}

    def identity(self, config: PackConfig) -> str:
        return build_identity(config.to_json() | {"root": None, "split_file": None},
                              {"files": self.fingerprint, "labels": self.labels}, __version__, SCHEMA_VERSION)


def list_images(config: PackConfig, run: RunOptions, out: Path) -> Listed:
    """The labelled images of ROOT (count folders) or of the split file, checked: some to pack, --out apart
    from the folders read whole, and no bad file where --on-bad-input fail."""
    root = _check_folder(config.root, "pack ROOT")
    problem = None if config.split_file else inside_sources_problem(out, "--out", [("pack ROOT", str(root))])
    if problem:  # count folders are read whole; a split file names its images
        raise UsageError(problem)
    if config.split_file:
        items, skipped = read_split_file(Path(config.split_file), root, config.split)
    else:
        items, skipped = scan_label_folders(root)
    if not items:
        raise UsageError(nothing_to_pack(root, config, skipped))
    if run.on_bad_input == "fail" and skipped:
        raise BadInputError(skipped[0].path, skipped[0].reason + " (--on-bad-input fail)")
    return Listed(root, items, skipped, list_fingerprint(root, [rel for rel, _ in items]),
                  hashlib.sha256(json.dumps(items).encode()).hexdigest())


def open_pack_writer(out: Path, config: PackConfig, listed: Listed, command: list[str] | None, run: RunOptions,
                     log, lock) -> SetWriter:
    """The writer of the pack in `out`, its manifest's record of the command, and the files passed over
    reported."""
    writer = SetWriter(out, {
        "format": MANIFEST_FORMAT, "schema_version": SCHEMA_VERSION, "synthgen_version": __version__,
        "kind": "natural", "build_identity": listed.identity(config), "command": command,
        "config": listed.recorded_config(config), "n_listed": len(listed.items), "image_size": config.size,
        "n_shards": -(-len(listed.items) // config.shard_size),
        "sources": {"root": str(listed.root), "fingerprint": listed.fingerprint, "labels": listed.labels,
                    "count": len(listed.items)},
    }, log, sync_shards=not run.workers_sync, lock=lock)
    for item in listed.skipped:
        writer.report(item)
    return writer


def pack_shards(out: Path, config: PackConfig, run: RunOptions, listed: Listed, writer: SetWriter, todo: list[int],
                sizes: dict[int, int]) -> tuple[list[dict], int, int]:
    """Decode and write the shards `todo` on the workers, a partial last round in parts (synthgen.parts): the
    workers' results, how many workers, how many shards in parts."""
    config_json, identity = writer.manifest["config"], writer.identity  # as open_pack_writer recorded them

    def rows_of(part: Part):
        first = part.shard * config.shard_size + part.first_row
        return listed.items[first:first + part.n_rows]

    args = (config_json, identity, run.on_bad_input, run.workers_sync)
    with parallel_backend(run) as client:
        workers = workers_of(client, run)
        results, in_parts = run_set(
            out, todo, sizes, workers,
            whole=lambda shard: (pack_shard, (str(out), shard, listed.shard_items(shard, config.shard_size), *args)),
            part=lambda parts, index: (pack_part, (str(out), parts, index, rows_of(parts[index]), *args)),
            assemble=lambda parts: (pack_assemble, (str(out), parts, config_json, identity, run.workers_sync)),
            writer=writer, total=len(listed.items), progress=run.progress, desc="synthgen pack",
            preload=WORKER_MODULES)
    return results, workers, in_parts


def summarise(out: Path, writer: SetWriter, results: list[dict], workers: int, in_parts: int, started: float) -> dict:
    """The finished pack's summary, its manifest written: the count histogram of every shard, and the bad files
    of the shards a resumed pack kept reported as well."""
    paths = [shard_path(out, s) for s in range(writer.manifest["n_shards"])]
    for path in paths:
        with h5py.File(path, "r") as f:
            for bad_path, reason in json.loads(f.attrs["skipped_json"]):
                writer.report(Skipped(bad_path, reason))
    counts = read_labels(paths, ("count",))["count"]
    summary = {"n_images": int(counts.size), "count_histogram": count_histogram(counts),
               "images_packed": sum(r["n_images"] for r in results), "workers": workers, "shards_in_parts": in_parts,
               "total_seconds": round(time.perf_counter() - started, 3)}
    writer.manifest["n_images"] = int(counts.size)
    writer.finish(len(paths), summary)
    return summary
