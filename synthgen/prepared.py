"""The prepared object store: every source object decoded once per build, shared by all workers.

A build uses each THUS10000 object about 16 times (80K images, 10K objects). Decoding in every
worker would repeat that work (2-3 ms per object) in every process; instead the objects are decoded
once, in parallel, into flat uint8 files of premultiplied RGBA cut-outs (cropped, shrunk to the
canvas), each with its mip levels (sources.Cutout), so that reading one back costs no resampling.
Workers read an object with one positioned read (from the page cache, shared by all
processes) and keep it in their byte-bounded cache. Bad objects are found and reported here, before
any image is rendered. The store lives in the output folder (`prepared/`), so workers on a dask
cluster see it wherever they see --out, and it is deleted when the build completes.
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np

from common.atomic import write_atomic
from synthgen.errors import BadInputError, write_failure
from synthgen.sources import CachedSource, Cutout, Skipped

PREPARED_DIR = "prepared"
PART_SIZE = 256  # the most items per part file (and per parallel task)
MIN_PART_SIZE = 16
PARTS_PER_WORKER = 4  # enough parts that the last round of them leaves few workers idle


def store_dir(out_dir, size: int) -> Path:
    return Path(out_dir) / PREPARED_DIR / f"objects-{size}-mip"  # the layout with mip levels


def prepared_complete(out_dir, size: int) -> bool:
    """Whether the store for `size` in `out_dir` is complete (a resumed build reuses it)."""
    return (store_dir(out_dir, size) / "index.npz").exists()  # written last


def store_bytes_at_most(n_objects: int, size: int) -> int:
    """The most a store of `n_objects` takes at `size`: each a cut-out of at most size x size pixels with its mip
    levels (THUS10000's objects, cropped to their masks, take about three quarters of that on average)."""
    return n_objects * Cutout.stored_bytes(size, size)


def part_name(part: int) -> str:
    return f"part-{part:05d}.bin"


def prepare_part(objects, ids: list[int], size: int, path: Path, on_bad_input: str, eligible) -> dict:
    """Decode some objects into one raw part file; returns their index rows (with whether each can appear
    at every area and count: `eligible(k, cutout)`), what their masks were (synthgen.masks) and the bad ones."""
    rows, masks, bad, chunks, offset = [], [], [], [], 0
    for k in ids:
        try:
            cutout = objects.load(k, size)
        except BadInputError as error:
            if on_bad_input == "fail":
                raise
            bad.append((error.path, error.reason))
            continue
        h, w = cutout.shape
        if cutout.mask is not None:
            info = {**dataclasses.asdict(cutout.mask), "levels": list(cutout.mask.levels)}
            masks.append((objects.mask_path(k), info))
        rows.append((k, offset, h, w, int(eligible(k, cutout))))
        chunks.append(cutout.tobytes())
        offset += len(chunks[-1])
    try:
        write_atomic(path, b"".join(chunks))
    except OSError as exc:
        raise write_failure(f"the prepared object store ({path.name})", path.parent, exc) from None
    return {"rows": rows, "bad": bad, "masks": masks}


@dataclasses.dataclass
class PreparedStore:
    """What preparing the objects found: the usable ids, the bad inputs, and what each mask was."""

    ids: list[int]
    bad: list[Skipped]
    masks: list[tuple[str, dict]]  # (mask path, synthgen.masks.MaskInfo as a dict) per usable object
    eligible: dict[int, bool] = dataclasses.field(default_factory=dict)  # can appear at every area and count


def part_size(n_items: int, workers: int) -> int:
    """Items (objects, or the scenes of a scene store) per part: about PARTS_PER_WORKER parts per worker.
    Parts of a fixed 256 gave the 240 procedural objects to one worker, and THUS10000's 10K objects to 16
    workers in 2.5 rounds."""
    return min(PART_SIZE, max(MIN_PART_SIZE, -(-n_items // (PARTS_PER_WORKER * workers))))


def prepare_objects(objects, ids, size: int, out_dir, on_bad_input: str, eligible, run_tasks,
                    workers: int = 1) -> PreparedStore:
    """Write the store for `ids` (reusing a complete one); returns what it found.

    `run_tasks` runs a list of (function, args) calls on `workers` in parallel and returns their results.
    """
    folder = store_dir(out_dir, size)
    index_path, report_path = folder / "index.npz", folder / "report.json"
    if prepared_complete(out_dir, size):  # a resumed build: report the same bad inputs as the first run did
        report = json.loads(report_path.read_text())
        with np.load(index_path, allow_pickle=False) as index:
            return PreparedStore(index["ids"].tolist(), [Skipped(*item) for item in report["bad"]],
                                 [tuple(item) for item in report["masks"]],
                                 {int(k): bool(e) for k, e in zip(index["ids"], index["eligible"])})
    if folder.exists():
        shutil.rmtree(folder)  # an interrupted preparation: start it again
    folder.mkdir(parents=True)
    step = part_size(len(ids), workers)
    parts = [list(ids[i:i + step]) for i in range(0, len(ids), step)]
    results = run_tasks([(prepare_part, (objects, part, size, folder / part_name(p), on_bad_input, eligible))
                         for p, part in enumerate(parts)])
    rows = np.array([(k, p, offset, h, w, fits) for p, result in enumerate(results)
                     for k, offset, h, w, fits in result["rows"]], dtype=np.int64).reshape(-1, 6)
    store = PreparedStore(rows[:, 0].tolist(), [Skipped(path, reason) for r in results for path, reason in r["bad"]],
                          [tuple(item) for r in results for item in r["masks"]],
                          {int(k): bool(e) for k, e in zip(rows[:, 0], rows[:, 5])})
    index = io.BytesIO()
    np.savez(index, ids=rows[:, 0], part=rows[:, 1], offset=rows[:, 2], height=rows[:, 3], width=rows[:, 4],
             eligible=rows[:, 5])
    report = {"bad": [[item.path, item.reason] for item in store.bad], "masks": store.masks}
    try:
        write_atomic(report_path, json.dumps(report).encode())
        write_atomic(index_path, index.getvalue())  # the index comes last: it marks a complete store
    except OSError as exc:
        raise write_failure("the prepared object store (index.npz)", folder, exc) from None
    return store


def index_rows(index) -> dict[int, tuple[int, int, int, int]]:
    """(part, offset, height, width) of every item of a store's index (an opened index.npz), by id."""
    return {int(k): (int(p), int(o), int(h), int(w)) for k, p, o, h, w in
            zip(index["ids"], index["part"], index["offset"], index["height"], index["width"])}


class PartFiles:
    """Positioned reads from a store's part files, each opened once per process and kept open."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.fds: dict[int, int] = {}

    def read(self, part: int, offset: int, nbytes: int) -> bytes:
        fd = self.fds.get(part)
        if fd is None:
            fd = self.fds[part] = os.open(self.folder / part_name(part), os.O_RDONLY)
        return os.pread(fd, nbytes, offset)

    def __del__(self):
        for fd in self.fds.values():
            os.close(fd)


class PreparedObjects(CachedSource):
    """Objects read from a prepared store, one positioned read per object, cached per worker."""

    kind = "prepared"

    def __init__(self, folder, n_objects: int, cache_bytes: int = 128 << 20):
        super().__init__(cache_bytes)
        self.folder = Path(folder)
        self.n_objects = n_objects
        with np.load(self.folder / "index.npz", allow_pickle=False) as index:
            self.rows = index_rows(index)
            self.eligible = {int(k): bool(e) for k, e in zip(index["ids"], index["eligible"])}
        self.parts = PartFiles(self.folder)

    def __len__(self):
        return self.n_objects

    def decode(self, k: int, size: int) -> Cutout:
        if k not in self.rows:
            raise BadInputError(f"object {k}", "not in the prepared store (it was a bad input)")
        part, offset, h, w = self.rows[k]
        return Cutout.from_bytes(self.parts.read(part, offset, Cutout.stored_bytes(h, w)), h, w)
