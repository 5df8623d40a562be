"""The scene store: a --backgrounds folder decoded once at a build's size, kept for later builds.

An 80K build from SUN397 makes 80K draws from its ~109K scenes, about 57K different ones, at random points of
the build, so no worker's cache helps, and every draw decodes a photo: 2-3 ms for a 150-200 KB JPEG,
most of it Huffman decoding, which no DCT scaling shortens (benchmarks/RESULTS.md). `synthgen build
--scene-store DIR` decodes every scene of the folder once, in parallel, into DIR (raw RGB with its shorter
side at --size, as `sources.load_background` gives it), and every later build with the same folder and
size reads them from there with one positioned read each. The pixels are the decoder's own, so a set built
with the store is the same, bit for bit, as one built without it; bad scenes are kept with the reason the
decoder gave, and reported when drawn, as they would be from the folder.

Layout: `scenes.json` (what the store holds: the folder, its fingerprint, the size, the bad scenes),
`index.npz` (offset and shape of every scene) and `part-NNNNN.bin` files. A store is made beside its folder
and renamed into place when complete.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np

from common.atomic import fsync_path, write_atomic
from synthgen.errors import BadInputError, OutputError, UsageError, write_failure
from synthgen.parallel import this_machine
from synthgen.prepared import PartFiles, index_rows, part_name, part_size
from synthgen.sources import CachedSource, background_size, load_background

SCENES_MANIFEST = "scenes.json"
SCENES_FORMAT = "synthgen-scene-store-v1"
INDEX = "index.npz"


def _is_own(name: str) -> bool:
    return name in (SCENES_MANIFEST, INDEX) or (name.startswith("part-") and name.endswith(".bin")) or (
        name.startswith(".") and ".tmp-" in name)


def read_store(store) -> dict | None:
    """The manifest of a complete store in `store`, or None when it holds none."""
    try:
        return json.loads((Path(store) / SCENES_MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def check_store(store, root: str, fingerprint: str, size: int) -> bool:
    """Whether `store` holds these scenes (True), or can be made there (False); raises UsageError or
    OutputError, changing nothing, for a store of other scenes or a folder holding other files."""
    store = Path(store)
    flag = f"--scene-store {store}"
    if store.exists() and not store.is_dir():
        raise UsageError(f"{flag}: is a file; give a folder (it is created if missing)")
    manifest = read_store(store)
    if manifest is not None:
        if manifest.get("format") != SCENES_FORMAT:
            raise OutputError(f"{flag}: holds a scene store of another format ({manifest.get('format')}); "
                              "choose another folder")
        if manifest["size"] != size:
            raise UsageError(f"{flag}: holds the scenes at {manifest['size']} pixels, not at --size {size}; a store "
                             "serves one size: give another folder for this size")
        missing = [name for name in [INDEX, *map(part_name, range(manifest.get("parts", 0)))]
                   if not (store / name).is_file()]
        if missing:
            raise OutputError(f"{flag}: the store's {', '.join(missing[:3])} {'is' if len(missing) == 1 else 'are'} "
                              "missing; delete the folder (or give another) to make it again")
        if manifest["fingerprint"] != fingerprint:
            raise UsageError(f"{flag}: holds the scenes of {manifest['root']} as they were when it was made; the "
                             f"--backgrounds files ({root}) are not the same now. Give another folder, or delete this "
                             "one to make it again")
        return True
    foreign = [p.name for p in store.iterdir() if not _is_own(p.name)] if store.exists() else []
    if foreign:
        raise OutputError(f"{flag}: the folder holds files synthgen did not write ({', '.join(sorted(foreign)[:5])}); "
                          "choose an empty or new folder")
    return False


SIZE_SAMPLE = 256  # scenes whose headers are read to estimate a store's size (under 0.1 s)


def stored_bytes(width: int, height: int, size: int) -> int:
    """Bytes a scene of width x height takes in a store of `size`: RGB as `sources.load_background` resizes it."""
    stored_width, stored_height = background_size(width, height, size)
    return stored_width * stored_height * 3


def estimated_store_bytes(root: str, files: list[str], size: int, sample: int = SIZE_SAMPLE) -> int:
    """About the bytes a store of `files` takes: the stored size of `sample` of them spread over the list (all of
    them, when fewer), from their headers, times their number. A file whose header cannot be read counts as a
    square scene, though the store keeps no pixels of it (the build reports it when it draws it)."""
    if not files:
        return 0
    from PIL import Image  # only the main process estimates; workers never import Pillow

    chosen = np.unique(np.linspace(0, len(files) - 1, min(len(files), sample)).round().astype(int))
    total = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow's warning of very large images: only their size is read here
        for k in chosen:
            try:
                with Image.open(Path(root) / files[k]) as image:
                    total += stored_bytes(*image.size, size)
            except (OSError, ValueError, Image.DecompressionBombError):
                total += stored_bytes(size, size, size)
    return round(total * len(files) / len(chosen))


def decode_part(root: str, files: list[str], first: int, size: int, path: str) -> dict:
    """Decode scenes first, first + 1, ... into one raw part file (runs in a worker). Returns their index
    rows (id, offset, height, width) and the bad ones (id, file name under `root`, reason)."""
    rows, bad, chunks, offset = [], [], [], 0
    for k, name in enumerate(files, first):
        try:
            image = load_background(Path(root) / name, size)
        except BadInputError as error:
            bad.append((k, name, error.reason))
            continue
        h, w = image.shape[:2]
        rows.append((k, offset, h, w))
        chunks.append(np.ascontiguousarray(image).tobytes())
        offset += len(chunks[-1])
    try:
        write_atomic(path, b"".join(chunks))
    except OSError as exc:
        raise write_failure(f"the scene store ({Path(path).name})", Path(path).parent, exc) from None
    return {"rows": rows, "bad": bad}


def make_store(store, root: str, files: list[str], fingerprint: str, size: int, run_tasks, workers: int = 1) -> int:
    """Decode every scene into `store` (checked by check_store); returns how many are usable. `run_tasks` runs a
    list of (function, args) calls in parallel and returns their results in order.

    The store is made in a folder beside it and renamed into place when complete, so it appears whole or not
    at all: two builds making the same store at once each make their own, and the second keeps the first's."""
    store = Path(store)
    making = store.with_name(f".{store.name}.making-{os.getpid()}")
    _remove_abandoned(store)
    try:
        making.mkdir(parents=True)
    except OSError as exc:
        raise write_failure("the scene store", store.parent, exc) from None
    try:
        step = part_size(len(files), max(workers, 1))
        calls = [(decode_part, (root, files[i:i + step], i, size, str(making / part_name(p))))
                 for p, i in enumerate(range(0, len(files), step))]
        results = run_tasks(calls)
        rows = np.array([(k, p, offset, h, w) for p, result in enumerate(results)
                         for k, offset, h, w in result["rows"]], dtype=np.int64).reshape(-1, 5)
        manifest = {"format": SCENES_FORMAT, "root": root, "fingerprint": fingerprint, "size": size,
                    "count": len(files), "usable": len(rows),
                    "bad": [item for result in results for item in result["bad"]], "parts": len(calls),
                    "made_with": this_machine()}  # the decoder whose pixels every later build reads
        index = io.BytesIO()
        np.savez(index, ids=rows[:, 0], part=rows[:, 1], offset=rows[:, 2], height=rows[:, 3], width=rows[:, 4])
        try:
            write_atomic(making / INDEX, index.getvalue())
            write_atomic(making / SCENES_MANIFEST, json.dumps(manifest).encode())
            fsync_path(making)
            if store.exists() and read_store(store) is None:
                _clear_unfinished(store)
            try:
                os.rename(making, store)
            except OSError:
                if read_store(store) is None:
                    raise
                # another build made the same store meanwhile: keep it
            fsync_path(store.parent)
        except OSError as exc:
            raise write_failure("the scene store", store, exc) from None
        return len(rows)
    finally:
        shutil.rmtree(making, ignore_errors=True)


