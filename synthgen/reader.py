"""Reading a finished set: the one way downstream code (trainer, analysis) gets images and labels.

HDF5 handles are opened lazily, per process: a `ShardSet` can be handed to DataLoader workers
(forked or spawned) and each worker opens its own files on first use; a handle never crosses a fork.

Random access: images stored raw, one per HDF5 chunk (the layout synthgen writes without
compression), are read straight from the file into the output array, one positioned read per run of
consecutive images, at the file offsets HDF5's chunk index gives. HDF5's own selection by a list of
rows is some 300x slower than that (benchmarks/bench_read.py). Compressed shards are read through
h5py, a slice per run of consecutive images, since decompressing is what they cost anyway.

Integrity: before a shard's first use, its header is checked against manifest.json (same set, same
range, same checksum) and its contents are hashed and compared with the `content_sha256` it records
(synthgen.shards), so a damaged shard stops the reader with a message naming the file instead of
feeding a model silently. A shard is hashed once per process (several sets or readers of the same
file share the check), several shards at once on several threads; `verify=False` skips the hashing
for sets already checked with `synthgen verify`.
"""
from __future__ import annotations

import operator
import os
import shlex
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from common.locks import held_by
from synthgen.errors import OutputError
from synthgen.manifest import holds_set, read_manifest
from synthgen.shards import VERIFY_THREADS, content_checksum, raw_image_offsets, shard_contents

IOV_MAX = 1024  # buffers one preadv may fill (POSIX's minimum guarantee, Linux's value)
_VERIFIED: set[tuple] = set()  # (path, inode, size, mtime) of the shards this process has hashed and found intact


