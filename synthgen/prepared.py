"""The prepared object store: every source object decoded once per build, shared by all workers.

A build uses each THUS10000 object about 16 times (80K images, 10K objects). Decoding in every
worker would repeat that work (2-3 ms per object) in every process; instead the objects are decoded
once, in parallel, into flat uint8 files of premultiplied RGBA cut-outs (cropped, shrunk to the
canvas). Workers read an object with one positioned read (from the page cache, shared by all
processes) and keep it in their byte-bounded cache. Bad objects are found and reported here, before
any image is rendered. The store lives in the output folder (`prepared/`), so workers on a dask
cluster see it wherever they see --out, and it is deleted when the build completes.
"""
from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np

from synthgen.atomic import write_atomic
from synthgen.errors import BadInputError, write_failure
from synthgen.sources import CachedSource, Cutout, Skipped

PREPARED_DIR = "prepared"
PART_SIZE = 256  # objects per part file, and per parallel task


def store_dir(out_dir, size: int) -> Path:
    return Path(out_dir) / PREPARED_DIR / f"objects-{size}"


def part_name(part: int) -> str:
    return f"part-{part:05d}.bin"


def prepare_part(objects, ids: list[int], size: int, path: Path, on_bad_input: str) -> dict:
    """Decode some objects into one raw part file; returns their index rows and the bad ones."""
    rows, bad, chunks, offset = [], [], [], 0
    for k in ids:
        try:
            rgba = objects.load(k, size).levels[0]
        except BadInputError as error:
            if on_bad_input == "fail":
                raise
            bad.append((error.path, error.reason))
            continue
        rows.append((k, offset, rgba.shape[0], rgba.shape[1]))
        chunks.append(rgba.reshape(-1))
        offset += rgba.size
    try:
        write_atomic(path, b"".join(chunk.tobytes() for chunk in chunks))
    except OSError as exc:
        raise write_failure(f"the prepared object store ({path.name})", path.parent, exc) from None
    return {"rows": rows, "bad": bad}


def prepare_objects(objects, ids, size: int, out_dir, on_bad_input: str, run_tasks) -> tuple[list[int], list]:
    """Write the store for `ids` (reusing a complete one); returns the usable ids and the bad inputs.

    `run_tasks` runs a list of (function, args) calls in parallel and returns their results.
    """
    folder = store_dir(out_dir, size)
    index_path, skipped_path = folder / "index.npz", folder / "skipped.json"
    if index_path.exists():  # a resumed build: report the same bad inputs as the first run did
        with np.load(index_path, allow_pickle=False) as index:
            return index["ids"].tolist(), [Skipped(*item) for item in json.loads(skipped_path.read_text())]
    if folder.exists():
        shutil.rmtree(folder)  # an interrupted preparation: start it again
    folder.mkdir(parents=True)
    parts = [list(ids[i:i + PART_SIZE]) for i in range(0, len(ids), PART_SIZE)]
    results = run_tasks([(prepare_part, (objects, part, size, folder / part_name(p), on_bad_input))
                         for p, part in enumerate(parts)])
    rows = np.array([(k, p, offset, h, w) for p, result in enumerate(results) for k, offset, h, w in result["rows"]],
                    dtype=np.int64).reshape(-1, 5)
    bad = [Skipped(path, reason) for result in results for path, reason in result["bad"]]
    index = io.BytesIO()
    np.savez(index, ids=rows[:, 0], part=rows[:, 1], offset=rows[:, 2], height=rows[:, 3], width=rows[:, 4])
    try:
        write_atomic(skipped_path, json.dumps([[item.path, item.reason] for item in bad]).encode())
        write_atomic(index_path, index.getvalue())  # the index comes last: it marks a complete store
    except OSError as exc:
        raise write_failure("the prepared object store (index.npz)", folder, exc) from None
    return rows[:, 0].tolist(), bad


class PreparedObjects(CachedSource):
    """Objects read from a prepared store, one positioned read per object, cached per worker."""

    kind = "prepared"

    def __init__(self, folder, n_objects: int, cache_bytes: int = 128 << 20):
        super().__init__(cache_bytes)
        self.folder = Path(folder)
        self.n_objects = n_objects
        with np.load(self.folder / "index.npz", allow_pickle=False) as index:
            self.rows = {int(k): (int(p), int(o), int(h), int(w)) for k, p, o, h, w in
                         zip(index["ids"], index["part"], index["offset"], index["height"], index["width"])}
        self.files: dict[int, int] = {}

    def __len__(self):
        return self.n_objects

    def decode(self, k: int, size: int) -> Cutout:
        if k not in self.rows:
            raise BadInputError(f"object {k}", "not in the prepared store (it was a bad input)")
        part, offset, h, w = self.rows[k]
        fd = self.files.get(part)
        if fd is None:
            fd = self.files[part] = os.open(self.folder / part_name(part), os.O_RDONLY)
        return Cutout.from_rgba(np.frombuffer(os.pread(fd, h * w * 4, offset), np.uint8).reshape(h, w, 4))

    def __del__(self):
        for fd in self.files.values():
            os.close(fd)
