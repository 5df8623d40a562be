"""HDF5 shards: the schema, the atomic writer, and the content checksum.

The schema is documented in docs/SHARD_FORMAT.md. A shard appears only when complete: it is built in
memory, then written atomically (common.atomic). Its `content_sha256` covers
every dataset (name, dtype, shape, bytes) and every other attribute, so `synthgen verify` detects
any change.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from common.atomic import write_atomic
from synthgen.config import canonical_json

SCHEMA_VERSION = 1
SHARD_FORMAT = "synthgen-shard"
SHARD_NAME = "shard-{:05d}.h5"
SHARD_RE = re.compile(r"shard-(\d{5,})\.h5")
TEMP_RE = re.compile(r"\.shard-\d{5,}\.h5\.tmp-\d+")
BLOCK_BYTES = 4 << 20  # what a streamed checksum reads at a time
VERIFY_THREADS = 4  # streamed reads and hashing release the GIL: several shards are checked at once

# name -> (dtype, trailing shape given the image size); leading axis: images (n), objects (m)
IMAGE_DATASETS = {
    "images": (np.uint8, lambda s: (s, s, 3)),
    "count": (np.int16, lambda s: ()),
    "index": (np.int64, lambda s: ()),
    "image_seed": (np.uint64, lambda s: ()),
    "target_area": (np.float32, lambda s: ()),
    "full_area": (np.float32, lambda s: ()),
    "visible_area": (np.float32, lambda s: ()),
    "background_id": (np.int32, lambda s: ()),
}
OBJECT_DATASETS = {
    "objects/source_id": (np.int32, ()),
    "objects/box": (np.int16, (4,)),
    "objects/full_area": (np.float32, ()),
    "objects/visible_area": (np.float32, ()),
}
REQUIRED_ATTRS = ("format", "schema_version", "synthgen_version", "build_identity", "config_json",
                  "shard_index", "first_index", "n_images", "image_size", "content_sha256")
COMPRESSION_OPTIONS = {"none": {}, "lzf": {"compression": "lzf"},
                       "gzip": {"compression": "gzip", "compression_opts": 4}}


class ShardArrays:
    """The datasets of one shard, assembled image by image and typed by the schema above.

    Every producer (`synthgen build`'s scenes, `synthgen pack`'s photos) adds its images here, so the
    datasets, their dtypes and the object table are written in one place. Labels a producer does not
    have keep their neutral value: NaN areas, seed 0, background -1, no objects.
    """

    def __init__(self, size: int):
        self.size = size
        self.rows: dict[str, list] = {name: [] for name in IMAGE_DATASETS}
        self.objects: dict[str, list] = {name: [] for name in OBJECT_DATASETS}
        self.extra: dict[str, list] = {}  # further per-image labels of a kind of set (float32), e.g. field_area
        self.offsets = [0]

    def __len__(self) -> int:
        return len(self.rows["images"])

    def add(self, image: np.ndarray, *, count: int, index: int, image_seed: int = 0, target_area: float = np.nan,
            full_area: float = np.nan, visible_area: float = np.nan, background_id: int = -1,
            objects: list[tuple] = (), extra: dict[str, float] | None = None) -> None:
        """One image and its labels; `objects` holds (source_id, box, full_area, visible_area) per object;
        `extra` further per-image labels (every image of a shard gives the same names)."""
        values = {"images": image, "count": count, "index": index, "image_seed": image_seed,
                  "target_area": target_area, "full_area": full_area, "visible_area": visible_area,
                  "background_id": background_id}
        for name, value in values.items():
            self.rows[name].append(value)
        for record in objects:
            for name, value in zip(OBJECT_DATASETS, record):
                self.objects[name].append(value)
        self.offsets.append(self.offsets[-1] + len(objects))
        for name, value in (extra or {}).items():
            self.extra.setdefault(name, []).append(value)

    def arrays(self) -> dict[str, np.ndarray]:
        out = {name: np.array(values, dtype).reshape((len(values),) + shape(self.size))
               for (name, values), (dtype, shape) in zip(self.rows.items(), IMAGE_DATASETS.values())}
        out["object_offset"] = np.array(self.offsets, np.int64)
        for (name, values), (dtype, shape) in zip(self.objects.items(), OBJECT_DATASETS.values()):
            out[name] = np.array(values, dtype).reshape((len(values),) + shape)
        for name, values in self.extra.items():
            out[name] = np.array(values, np.float32)
        return out


def shard_path(out_dir, shard_index: int) -> Path:
    return Path(out_dir) / SHARD_NAME.format(shard_index)


@dataclass(frozen=True)
class StreamedDataset:
    """A dataset whose bytes are hashed as they are read from the file, never held whole in memory."""

    dtype: np.dtype
    shape: tuple
    blocks: Callable[[], Iterator[memoryview]]  # its C-order bytes, block after block


def content_checksum(arrays: dict[str, np.ndarray | StreamedDataset], attrs: dict) -> str:
    """sha256 over every dataset (sorted by name) and every attribute but the checksum itself."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = arrays[name]
        if isinstance(array, StreamedDataset):
            digest.update(f"{name}|{array.dtype.str}|{array.shape}\n".encode())
            for block in array.blocks():
                digest.update(block)
            continue
        array = np.ascontiguousarray(array)
        digest.update(f"{name}|{array.dtype.str}|{array.shape}\n".encode())
        if array.size:  # an empty table (no objects at all) has no bytes; its shape is already hashed
            digest.update(memoryview(array).cast("B"))
    meta = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in attrs.items() if k != "content_sha256"}
    digest.update(canonical_json(meta).encode())
    return digest.hexdigest()


