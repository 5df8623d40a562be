"""`synthgen pack`: natural labelled images (the SOS layout) into shards of the synthgen schema.

Input: a folder tree with one subfolder per count label (`0`, `1`, `2`, `3`, `4+`), or a split file
(the Salient Object Subitizing release: one line per image, `path,label,split`). Output: the same
shards as `synthgen build`, with `count` the label (4 means "4 or more"), no per-object records, and
NaN for the areas that natural images do not have. `index` is the image's position in sources.json
`files` (a skipped bad file leaves a gap). Use the authors' train/test split, never a re-split:
pack each split into its own set.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import joblib
import numpy as np
from tqdm import tqdm

from synthgen import __version__
from synthgen.config import RunOptions, build_identity
from synthgen.errors import BadInputError, UsageError, write_failure
from synthgen.manifest import MANIFEST, MANIFEST_FORMAT, SOURCES, prepare_output, write_json_atomic
from synthgen.parallel import parallel_backend, workers_of
from synthgen.shards import SCHEMA_VERSION, SHARD_FORMAT, shard_path, write_shard
from synthgen.sources import FITS, IMAGE_EXTENSIONS, Skipped, _walk_files, list_fingerprint, load_photo
from synthgen.stats import count_histogram

LABEL_FOLDERS = {"0": 0, "1": 1, "2": 2, "3": 3, "4": 4, "4+": 4}
SPLITS = ("train", "test")


@dataclass(frozen=True)
class PackConfig:
    """Everything that determines the content of a packed set."""

    root: str
    size: int = 161
    fit: str = "squash"
    split_file: str | None = None
    split: str | None = None
    shard_size: int = 1000

    def __post_init__(self):
        if not 16 <= self.size <= 2048:
            raise UsageError(f"--size {self.size}: must be between 16 and 2048 pixels")
        if self.fit not in FITS:
            raise UsageError(f"--fit {self.fit!r}: choose one of {FITS}")
        if self.shard_size < 1:
            raise UsageError(f"--shard-size {self.shard_size}: must be >= 1")
        if (self.split_file is None) != (self.split is None):
            raise UsageError("--split-file and --split go together: --split-file FILE --split train|test")
        if self.split is not None and self.split not in SPLITS:
            raise UsageError(f"--split {self.split!r}: choose one of {SPLITS}")

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def scan_label_folders(root: Path) -> tuple[list[tuple[str, int]], list[Skipped]]:
    """Images under `0/`, `1/`, `2/`, `3/`, `4+/` (nested folders allowed), with their labels."""
    items, skipped = [], []
    for path in _walk_files(root):
        rel = path.relative_to(root)
        label = LABEL_FOLDERS.get(rel.parts[0]) if len(rel.parts) > 1 else None
        if label is None:
            skipped.append(Skipped(str(path), "not inside a count folder (0, 1, 2, 3 or 4+)"))
        elif path.suffix.lower() not in IMAGE_EXTENSIONS:
            skipped.append(Skipped(str(path), "not an image file"))
        else:
            items.append((rel.as_posix(), label))
    return items, skipped


def read_split_file(split_file: Path, root: Path, split: str) -> tuple[list[tuple[str, int]], list[Skipped]]:
    """The images of one split from an SOS-style file of `path,label,split` lines (a header is allowed)."""
    items, skipped = [], []
    try:
        rows = list(csv.reader(split_file.read_text().splitlines()))
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--split-file {split_file}: cannot be read ({exc})") from None
    for number, row in enumerate(rows, 1):
        fields = [f.strip() for f in row]
        if not fields or not fields[0] or fields[0].startswith("#"):
            continue
        if len(fields) != 3:
            raise UsageError(f"--split-file {split_file}, line {number}: expected 'path,label,split', got {row}")
        path, label, which = fields
        if not label.rstrip("+").isdigit():
            if number == 1:
                continue  # a header line
            raise UsageError(f"--split-file {split_file}, line {number}: label {label!r} is not 0, 1, 2, 3 or 4+")
        if which.lower() not in SPLITS:
            raise UsageError(f"--split-file {split_file}, line {number}: split {which!r} is not train or test")
        if which.lower() != split:
            continue
        if not (root / path).is_file():
            skipped.append(Skipped(str(root / path), f"listed in {split_file.name} but not found"))
            continue
        items.append((Path(path).as_posix(), min(int(label.rstrip("+")), 4)))
    return items, skipped


def pack_shard(out_dir: str, shard_index: int, first: int, items: list, config_json: dict, identity: str,
               on_bad_input: str) -> dict:
    """Decode and write one shard of natural images (runs in a worker)."""
    config = PackConfig(**config_json)
    root = Path(config.root)
    images, labels, positions, skipped = [], [], [], []
    for position, (rel, label) in enumerate(items, start=first):
        try:
            images.append(load_photo(root / rel, config.size, config.fit))
        except BadInputError as error:
            if on_bad_input == "fail":
                raise
            skipped.append((error.path, error.reason))
            continue
        labels.append(label)
        positions.append(position)
    n = len(images)
    nan = np.full(n, np.nan, np.float32)
    arrays = {
        "images": np.stack(images) if images else np.zeros((0, config.size, config.size, 3), np.uint8),
        "count": np.array(labels, np.int16), "index": np.array(positions, np.int64),
        "image_seed": np.zeros(n, np.uint64), "target_area": nan, "full_area": nan, "visible_area": nan,
        "background_id": np.full(n, -1, np.int32), "object_offset": np.zeros(n + 1, np.int64),
        "objects/source_id": np.zeros(0, np.int32), "objects/box": np.zeros((0, 4), np.int16),
        "objects/full_area": np.zeros(0, np.float32), "objects/visible_area": np.zeros(0, np.float32),
    }
    attrs = {"format": SHARD_FORMAT, "schema_version": SCHEMA_VERSION, "synthgen_version": __version__,
             "kind": "natural", "build_identity": identity, "config_json": json.dumps(config_json, sort_keys=True),
             "shard_index": shard_index, "first_index": first, "n_images": n, "image_size": config.size,
             # which files are bad depends only on the files, so a resumed pack can still report them
             "skipped_json": json.dumps(skipped)}
    path = shard_path(out_dir, shard_index)
    try:
        checksum = write_shard(path, arrays, attrs)
    except OSError as exc:
        raise write_failure(path.name, out_dir, exc) from None
    return {"shard": shard_index, "n_images": n, "first_index": first, "checksum": checksum, "skipped": skipped}


def pack(config: PackConfig, run: RunOptions, out_dir, command: list[str] | None = None, log=print) -> dict:
    """Pack (or resume packing) natural images into `out_dir`; returns the summary."""
    started = time.perf_counter()
    out = Path(out_dir).resolve()
    root = Path(config.root)
    if not root.is_dir():
        raise UsageError(f"pack {root}: folder does not exist")
    if config.split_file:
        items, skipped = read_split_file(Path(config.split_file), root, config.split)
    else:
        items, skipped = scan_label_folders(root)
    if not items:
        raise UsageError(f"pack {root}: no labelled images found (expected folders 0, 1, 2, 3, 4+ of images"
                         + (f", or lines for split {config.split!r} in {config.split_file}" if config.split else "")
                         + ")")
    if run.on_bad_input == "fail" and skipped:
        raise BadInputError(skipped[0].path, skipped[0].reason + " (--on-bad-input fail)")
    reported: dict[str, str] = {}

    def report(path, reason, write=log):
        if path not in reported:
            reported[path] = reason
            write(Skipped(path, reason).line())

    for item in skipped:
        report(item.path, item.reason)
    fingerprint = list_fingerprint(root, [rel for rel, _ in items])
    # the root is left out: a moved folder of the same files is the same pack
    identity = build_identity(config.to_json() | {"root": None}, {"files": fingerprint}, __version__, SCHEMA_VERSION)
    n_shards = -(-len(items) // config.shard_size)
    config_json = config.to_json() | {"root": str(root.resolve())}
    done = prepare_output(out, identity, config_json, n_shards, run.overwrite)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / SOURCES, {"kind": "natural", "root": str(root.resolve()),
                                      "files": [rel for rel, _ in items], "labels": [label for _, label in items]})
    manifest = {"format": MANIFEST_FORMAT, "schema_version": SCHEMA_VERSION, "synthgen_version": __version__,
                "kind": "natural", "complete": False, "build_identity": identity, "command": command,
                "config": config_json, "n_listed": len(items), "image_size": config.size, "n_shards": n_shards,
                "sources": {"root": str(root.resolve()), "fingerprint": fingerprint, "count": len(items)}}
    write_json_atomic(out / MANIFEST, manifest)

    todo = [s for s in range(n_shards) if s not in done]
    results = []
    with parallel_backend(run) as client:
        workers = workers_of(client, run)
        tasks = (joblib.delayed(pack_shard)(str(out), s, s * config.shard_size,
                                            items[s * config.shard_size:(s + 1) * config.shard_size],
                                            config_json, identity, run.on_bad_input) for s in todo)
        already = len(items) - sum(len(items[s * config.shard_size:(s + 1) * config.shard_size]) for s in todo)
        with tqdm(total=len(items), initial=already, unit="img", desc="synthgen pack", disable=not run.progress,
                  dynamic_ncols=True) as bar:
            for result in joblib.Parallel(return_as="generator_unordered")(tasks):
                results.append(result)
                bar.update(min(config.shard_size, len(items) - result["first_index"]))
                for path, reason in result["skipped"]:
                    report(path, reason, bar.write)
    entries, counts = [], []
    for s in range(n_shards):
        path = shard_path(out, s)
        with h5py.File(path, "r") as f:
            counts.append(f["count"][()])
            for bad_path, reason in json.loads(f.attrs["skipped_json"]):
                report(bad_path, reason)
            entries.append({"file": path.name, "first_index": int(f.attrs["first_index"]),
                            "n_images": int(f.attrs["n_images"]), "content_sha256": str(f.attrs["content_sha256"])})
    counts = np.concatenate(counts)
    summary = {"n_images": int(counts.size), "count_histogram": count_histogram(counts),
               "images_packed": sum(r["n_images"] for r in results), "workers": workers,
               "total_seconds": round(time.perf_counter() - started, 3),
               "skipped_inputs": [{"path": p, "reason": r} for p, r in reported.items()]}
    manifest.update({"complete": True, "n_images": int(counts.size), "shards": entries, "summary": summary})
    write_json_atomic(out / MANIFEST, manifest)
    return summary