def _clear_unfinished(store: Path) -> None:
    """Remove a folder that holds no store: empty, or only a store's own files without its manifest (a store
    damaged by hand). Anything else in it stays, and the store is not made there."""
    entries = list(store.iterdir())
    foreign = sorted(p.name for p in entries if not _is_own(p.name) or p.is_dir())
    if foreign:
        raise OutputError(f"--scene-store {store}: the folder holds files synthgen did not write "
                          f"({', '.join(foreign[:5])}); choose an empty or new folder")
    for entry in entries:
        entry.unlink()
    store.rmdir()


def _remove_abandoned(store: Path) -> None:
    """Folders in which a build that no longer runs was making this store."""
    for folder in store.parent.glob(f".{store.name}.making-*") if store.parent.is_dir() else ():
        pid = folder.name.rsplit("-", 1)[1]
        if pid.isdigit() and not _running(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, and another user's
        pass
    return True


class StoredBackgrounds(CachedSource):
    """Backgrounds read from a scene store, one positioned read each, cached per worker."""

    kind = "stored"

    def __init__(self, store, root, cache_bytes: int = 256 << 20):
        """`root`: where the --backgrounds folder is now (it may have moved since): bad scenes are named there."""
        super().__init__(cache_bytes)
        self.store, self.root = Path(store), Path(root)
        manifest = read_store(self.store)
        if manifest is None:
            raise OutputError(f"--scene-store {self.store}: the scene store is gone or incomplete; run the build "
                              "again to make it")
        self.size, self.count = manifest["size"], manifest["count"]
        self.bad = {int(k): (name, reason) for k, name, reason in manifest["bad"]}
        with np.load(self.store / INDEX, allow_pickle=False) as index:
            self.rows = index_rows(index)
        self.parts = PartFiles(self.store)

    def __len__(self):
        return self.count

    def decode(self, k: int, size: int) -> np.ndarray:
        if k in self.bad:
            name, reason = self.bad[k]
            raise BadInputError(self.root / name, reason)
        if size != self.size:  # the build checked the size: only a caller's mistake gets here
            raise ValueError(f"the scene store holds scenes at {self.size} pixels, not {size}")
        part, offset, h, w = self.rows[k]
        return np.frombuffer(self.parts.read(part, offset, h * w * 3), np.uint8).reshape(h, w, 3)