def write_shard(path, arrays: dict[str, np.ndarray], attrs: dict, compression: str = "none", sync: bool = True) -> str:
    """Write a shard atomically and return its content checksum; on any failure nothing appears. With
    `sync=False` the caller flushes it to disk (common.atomic.write_atomic).

    The HDF5 file is assembled in memory and written with plain file I/O: a failed write (a full
    disk) then raises a clean OSError, where HDF5 writing to disk itself can crash on closing. It is
    assembled in a BytesIO rather than HDF5's in-memory driver, whose file image comes back as one
    more copy of the shard (about 60 ms per shard of 78 MB).
    """
    path = Path(path)
    checksum = content_checksum(arrays, attrs)
    memory = io.BytesIO()
    with h5py.File(memory, "w") as f:
        for name, array in arrays.items():
            if name == "images":  # one chunk per image: random access reads exactly one image
                f.create_dataset(name, data=array, chunks=(1,) + array.shape[1:], **COMPRESSION_OPTIONS[compression])
            else:
                f.create_dataset(name, data=array)
        for key, value in attrs.items():
            f.attrs[key] = value
        f.attrs["content_sha256"] = checksum
    with memory.getbuffer() as image:
        write_atomic(path, image, sync)
    return checksum


def read_arrays(f: h5py.File) -> dict[str, np.ndarray]:
    """Every dataset of an open shard, by path."""
    arrays = {}
    f.visititems(lambda name, obj: arrays.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return arrays


def arrays_to_hash(f: h5py.File) -> dict[str, np.ndarray | StreamedDataset]:
    """Every dataset of an open shard, for content_checksum: the images, where they lie raw in the file, as a
    StreamedDataset read straight from it; the rest as arrays.

    Streamed, a shard's 78 MB of images are read in blocks of a few MB with plain positioned reads, which,
    like hashing, run outside the GIL and outside HDF5's global lock: shards checked on several threads
    are then read and hashed at once, where h5py read them one at a time (an 80K set's check on 2 cores:
    about 6 s through h5py, about 4 s streamed)."""
    arrays = {}
    f.visititems(lambda name, obj: arrays.__setitem__(name, obj) if isinstance(obj, h5py.Dataset) else None)
    images = arrays.get("images")
    offsets = raw_image_offsets(images) if images is not None else None
    if offsets is not None:
        item_bytes = int(np.prod(images.shape[1:], dtype=np.int64)) * images.dtype.itemsize
        path = f.filename
        arrays["images"] = StreamedDataset(images.dtype, images.shape,
                                           lambda: raw_blocks(path, offsets, item_bytes))
    return {name: value if isinstance(value, StreamedDataset) else value[()] for name, value in arrays.items()}


def shard_contents(path, hashed: bool = True) -> tuple[dict, dict | None]:
    """A shard's attributes and, with `hashed`, its datasets as content_checksum takes them (the images
    streamed from the file as they are hashed, so an OSError can come from the checksum too). Raises
    OSError, KeyError or ValueError for a shard that cannot be opened."""
    with h5py.File(path, "r") as f:
        return read_attrs(f), (arrays_to_hash(f) if hashed else None)


def raw_blocks(path, offsets: np.ndarray, item_bytes: int, block_bytes: int = BLOCK_BYTES) -> Iterator[memoryview]:
    """The bytes of the items stored raw at `offsets` of a file, in item order, as blocks of one reused buffer
    (each is valid until the next is asked for). Stops where the file ends early: a checksum over the blocks
    then fails."""
    buffer = memoryview(bytearray(max(1, min(block_bytes, item_bytes * len(offsets)))))
    fd = os.open(path, os.O_RDONLY)
    try:
        for run in np.split(offsets, np.flatnonzero(np.diff(offsets) != item_bytes) + 1):  # items end to end
            position, left = int(run[0]), item_bytes * len(run)
            while left:
                got = os.preadv(fd, [buffer[:min(left, len(buffer))]], position)
                if not got:
                    return
                yield buffer[:got]
                position, left = position + got, left - got
    finally:
        os.close(fd)


def raw_image_offsets(images: h5py.Dataset) -> np.ndarray | None:
    """The file offset of every image of an images dataset stored raw (uncompressed and unfiltered, one
    image per chunk, or contiguous), or None for any other layout."""
    n = images.shape[0]
    image_bytes = int(np.prod(images.shape[1:], dtype=np.int64)) * images.dtype.itemsize
    plist = images.id.get_create_plist()
    if plist.get_nfilters() or n == 0:
        return None
    if plist.get_layout() == h5py.h5d.CONTIGUOUS:
        start = images.id.get_offset()
        return None if start is None else start + image_bytes * np.arange(n, dtype=np.int64)
    if plist.get_layout() != h5py.h5d.CHUNKED or images.chunks != (1,) + images.shape[1:]:
        return None
    offsets = np.full(n, -1, np.int64)

    def visit(chunk):
        if chunk.size == image_bytes and chunk.filter_mask == 0:
            offsets[chunk.chunk_offset[0]] = chunk.byte_offset

    images.id.chunk_iter(visit)
    return offsets if (offsets >= 0).all() else None  # an image never written has no chunk: let HDF5 fill it


def read_attrs(f: h5py.File) -> dict:
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}


