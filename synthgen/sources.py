"""Source objects (image + mask cut-outs) and scene backgrounds: discovery, decoding, validation.

Two checks happen at two times. Scanning (start of a build) is structural and cheap: pairing of
`NAME.jpg` with `NAME.png`, file extensions, empty files. Loading (on first use, in a worker) decodes
and checks content: corrupt or truncated data, mask/image size mismatch, empty or full masks. Every
problem becomes a `BadInputError` that names the file and the reason.
"""
from __future__ import annotations

import hashlib
import os
import re
import sys
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from synthgen.errors import BadInputError, UsageError
from synthgen.jpeg import jpeg_size
from synthgen.masks import MaskInfo, MaskRule, read_mask

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
OBJECT_IMAGE_EXTENSIONS = IMAGE_EXTENSIONS - {".png"}  # NAME.png is the mask in the THUS10000 layout
UNREAD_IMAGE_EXTENSIONS = {".gif", ".heic", ".heif", ".avif", ".jp2", ".jxl", ".svg", ".ppm", ".pgm", ".exr"}
MAX_MASK_COVERAGE = 0.98  # a mask covering more of its image has no object to cut out
MIN_IMAGE_SIDE = 16


def not_read_reason(rel: str) -> str:
    """Why a file that is not one of IMAGE_EXTENSIONS is skipped: an image format OpenCV does not read here
    (a GIF, say), which a user can convert, or not an image at all."""
    ext = os.path.splitext(rel)[1].lower()
    if ext in UNREAD_IMAGE_EXTENSIONS:
        return (f"a {ext[1:].upper()} image, a format not read (convert it to PNG or JPEG; read are "
                f"{', '.join(sorted(e[1:] for e in IMAGE_EXTENSIONS))})")
    return "not an image file"


@dataclass(frozen=True)
class Skipped:
    """A source file left out of the build, and why."""

    path: str
    reason: str

    def line(self) -> str:
        return f"skipped {self.path}: {self.reason}"


MIN_LEVEL_SIDE = 4


@dataclass
class Cutout:
    """One source object cropped to its mask, as premultiplied RGBA uint8 mip-map levels.

    Premultiplied, so that resampling never blends in the colour of pixels outside the object (no
    fringes at soft edges). Level k is level 0 shrunk 2^k times with area averaging, so any later
    resize is a cheap bilinear step of less than 2x.
    """

    levels: list
    mask: MaskInfo | None = None  # what the source mask was (binary, soft, graded; parts)

    def __post_init__(self):
        # alpha-weighted pixels; an exact sum of integers, 10x faster in OpenCV than numpy's strided sum
        self.area = cv2.sumElems(self.levels[0])[3] / 255.0

    @classmethod
    def from_rgba(cls, rgba: np.ndarray, mask: MaskInfo | None = None) -> "Cutout":
        levels = [np.ascontiguousarray(rgba)]
        for h, w in cls.level_shapes(*rgba.shape[:2])[1:]:
            levels.append(resize_rgba(levels[-1], w, h))
        return cls(levels, mask)

    @classmethod
    def from_bytes(cls, data: bytes, height: int, width: int) -> "Cutout":
        """The levels laid end to end in `data` (as `tobytes` writes them), as views without copies."""
        levels, offset = [], 0
        for h, w in cls.level_shapes(height, width):
            levels.append(np.frombuffer(data, np.uint8, h * w * 4, offset).reshape(h, w, 4))
            offset += h * w * 4
        return cls(levels)

    @staticmethod
    def level_shapes(height: int, width: int) -> list[tuple[int, int]]:
        """(height, width) of every level of a cut-out whose level 0 is height x width."""
        shapes = [(height, width)]
        while min(shapes[-1]) >= 2 * MIN_LEVEL_SIDE:
            h, w = shapes[-1]
            shapes.append((round(h / 2), round(w / 2)))
        return shapes

    @classmethod
    def stored_bytes(cls, height: int, width: int) -> int:
        """Bytes `tobytes` writes for a cut-out whose level 0 is height x width."""
        return sum(h * w * 4 for h, w in cls.level_shapes(height, width))

    def tobytes(self) -> bytes:
        return b"".join(level.tobytes() for level in self.levels)

    @property
    def shape(self) -> tuple[int, int]:
        return self.levels[0].shape[:2]

    @property
    def nbytes(self) -> int:
        return sum(level.nbytes for level in self.levels)

    def resized(self, width: int, height: int) -> np.ndarray:
        """Premultiplied RGBA at the given size, from the nearest level at least that large."""
        level = self._level_for(width, height)
        if level.shape[:2] == (height, width):
            return level
        return resize_rgba(level, width, height)

    def resized_alpha(self, width: int, height: int) -> np.ndarray:
        """The alpha channel of `resized(width, height)`, resampled alone: OpenCV resamples each channel
        of uint8 images by itself, so these are the same bytes (tests/test_transforms.py)."""
        alpha = cv2.extractChannel(self._level_for(width, height), 3)
        if alpha.shape == (height, width):
            return alpha
        return resize_rgba(alpha, width, height)

    def _level_for(self, width: int, height: int) -> np.ndarray:
        level = self.levels[0]
        for candidate in self.levels[1:]:
            if candidate.shape[1] < width or candidate.shape[0] < height:
                break
            level = candidate
        return level