def _signature(path: Path) -> tuple:
    stat = path.stat()
    return (str(path.resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns)


def set_manifest(root: Path, named: str) -> dict:
    """The manifest of the set in `root`; OutputError, naming `named`, when `root` holds no set."""
    if not root.is_dir():
        what = "not a folder" if root.exists() else "no such folder"
        raise OutputError(f"{named}: {what}; give the --out folder of a `synthgen build` or `synthgen pack`")
    manifest = read_manifest(root)
    if manifest is None:
        try:
            below = sorted(child.name for child in root.iterdir() if child.is_dir() and holds_set(child))
        except OSError:  # an unreadable folder: nothing to suggest
            below = []
        hint = (f"; sets lie in its subfolders {', '.join(below[:5])}{' ...' if len(below) > 5 else ''}: name those"
                if below else "")
        raise OutputError(f"{named}: no synthgen manifest.json here; give the --out folder of a "
                          f"`synthgen build` or `synthgen pack`{hint}")
    return manifest


def check_shard(path: Path, entry: dict, identity: str, root: Path, verify: bool = True) -> None:
    """Raise OutputError, naming the file and what to do, unless the shard is the one manifest.json
    lists and (with `verify`) its contents match its checksum."""
    rebuild = (f"`synthgen verify {shlex.quote(str(root))}` lists every damaged shard; delete them and re-run the "
               "command that made the set (manifest.json: command) to rebuild them")
    try:
        signature = _signature(path)
    except OSError:
        raise OutputError(f"{path}: listed in manifest.json but missing, so the set is incomplete; {rebuild}") from None
    if verify and signature in _VERIFIED:
        return
    try:
        attrs, arrays = shard_contents(path, hashed=verify)
    except (OSError, KeyError, ValueError) as exc:
        raise OutputError(f"{path}: not a readable HDF5 shard ({exc}); {rebuild}") from None
    recorded = attrs.get("content_sha256")
    if (attrs.get("build_identity") != identity or recorded != entry.get("content_sha256")
            or attrs.get("first_index") != entry.get("first_index") or attrs.get("n_images") != entry.get("n_images")):
        raise OutputError(f"{path}: not the shard manifest.json lists (another set's shard, or a different "
                          f"version of it); {rebuild}")
    if verify:
        try:
            intact = content_checksum(arrays, attrs) == recorded  # streamed images are read here
        except OSError as exc:
            raise OutputError(f"{path}: not a readable HDF5 shard ({exc}); {rebuild}") from None
        if not intact:
            raise OutputError(f"{path}: corrupted: its contents no longer match the checksum it records; {rebuild}")
        _VERIFIED.add(signature)


LABELS = ("count", "index", "image_seed", "target_area", "full_area", "visible_area", "background_id")
OBJECT_FIELDS = ("source_id", "box", "full_area", "visible_area")


def read_labels(paths, names=LABELS) -> dict[str, np.ndarray]:
    """Per-image label arrays of several shards, concatenated in order."""
    parts: dict[str, list] = {name: [] for name in names}
    for path in paths:
        with h5py.File(path, "r") as f:
            for name in names:
                parts[name].append(f[name][()])
    return {name: np.concatenate(chunks) for name, chunks in parts.items()}


def incomplete_reason(manifest: dict, root: Path) -> str:
    """Why a set is not complete, and what to do: wait for the synthgen writing it now, or resume, unless the
    same command would fail again."""
    writer = held_by(root, "synthgen")
    if writer:  # built or extended at this moment, not interrupted: resuming is not what to do
        return f"the set is being written now (synthgen, pid {writer}); wait for it to finish"
    failure = manifest.get("failure")
    if failure:
        return (f"the set is incomplete: its build stopped at image {failure['image']}, and would stop there again "
                f"if resumed: {failure['message']}")
    return "the set is not complete; run the command that made it (manifest.json: command) again to resume it"


class ShardSet:
    """A complete synthgen output folder, indexed 0 .. len-1 across its shards.

    `verify`: hash each shard before its first use and refuse a damaged one (see the module's notes);
    `progress`: show a progress bar while several shards are checked at once;
    `option`: the command-line option that named the set, for error messages (e.g. "--data").
    """

    def __init__(self, root, verify: bool = True, progress: bool = False, option: str | None = None):
        self.root = Path(root)
        named = f"{option} {self.root}" if option else str(self.root)
        manifest = set_manifest(self.root, named)
        if not manifest.get("complete"):
            raise OutputError(f"{named}: {incomplete_reason(manifest, self.root)}")
        try:
            self.manifest = manifest
            self.paths = [self.root / shard["file"] for shard in manifest["shards"]]
            sizes = np.array([shard["n_images"] for shard in manifest["shards"]], dtype=np.int64)
            self.image_size = int(manifest["image_size"])
            self.identity = manifest["build_identity"]
        except (KeyError, TypeError, ValueError) as exc:
            raise OutputError(f"{self.root / 'manifest.json'}: damaged manifest ({exc!r} is missing or wrong); "
                              "re-run the command that made the set") from None
        self.starts = np.concatenate([[0], np.cumsum(sizes)])
        self.kind = manifest.get("kind", "synthetic")  # "natural" for `synthgen pack` sets: labels only
        self.verify = verify
        self.progress = progress
        self._checked: set[int] = set()  # shards checked in this process (or in the parent that handed us over)
        self._files: dict[int, h5py.File] = {}
        self._raw: dict[int, tuple[int, np.ndarray] | None] = {}  # shard -> (file descriptor, image offsets)
        self._pid = os.getpid()

    def __len__(self) -> int:
        return int(self.starts[-1])

    def _check(self, shard: int) -> None:
        if shard not in self._checked:
            check_shard(self.paths[shard], self.manifest["shards"][shard], self.identity, self.root, self.verify)
            self._checked.add(shard)

    def check(self) -> None:
        """Check every shard not checked yet (several at once); raises OutputError at the first damaged one."""
        todo = [s for s in range(len(self.paths)) if s not in self._checked]
        if not todo:
            return
        with ThreadPoolExecutor(min(VERIFY_THREADS, len(todo))) as pool:
            results = pool.map(self._check, todo)
            for _ in tqdm(results, total=len(todo), desc=f"checking {self.root.name}", unit="shard", leave=False,
                          disable=not (self.progress and self.verify and len(todo) > 1), dynamic_ncols=True):
                pass

    @cached_property
    def labels(self) -> dict[str, np.ndarray]:
        """Per-image labels for the whole set (count, areas in pixels, ids, seeds, and the further labels of
        a kind of set, such as the dot arrays' field_area), as arrays."""
        self.check()
        return read_labels(self.paths, LABELS + tuple(self.manifest.get("extra_labels", ())))

    def locate(self, index: int) -> tuple[int, int]:
        """(shard number, row within the shard) of a global image index."""
        if not 0 <= index < len(self):
            raise IndexError(f"image {index} out of range 0..{len(self) - 1}")
        shard = int(np.searchsorted(self.starts, index, side="right") - 1)
        return shard, int(index - self.starts[shard])

    def _file(self, shard: int) -> h5py.File:
        if os.getpid() != self._pid:  # forked: the parent's handles must not be used here
            self._files, self._raw = {}, {}
            self._pid = os.getpid()
        f = self._files.get(shard)
        if f is None:
            self._check(shard)
            f = self._files[shard] = h5py.File(self.paths[shard], "r")
        return f

    def image(self, index: int) -> np.ndarray:
        self.locate(index)  # the range check, with its message
        return self.images([index])[0]

    def _raw_layout(self, shard: int) -> tuple[int, np.ndarray] | None:
        """(file descriptor, image offsets) when the shard's images can be read straight from the file."""
        if shard not in self._raw:
            offsets = raw_image_offsets(self._file(shard)["images"])
            self._raw[shard] = None if offsets is None else (os.open(self.paths[shard], os.O_RDONLY), offsets)
        return self._raw[shard]

    def images(self, indices) -> np.ndarray:
        """Several images as (k, size, size, 3) uint8, in the order asked (repeats allowed)."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        out = np.empty((len(indices), self.image_size, self.image_size, 3), np.uint8)
        if len(indices) and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"image indices must be in 0..{len(self) - 1}")
        shards = np.searchsorted(self.starts, indices, side="right") - 1
        for shard in np.unique(shards).tolist():
            where = np.flatnonzero(shards == shard)
            rows = indices[where] - self.starts[shard]
            order = np.argsort(rows, kind="stable")
            rows, where = rows[order], where[order]
            raw = self._raw_layout(shard)
            if raw is None:  # compressed: HDF5 reads (and decompresses) each run of consecutive images
                images = self._file(shard)["images"]
                breaks = np.flatnonzero((np.diff(rows) != 1) | (np.diff(where) != 1)) + 1
                for run in np.split(np.arange(len(rows)), breaks):
                    first, last = int(run[0]), int(run[-1]) + 1
                    images.read_direct(out, np.s_[int(rows[first]):int(rows[first]) + last - first],
                                       np.s_[int(where[first]):int(where[first]) + last - first])
            else:
                self._read_raw(shard, *raw, rows, where, out)
        return out

    def _read_raw(self, shard: int, fd: int, offsets: np.ndarray, rows: np.ndarray, where: np.ndarray,
                  out: np.ndarray) -> None:
        """Read sorted `rows` into out[where]: one preadv per run of images that lie end to end in the file."""
        image_bytes = out[0].nbytes
        starts = offsets[rows]
        breaks = np.flatnonzero((np.diff(starts) != image_bytes) | (np.diff(rows) != 1)) + 1
        for run in np.split(np.arange(len(rows)), breaks):
            for first in range(0, len(run), IOV_MAX):
                part = run[first:first + IOV_MAX]
                want = image_bytes * len(part)
                got = os.preadv(fd, [out[slot] for slot in where[part].tolist()], int(starts[part[0]]))
                if got != want:
                    raise OutputError(f"{self.paths[shard]}: shorter than its index says (read {got} of {want} "
                                      f"bytes at image {int(rows[part[0]])}); it changed after it was checked: "
                                      f"`synthgen verify {shlex.quote(str(self.root))}`")

    def union_boxes(self) -> np.ndarray:
        """For every image, the box (x0, y0, x1, y1) around all of its objects; NaN where it has none.
        Crops that contain it keep every object in view."""
        out = np.full((len(self), 4), np.nan, np.float32)
        self.check()
        for shard, path in enumerate(self.paths):
            with h5py.File(path, "r") as f:
                offsets, boxes = f["object_offset"][()], f["objects/box"][()].astype(np.float32)
            has = np.flatnonzero(np.diff(offsets) > 0)
            if has.size:
                starts = offsets[has]
                rows = self.starts[shard] + has
                out[rows, 0] = np.minimum.reduceat(boxes[:, 0], starts)
                out[rows, 1] = np.minimum.reduceat(boxes[:, 1], starts)
                out[rows, 2] = np.maximum.reduceat(boxes[:, 2], starts)
                out[rows, 3] = np.maximum.reduceat(boxes[:, 3], starts)
        return out

    def object_table(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Every object of the set: global offsets (image i's objects are rows offsets[i]:offsets[i+1])
        and each per-object field, concatenated over the shards."""
        self.check()
        offsets, fields = [np.zeros(1, np.int64)], {name: [] for name in OBJECT_FIELDS}
        for path in self.paths:
            with h5py.File(path, "r") as f:
                offsets.append(f["object_offset"][1:] + offsets[-1][-1])
                for name in OBJECT_FIELDS:
                    fields[name].append(f[f"objects/{name}"][()])
        return np.concatenate(offsets), {name: np.concatenate(parts) for name, parts in fields.items()}

    def objects(self, index: int) -> dict[str, np.ndarray]:
        """Per-object records of one image: source_id, box (x0, y0, x1, y1), full_area, visible_area."""
        shard, row = self.locate(index)
        f = self._file(shard)
        start, stop = f["object_offset"][row:row + 2]
        return {name: f[f"objects/{name}"][start:stop] for name in OBJECT_FIELDS}

    def __getitem__(self, index: int) -> tuple[np.ndarray, dict]:
        """The image and its labels; IndexError, with the valid range, outside 0 .. len-1."""
        index = operator.index(index)  # a TypeError for a float or a string, as any sequence gives
        self.locate(index)  # the range check, before the labels are read
        labels = {name: values[index].item() for name, values in self.labels.items()}
        return self.image(index), labels

    def close(self) -> None:
        if os.getpid() == self._pid:  # descriptors inherited over a fork belong to the parent
            for f in self._files.values():
                f.close()
            for raw in self._raw.values():
                if raw is not None:
                    os.close(raw[0])
        self._files, self._raw = {}, {}

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_files"], state["_raw"] = {}, {}
        return state

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