def schema_problems(arrays: dict[str, np.ndarray], attrs: dict) -> list[str]:
    """What is wrong with a shard's layout (empty when it matches the schema)."""
    problems = [f"attribute {k!r} missing" for k in REQUIRED_ATTRS if k not in attrs]
    if problems:
        return problems
    if attrs["format"] != SHARD_FORMAT or attrs["schema_version"] != SCHEMA_VERSION:
        return [f"format {attrs['format']!r} v{attrs['schema_version']} is not {SHARD_FORMAT!r} v{SCHEMA_VERSION}"]
    n, size = attrs["n_images"], attrs["image_size"]
    expected = {name: (dtype, (n,) + shape(size)) for name, (dtype, shape) in IMAGE_DATASETS.items()}
    expected["object_offset"] = (np.int64, (n + 1,))
    for name, (dtype, shape) in expected.items():
        if name not in arrays:
            problems.append(f"dataset {name!r} missing")
        elif arrays[name].dtype != dtype or arrays[name].shape != shape:
            problems.append(f"dataset {name!r} is {arrays[name].dtype}{arrays[name].shape}, expected "
                            f"{np.dtype(dtype)}{shape}")
    if problems:
        return problems
    offsets = arrays["object_offset"]
    m = int(offsets[-1])
    if attrs.get("kind", "synthetic") == "natural":  # labels only: no per-object records
        if np.any(offsets != 0):
            problems.append("a natural set's object_offset must be all zero")
    elif offsets[0] != 0 or np.any(np.diff(offsets) != arrays["count"]):
        problems.append("object_offset does not match count")
    for name, (dtype, shape) in OBJECT_DATASETS.items():
        if name not in arrays:
            problems.append(f"dataset {name!r} missing")
        elif arrays[name].dtype != dtype or arrays[name].shape != (m,) + shape:
            problems.append(f"dataset {name!r} is {arrays[name].dtype}{arrays[name].shape}, expected "
                            f"{np.dtype(dtype)}{(m,) + shape}")
    return problems