class ByteLRU:
    """A least-recently-used cache bounded by the total bytes of its values."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: OrderedDict = OrderedDict()

    def get(self, key):
        item = self._items.get(key)
        if item is None:
            return None
        self._items.move_to_end(key)
        return item[0]

    def put(self, key, value, nbytes: int):
        if key in self._items:
            self.bytes -= self._items.pop(key)[1]
        if nbytes > self.max_bytes:
            return
        self._items[key] = (value, nbytes)
        self.bytes += nbytes
        while self.bytes > self.max_bytes:
            _, (_, old) = self._items.popitem(last=False)
            self.bytes -= old


# --------------------------------------------------------------------------- scanning


def walk_files(root: Path):
    """The files under `root` as (path relative to it, POSIX style; size in bytes, or None when it cannot be
    read), in a fixed order: a folder's files by name, then its subfolders by name, as os.walk goes.
    Hidden names (.DS_Store, editor files: not data, not worth a line) and linked folders are left out.
    One stat per file, and no Path objects: a SUN397 tree of 100K files takes under a second."""

    def walk(folder: str, prefix: str):
        try:
            with os.scandir(folder) as listing:
                entries = sorted((e for e in listing if not e.name.startswith(".")), key=lambda e: e.name)
        except OSError:
            return  # an unreadable folder is passed over, as os.walk does
        folders = []
        for entry in entries:
            if entry.is_dir():
                folders.append(entry)
                continue
            try:
                size = entry.stat().st_size
            except OSError:
                size = None  # a broken link
            yield prefix + entry.name, size
        for entry in folders:
            if not entry.is_symlink():
                yield from walk(entry.path, prefix + entry.name + "/")

    return walk(str(root), "")


def inside_sources_problem(folder, option: str, sources: list[tuple[str, str | None]]) -> str | None:
    """Why `folder` cannot take a command's files: it is, or lies in, a source folder (`sources`: (option, path)
    pairs; None for one not given) that builds read whole, where its files would come back as sources: a set's
    inspect figures are PNG images, scenes to the next build from that folder."""
    given, folder = folder, Path(folder).resolve()
    for source_option, root in sources:
        if root is None:
            continue
        root = Path(root).resolve()
        if folder == root or root in folder.parents:
            where = "is" if folder == root else "lies inside"
            return (f"{option} {given}: {where} {source_option} {root}, which is read whole: the files written "
                    f"there (and the PNG figures of `synthgen inspect`) would be read as sources by the next command "
                    f"reading {source_option}; choose a folder outside it")
    return None


def _check_folder(root: Path, option: str) -> Path:
    """The folder, resolved: every path in skip lines and manifests is absolute, whatever the spelling."""
    given = Path(root)
    if not given.exists():
        raise UsageError(f"{option} {given}: folder does not exist")
    if not given.is_dir():
        raise UsageError(f"{option} {given}: not a folder")
    return given.resolve()


def _unusable(size: int | None) -> str | None:
    """Why a file of this size cannot be a source (None if it can be)."""
    return "cannot read file" if size is None else "empty file" if size == 0 else None


def scan_objects(root) -> tuple[list[tuple[str, str]], list[Skipped], str]:
    """Find `NAME.<image>` + `NAME.png` pairs under root (recursively), as relative paths; the skipped
    files, and the fingerprint of the pairs (`fingerprint`)."""
    root = _check_folder(root, "--objects")
    images: dict[str, str] = {}
    masks: dict[str, str] = {}
    sizes: dict[str, int | None] = {}
    skipped: list[Skipped] = []
    for rel, size in walk_files(root):
        stem, ext = os.path.splitext(rel)
        ext = ext.lower()
        sizes[rel] = size
        if ext == ".png":
            masks[stem] = rel
        elif ext in OBJECT_IMAGE_EXTENSIONS:
            if stem in images:
                skipped.append(Skipped(f"{root}/{rel}", f"a second image for {stem} (already have "
                                                        f"{os.path.basename(images[stem])})"))
            else:
                images[stem] = rel
        else:
            skipped.append(Skipped(f"{root}/{rel}",
                                   f"{not_read_reason(rel)} (expected NAME.jpg + NAME.png mask pairs)"))
    pairs = []
    for stem in sorted(set(images) | set(masks)):
        if stem not in masks:
            skipped.append(Skipped(f"{root}/{images[stem]}",
                                   f"image without a mask (expected {os.path.basename(stem)}.png beside it)"))
        elif stem not in images:
            skipped.append(Skipped(f"{root}/{masks[stem]}",
                                   f"mask without an image (expected {os.path.basename(stem)}.jpg beside it)"))
        else:
            pair = (images[stem], masks[stem])
            problems = [(rel, why) for rel in pair if (why := _unusable(sizes[rel]))]
            if problems:
                skipped.append(Skipped(f"{root}/{problems[0][0]}", problems[0][1]))
            else:
                pairs.append(pair)
    if not pairs:
        raise UsageError(f"--objects {root}: no usable NAME.jpg + NAME.png (mask) pairs found"
                         + (f" ({len(skipped)} files skipped, e.g. {skipped[0].line()})" if skipped else ""))
    return pairs, skipped, fingerprint((rel, sizes[rel]) for pair in pairs for rel in pair)


def scan_backgrounds(root) -> tuple[list[str], list[Skipped], str]:
    """Find scene images under root (a SUN397-style tree of category folders), as relative paths; the
    skipped files, and the fingerprint of the list (`fingerprint`)."""
    root = _check_folder(root, "--backgrounds")
    found, sizes, skipped = [], [], []
    for rel, size in walk_files(root):
        if os.path.splitext(rel)[1].lower() not in IMAGE_EXTENSIONS:
            skipped.append(Skipped(f"{root}/{rel}", not_read_reason(rel)))
        elif _unusable(size):
            skipped.append(Skipped(f"{root}/{rel}", _unusable(size)))
        else:
            found.append(rel)
            sizes.append(size)
    if not found:
        raise UsageError(f"--backgrounds {root}: no image files found"
                         + (f" ({len(skipped)} files skipped, e.g. {skipped[0].line()})" if skipped else ""))
    return found, skipped, fingerprint(zip(found, sizes))


def fingerprint(files) -> str:
    """Fingerprint of a source list from its (relative path, size) pairs, in order: stable under copying,
    cheap for 100K files."""
    digest = hashlib.sha256()
    for rel, size in files:
        digest.update(f"{rel}\t{size}\n".encode())
    return digest.hexdigest()


def list_fingerprint(root, relpaths) -> str:
    """`fingerprint` of files listed by relative path (a path, or a tuple of paths per item) under root."""
    root = str(root)
    return fingerprint((r, os.stat(os.path.join(root, r)).st_size)
                       for rel in relpaths for r in (rel if isinstance(rel, (list, tuple)) else (rel,)))


# --------------------------------------------------------------------------- decoding


def _read_bytes(path: Path) -> np.ndarray:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BadInputError(path, f"cannot read file ({exc.strerror or exc})") from None
    if not data:
        raise BadInputError(path, "empty file")
    return np.frombuffer(data, np.uint8)


# What the image libraries under OpenCV (libjpeg, libpng...) print about damaged data. They print to
# the process's stderr themselves, past Python; decoding captures that text instead, and these
# messages make the file a bad input (a JPEG with corrupt data still decodes, with grey or garbled
# parts). Anything else they print (a PNG's colour profile warning...) is dropped.
DAMAGE_RE = re.compile(r"corrupt|premature end|truncat|incomplete|crc error|read error|bad huffman|invalid",
                       re.IGNORECASE)


class _NativeStderr:
    """Captures what native code writes to file descriptor 2 during a call (one capture at a time, in any
    number of threads: the lock exists before the first capture, where two threads that made their own each
    went in at once, swapped each other's descriptors and left fd 2 pointing at a capture file)."""

    def __init__(self):
        self._reset()
        if hasattr(os, "register_at_fork"):  # everywhere a process can fork
            os.register_at_fork(after_in_child=self._reset)  # a forked child gets its own lock and file

    def _reset(self):
        self.lock, self.file = threading.Lock(), None

    def __enter__(self):
        self.lock.acquire()
        if self.file is None:
            self.file = tempfile.TemporaryFile()
        sys.stderr.flush()
        self.saved = os.dup(2)
        os.dup2(self.file.fileno(), 2)
        return self

    def __exit__(self, *exc):
        try:
            os.dup2(self.saved, 2)
            os.close(self.saved)
            size = self.file.tell()
            self.text = ""
            if size:
                self.file.seek(0)
                self.text = self.file.read(size).decode(errors="replace").strip()
                self.file.seek(0)
                self.file.truncate()
        finally:
            self.lock.release()


_NATIVE_STDERR = _NativeStderr()


OPENCV_LOG_PREFIX = re.compile(r"\[\s*\w+:\d+@[\d.]+\]\s*global\s+\S+\s+\S+\s+")  # "[ WARN:0@0.3] global x.cpp:9 fn "


def _decode(path: Path, data: np.ndarray, flags: int) -> np.ndarray:
    with _NATIVE_STDERR as captured:
        image = cv2.imdecode(data, flags)
    said = " ".join(OPENCV_LOG_PREFIX.sub("", captured.text).split())
    if image is None:
        raise BadInputError(path, "cannot be decoded (corrupt, truncated, or not an image"
                            + (f": {said}" if said else "") + ")")
    if DAMAGE_RE.search(said):
        raise BadInputError(path, f"damaged image data ({said})")
    return image


def _mask_to_grey(mask: np.ndarray) -> np.ndarray:
    """Any mask encoding (8/16-bit, 1-bit, 0/1, gray+alpha, RGB) as one 8-bit channel, scaled so that
    its maximum is 255 (masks.read_mask then tells what kind of mask it is)."""
    if mask.ndim == 3:
        colour = mask[..., :3]
        if mask.shape[2] == 4 and colour.max() == colour.min():
            mask = mask[..., 3]  # an RGBA mask whose colour is flat carries the mask in alpha
        else:
            mask = colour.max(axis=2) if colour.dtype != np.uint8 else cv2.cvtColor(colour, cv2.COLOR_BGR2GRAY)
    peak = float(mask.max())
    if mask.dtype != np.uint8 or 0 < peak < 255:
        mask = (mask.astype(np.float32) * (255.0 / max(peak, 1.0)) + 0.5).astype(np.uint8)
    return mask


def premultiply(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Straight RGB + alpha (uint8) as premultiplied RGBA uint8."""
    # A crop of a larger image is a view whose rows are apart in memory; OpenCV's split and merge then
    # work row by row, at about 1 us a row (0.55 against 0.25 ms in all for a 266x284 object): copy first.
    rgb, alpha = np.ascontiguousarray(rgb), np.ascontiguousarray(alpha)
    a = alpha.astype(np.float32) * (1.0 / 255.0)
    # Plane by plane: the same float32 products as rgb * a[..., None], 10x faster than broadcasting over
    # (h, w, 3) (6.6 against 0.5 ms for a 400x300 object).
    planes = []
    for plane in cv2.split(rgb):
        product = plane.astype(np.float32)
        product *= a
        product += 0.5
        planes.append(product.astype(np.uint8))
    return cv2.merge([*planes, alpha])


def resize_rgba(rgba: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize premultiplied RGBA (or its alpha alone): area averaging when shrinking 2x or more, else
    bilinear."""
    shrinking_much = width * 2 <= rgba.shape[1] or height * 2 <= rgba.shape[0]
    out = cv2.resize(rgba, (width, height), interpolation=cv2.INTER_AREA if shrinking_much else cv2.INTER_LINEAR)
    return out.reshape(height, width, *rgba.shape[2:])  # cv2 drops singleton axes for 1-pixel outputs


def load_cutout(image_path, mask_path, max_side: int, rule: MaskRule = MaskRule()) -> Cutout:
    """Decode an image + mask pair, check it, crop to the mask, shrink to at most max_side."""
    rgb, mask = read_object(image_path, mask_path)
    return cutout_from_arrays(rgb, mask, max_side, Path(mask_path), rule)


def read_object(image_path, mask_path) -> tuple[np.ndarray, np.ndarray]:
    """An object's image as RGB and its mask as one 8-bit channel, decoded and checked to match in size."""
    image_path, mask_path = Path(image_path), Path(mask_path)
    image_data = _read_bytes(image_path)
    mask = _mask_to_grey(_decode(mask_path, _read_bytes(mask_path), cv2.IMREAD_UNCHANGED))
    image = _decode(image_path, image_data, cv2.IMREAD_COLOR)
    if image.shape[:2] != mask.shape:
        # Masks are usually drawn on the stored pixels; retry without the EXIF rotation.
        raw = _decode(image_path, image_data, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        if raw.shape[:2] == mask.shape:
            image = raw
        else:
            ih, iw = image.shape[:2]
            mh, mw = mask.shape
            rotated = (ih, iw) == (mw, mh)
            hint = " (rotated: width and height swapped, and no EXIF orientation resolves it)" if rotated else ""
            raise BadInputError(image_path, f"image is {iw}x{ih} but its mask {mask_path.name} is {mw}x{mh}{hint}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB), mask


def cutout_from_arrays(rgb: np.ndarray, mask: np.ndarray, max_side: int, origin="object",
                       rule: MaskRule = MaskRule()) -> Cutout:
    """Read a mask (synthgen.masks), crop RGB + alpha to its object, and shrink so the longer side is at
    most max_side."""
    alpha, info = read_mask(mask, rule, origin)
    n_fg = int(np.count_nonzero(alpha >= rule.threshold * 255))
    if n_fg >= MAX_MASK_COVERAGE * alpha.size:
        raise BadInputError(origin, f"mask covers {n_fg / alpha.size:.0%} of the image (no object to cut out)")
    ys = np.flatnonzero(alpha.any(axis=1))
    xs = np.flatnonzero(alpha.any(axis=0))
    y0, y1, x0, x1 = ys[0], ys[-1] + 1, xs[0], xs[-1] + 1
    rgba = premultiply(rgb[y0:y1, x0:x1], alpha[y0:y1, x0:x1])
    h, w = rgba.shape[:2]
    scale = max_side / max(h, w)
    if scale < 1:
        rgba = resize_rgba(rgba, max(1, round(w * scale)), max(1, round(h * scale)))
    return Cutout.from_rgba(rgba, info)


def decode_resized(path, target) -> np.ndarray:
    """Decode an image as RGB resized to `target(width, height)` -> (new width, new height).

    JPEGs are decoded at 1/2, 1/4 or 1/8 scale in the DCT domain when the target allows it (much
    faster than decoding in full and shrinking); what shrink remains is then under 2x.
    """
    path = Path(path)
    data = _read_bytes(path)
    flag = cv2.IMREAD_COLOR
    stored = jpeg_size(data)
    if stored is not None:
        small, large = sorted(stored)
        t_small, t_large = sorted(target(*stored))  # sorted: EXIF may rotate the image
        for factor, reduced in ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4),
                                (2, cv2.IMREAD_REDUCED_COLOR_2)):
            if -(-small // factor) >= t_small and -(-large // factor) >= t_large:  # libjpeg rounds up
                flag = reduced
                break
    image = _decode(path, data, flag)
    h, w = image.shape[:2]
    if min(h, w) < MIN_IMAGE_SIDE:
        raise BadInputError(path, f"image is only {w}x{h} pixels (at least {MIN_IMAGE_SIDE} are needed)")
    new_w, new_h = target(w, h)
    if (new_w, new_h) != (w, h):
        shrinking_much = new_w * 2 <= w or new_h * 2 <= h
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA if shrinking_much else cv2.INTER_LINEAR)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def background_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) of a scene of width x height with its shorter side resized to `size`, aspect kept."""
    scale = size / min(width, height)
    return max(size, round(width * scale)), max(size, round(height * scale))


def load_background(path, size: int) -> np.ndarray:
    """A scene image as RGB with its shorter side resized to `size` (aspect kept: background_size)."""
    return decode_resized(path, lambda w, h: background_size(w, h, size))


FITS = ("squash", "crop", "pad")


def load_photo(path, size: int, fit: str) -> np.ndarray:
    """A photo as a size x size RGB image: squashed to the square (every object stays in view, the
    aspect changes), centre-cropped (aspect kept, edges lost), or padded with its mean colour."""
    if fit == "squash":
        return decode_resized(path, lambda w, h: (size, size))
    if fit == "crop":
        image = load_background(path, size)
        h, w = image.shape[:2]
        y, x = (h - size) // 2, (w - size) // 2
        return np.ascontiguousarray(image[y:y + size, x:x + size])
    image = decode_resized(path, lambda w, h: (max(1, round(w * size / max(w, h))),
                                               max(1, round(h * size / max(w, h)))))
    h, w = image.shape[:2]
    out = np.empty((size, size, 3), np.uint8)
    out[:] = image.reshape(-1, 3).mean(axis=0).round().astype(np.uint8)
    y, x = (size - h) // 2, (size - w) // 2
    out[y:y + h, x:x + w] = image
    return out


# --------------------------------------------------------------------------- source collections


class CachedSource:
    """A numbered collection of sources whose decoded items are kept in a byte-bounded cache."""

    def __init__(self, cache_bytes: int):
        self.cache = ByteLRU(cache_bytes)

    def load(self, k: int, size: int):
        """Item k decoded for images of `size` pixels (raises BadInputError for a bad file)."""
        value = self.cache.get((k, size))
        if value is None:
            value = self.decode(k, size)
            self.cache.put((k, size), value, value.nbytes)
        return value

    def decode(self, k: int, size: int):
        raise NotImplementedError


class FolderObjects(CachedSource):
    """Objects from a THUS10000/MSRA10K-layout folder, as Cutouts at most `size` on a side."""

    kind = "folder"

    def __init__(self, root, pairs, cache_bytes: int = 256 << 20, rule: MaskRule = MaskRule()):
        super().__init__(cache_bytes)
        self.root = Path(root)
        self.pairs = [tuple(p) for p in pairs]
        self.rule = rule

    def __len__(self):
        return len(self.pairs)

    def decode(self, k: int, size: int) -> Cutout:
        image, mask = self.pairs[k]
        return load_cutout(self.root / image, self.root / mask, size, self.rule)

    def mask_path(self, k: int) -> str:
        return str(self.root / self.pairs[k][1])


class FolderBackgrounds(CachedSource):
    """Backgrounds from a folder tree of scene images (SUN397 layout), shorter side `size`."""

    kind = "folder"

    def __init__(self, root, files, cache_bytes: int = 256 << 20):
        super().__init__(cache_bytes)
        self.root = Path(root)
        self.files = list(files)

    def __len__(self):
        return len(self.files)

    def decode(self, k: int, size: int) -> np.ndarray:
        return load_background(self.root / self.files[k], size)
