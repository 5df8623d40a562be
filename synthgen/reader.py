"""Reading a finished set: the one way downstream code (trainer, analysis) gets images and labels.

HDF5 handles are opened lazily, per process: a `ShardSet` can be handed to DataLoader workers
(forked or spawned) and each worker opens its own files on first use; a handle never crosses a fork.
"""
from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path

import h5py
import numpy as np

from synthgen.errors import OutputError
from synthgen.manifest import read_manifest

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


class ShardSet:
    """A complete synthgen output folder, indexed 0 .. len-1 across its shards."""

    def __init__(self, root):
        self.root = Path(root)
        manifest = read_manifest(self.root)
        if manifest is None:
            raise OutputError(f"{self.root}: no synthgen manifest.json here; give the --out folder of a "
                              "`synthgen build`")
        if not manifest.get("complete"):
            raise OutputError(f"{self.root}: the build is not complete; run the same `synthgen build` command "
                              "again to resume it")
        self.manifest = manifest
        self.paths = [self.root / shard["file"] for shard in manifest["shards"]]
        sizes = np.array([shard["n_images"] for shard in manifest["shards"]], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(sizes)])
        self.image_size = int(manifest["image_size"])
        self.kind = manifest.get("kind", "synthetic")  # "natural" for `synthgen pack` sets: labels only
        self._files: dict[int, h5py.File] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return int(self.starts[-1])

    @cached_property
    def labels(self) -> dict[str, np.ndarray]:
        """Per-image labels for the whole set (count, areas in pixels, ids, seeds), as arrays."""
        return read_labels(self.paths)

    def locate(self, index: int) -> tuple[int, int]:
        """(shard number, row within the shard) of a global image index."""
        if not 0 <= index < len(self):
            raise IndexError(f"image {index} out of range 0..{len(self) - 1}")
        shard = int(np.searchsorted(self.starts, index, side="right") - 1)
        return shard, int(index - self.starts[shard])

    def _file(self, shard: int) -> h5py.File:
        if os.getpid() != self._pid:  # forked: the parent's handles must not be used here
            self._files = {}
            self._pid = os.getpid()
        f = self._files.get(shard)
        if f is None:
            f = self._files[shard] = h5py.File(self.paths[shard], "r")
        return f

    def image(self, index: int) -> np.ndarray:
        shard, row = self.locate(index)
        return self._file(shard)["images"][row]

    def images(self, indices) -> np.ndarray:
        """Several images as (k, size, size, 3) uint8, in the order asked; read shard by shard, sorted."""
        indices = np.asarray(indices, dtype=np.int64)
        out = np.empty((len(indices), self.image_size, self.image_size, 3), np.uint8)
        if len(indices) and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"image indices must be in 0..{len(self) - 1}")
        shards = np.searchsorted(self.starts, indices, side="right") - 1
        for shard in np.unique(shards):
            where = np.flatnonzero(shards == shard)
            rows = indices[where] - self.starts[shard]
            order = np.argsort(rows, kind="stable")
            unique_rows, inverse = np.unique(rows[order], return_inverse=True)
            block = self._file(int(shard))["images"][unique_rows.tolist()]
            out[where[order]] = block[inverse]
        return out

    def union_boxes(self) -> np.ndarray:
        """For every image, the box (x0, y0, x1, y1) around all of its objects; NaN where it has none.
        Crops that contain it keep every object in view."""
        out = np.full((len(self), 4), np.nan, np.float32)
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

    def objects(self, index: int) -> dict[str, np.ndarray]:
        """Per-object records of one image: source_id, box (x0, y0, x1, y1), full_area, visible_area."""
        shard, row = self.locate(index)
        f = self._file(shard)
        start, stop = f["object_offset"][row:row + 2]
        return {name: f[f"objects/{name}"][start:stop] for name in OBJECT_FIELDS}

    def __getitem__(self, index: int) -> tuple[np.ndarray, dict]:
        labels = {name: values[index].item() for name, values in self.labels.items()}
        return self.image(index), labels

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files = {}

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_files"] = {}
        return state

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
