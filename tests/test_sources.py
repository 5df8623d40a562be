"""Source discovery and decoding on real files, including every kind of bad input."""
import hashlib
import io
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from conftest import make_objects, make_scenes, write_object_pair
from synthgen.errors import BadInputError, UsageError
from synthgen.jpeg import jpeg_size
from synthgen.sources import load_background, load_cutout, list_fingerprint, scan_backgrounds, scan_objects


def _mask(h=60, w=80):
    mask = np.zeros((h, w), np.uint8)
    mask[10:50, 20:60] = 255
    return mask


def _rgb(h=60, w=80, value=(200, 40, 90)):
    return np.tile(np.uint8(value), (h, w, 1))


def test_scan_pairs_and_reports_unpaired_and_stray_files(tmp_path):
    make_objects(tmp_path, n=3)
    cv2.imwrite(str(tmp_path / "lonely.jpg"), _rgb())
    cv2.imwrite(str(tmp_path / "orphan.png"), _mask())
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / ".DS_Store").write_bytes(b"\0")
    pairs, skipped, _ = scan_objects(tmp_path)
    assert pairs == [("obj000.jpg", "obj000.png"), ("obj001.jpg", "obj001.png"), ("obj002.jpg", "obj002.png")]
    reasons = {p.split("/")[-1]: r for p, r in ((s.path, s.reason) for s in skipped)}
    assert reasons["lonely.jpg"].startswith("image without a mask")
    assert reasons["orphan.png"].startswith("mask without an image")
    assert reasons["notes.txt"].startswith("not an image file")
    assert reasons["empty.jpg"] == "empty file"
    assert ".DS_Store" not in reasons


def test_empty_or_missing_folders_are_refused_with_the_option_name(tmp_path):
    with pytest.raises(UsageError, match="--objects .*no usable"):
        scan_objects(tmp_path)
    with pytest.raises(UsageError, match="--backgrounds .*no image files"):
        scan_backgrounds(tmp_path)
    with pytest.raises(UsageError, match="--objects .*does not exist"):
        scan_objects(tmp_path / "nope")


def test_backgrounds_are_found_in_nested_category_folders(tmp_path):
    make_scenes(tmp_path, n=6)
    (tmp_path / "a" / "readme.txt").write_text("x")
    Image.new("RGB", (40, 30), (200, 40, 40)).save(tmp_path / "a" / "scene.gif")  # a format OpenCV does not read
    files, skipped, _ = scan_backgrounds(tmp_path)
    assert len(files) == 6 and all(f.count("/") == 2 for f in files)
    # a GIF was called "not an image file", which hid what to do about it
    assert sorted(s.reason for s in skipped) == [
        "a GIF image, a format not read (convert it to PNG or JPEG; read are bmp, jpeg, jpg, png, tif, tiff, webp)",
        "not an image file"]


def _walk_reference(root):
    """The walk and fingerprint that sets were built with before the scan went through os.scandir: their
    build identities (and so whether they resume) depend on both staying the same."""
    files = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        files += [(Path(folder) / n).relative_to(root).as_posix() for n in sorted(names) if not n.startswith(".")]
    digest = hashlib.sha256()
    for rel in files:
        digest.update(f"{rel}\t{(root / rel).stat().st_size}\n".encode())
    return files, digest.hexdigest()


def test_the_scan_keeps_the_order_and_fingerprint_sets_were_built_with(tmp_path):
    scenes = tmp_path / "scenes"
    for rel in ("b/beach/2.jpg", "b/beach/10.jpg", "a/abbey/x.JPG", "a/abbey/sub/y.png", "a/z.jpg", "top.jpg",
                "B/upper.jpg", "a/abbey/.hidden.jpg", ".git/c.jpg", "a b/space d.jpg"):
        (scenes / rel).parent.mkdir(parents=True, exist_ok=True)
        (scenes / rel).write_bytes(b"\xff\xd8" + bytes(len(rel)))
    (scenes / "linked").symlink_to(scenes / "b")  # a linked folder is not walked into, as os.walk does not
    files, skipped, print_ = scan_backgrounds(scenes)
    assert (files, print_) == _walk_reference(scenes) and not skipped
    assert files[:2] == ["top.jpg", "B/upper.jpg"] and "b/beach/10.jpg" in files
    assert print_ == list_fingerprint(scenes, files)
    (scenes / "a" / "gone.jpg").symlink_to(scenes / "missing.jpg")
    (scenes / "a" / "empty.jpg").write_bytes(b"")
    files_now, skipped, _ = scan_backgrounds(scenes)
    assert files_now == files
    assert {Path(s.path).name: s.reason for s in skipped} == {"gone.jpg": "cannot read file",
                                                              "empty.jpg": "empty file"}
    lonely = tmp_path / "only-a-broken-link"
    lonely.mkdir()
    (lonely / "a.jpg").symlink_to(tmp_path / "missing.jpg")
    with pytest.raises(UsageError, match=r"no image files found \(1 files skipped, e\.g\. .*a\.jpg: cannot read file"):
        scan_backgrounds(lonely)
    objects = tmp_path / "objects"
    make_objects(objects / "set1", n=2)
    make_objects(objects / "set0", n=2)
    pairs, skipped, print_ = scan_objects(objects)
    assert [p[0] for p in pairs] == [f for f in _walk_reference(objects)[0] if f.endswith(".jpg")]
    assert print_ == list_fingerprint(objects, pairs) and not skipped


def _pair(tmp_path, image_bytes, mask_array=None, name="x", ext=".jpg"):
    (tmp_path / f"{name}{ext}").write_bytes(image_bytes)
    cv2.imwrite(str(tmp_path / f"{name}.png"), _mask() if mask_array is None else mask_array)
    return tmp_path / f"{name}{ext}", tmp_path / f"{name}.png"


def _encode(array, fmt="JPEG", mode=None, **kwargs):
    image = Image.fromarray(array)
    if mode:
        image = image.convert(mode)
    out = io.BytesIO()
    image.save(out, fmt, **kwargs)
    return out.getvalue()


@pytest.mark.parametrize("data, reason", [
    (b"\xff\xd8\xff\xe0 definitely not a jpeg", "cannot be decoded"),
    (_encode(_rgb())[:200], "cannot be decoded"),  # truncated
    (b"", "empty file"),
])
def test_corrupt_truncated_and_empty_images_are_bad_inputs(tmp_path, data, reason):
    image, mask = _pair(tmp_path, data)
    with pytest.raises(BadInputError, match=reason) as error:
        load_cutout(image, mask, 64)
    assert error.value.path == str(image)


def test_truncated_mask_is_a_bad_input(tmp_path):
    image, mask = _pair(tmp_path, _encode(_rgb()))
    mask.write_bytes(mask.read_bytes()[:60])
    with pytest.raises(BadInputError, match="cannot be decoded") as error:
        load_cutout(image, mask, 64)
    assert error.value.path == str(mask)


def test_damaged_images_are_bad_inputs_and_the_image_libraries_print_nothing(tmp_path, capfd):
    # libpng and libjpeg write to the process's stderr themselves; their words belong in the skip reason
    image, mask = _pair(tmp_path, _encode(_rgb()))
    mask.write_bytes(mask.read_bytes()[:60])
    with pytest.raises(BadInputError, match=r"cannot be decoded \(.*: .*PNG") as error:
        load_cutout(image, mask, 64)
    assert error.value.path == str(mask)
    noise = (np.random.default_rng(0).random((120, 160, 3)) * 255).astype(np.uint8)
    data = bytearray(_encode(noise))
    data[len(data) // 2:len(data) // 2 + 50] = b"\x07" * 50  # garbled data: it still decodes, partly garbage
    damaged, mask = _pair(tmp_path, bytes(data), _mask(120, 160), name="damaged")
    with pytest.raises(BadInputError, match=r"damaged image data \(Corrupt JPEG data") as error:
        load_cutout(damaged, mask, 64)
    assert error.value.path == str(damaged)
    assert capfd.readouterr().err == ""
    assert load_cutout(*_pair(tmp_path, _encode(noise), _mask(120, 160), name="intact"), 64).area > 0


def test_skip_lines_name_absolute_paths_however_the_folder_was_given(tmp_path, monkeypatch):
    make_objects(tmp_path / "objects", n=2)
    (tmp_path / "objects" / "lonely.jpg").write_bytes(_encode(_rgb()))
    monkeypatch.chdir(tmp_path)
    for spelling in ("objects", "objects/", "./objects"):
        _, skipped, _ = scan_objects(spelling)
        assert [s.path for s in skipped] == [str(tmp_path / "objects" / "lonely.jpg")]


def test_size_mismatch_names_both_sizes_and_spots_rotation(tmp_path):
    image, mask = _pair(tmp_path, _encode(_rgb(60, 80)), _mask(40, 50))
    with pytest.raises(BadInputError, match="image is 80x60 but its mask x.png is 50x40"):
        load_cutout(image, mask, 64)
    image, mask = _pair(tmp_path, _encode(_rgb(60, 80)), _mask(80, 60), name="y")
    with pytest.raises(BadInputError, match="rotated"):
        load_cutout(image, mask, 64)


def test_exif_rotated_photo_matches_its_mask_either_way(tmp_path):
    # Stored 80x60 with an EXIF tag that displays it as 60x80 (orientation 6).
    exif = Image.new("RGB", (1, 1)).getexif()
    exif[0x0112] = 6
    stored = _encode(_rgb(60, 80), exif=exif.tobytes())
    for name, mask in (("raw", _mask(60, 80)), ("shown", np.ascontiguousarray(np.rot90(_mask(60, 80), -1)))):
        image, mask_path = _pair(tmp_path, stored, mask, name=name)
        cutout = load_cutout(image, mask_path, 64)
        assert cutout.area > 100


@pytest.mark.parametrize("mask, reason", [
    (np.zeros((60, 80), np.uint8), "mask is empty"),
    (np.full((60, 80), 255, np.uint8), "covers 100%"),
])
def test_empty_and_full_masks_are_bad_inputs(tmp_path, mask, reason):
    image, mask_path = _pair(tmp_path, _encode(_rgb()), mask)
    with pytest.raises(BadInputError, match=reason):
        load_cutout(image, mask_path, 64)


@pytest.mark.parametrize("ext, data", [
    (".jpg", _encode(_rgb(), "JPEG", mode="L")),  # grayscale
    (".jpg", _encode(_rgb(), "JPEG", mode="CMYK")),
    (".tif", _encode(np.dstack([_rgb(), np.full((60, 80), 255, np.uint8)]), "TIFF")),  # RGBA
    (".tif", _encode((np.full((60, 80), 40000, np.uint16)), "TIFF")),  # 16-bit grayscale
    (".webp", _encode(_rgb(), "WEBP", lossless=True)),
])
def test_image_modes_all_load_as_rgb(tmp_path, ext, data):
    image, mask = _pair(tmp_path, data, ext=ext)
    cutout = load_cutout(image, mask, 64)
    rgba = cutout.levels[0]
    assert rgba.dtype == np.uint8 and rgba.shape[2] == 4
    inner = rgba[5:-5, 5:-5]
    assert inner[..., 3].min() == 255 and inner[..., :3].max() > 30  # opaque, not black


def test_mask_encodings_give_the_same_alpha(tmp_path):
    binary = _mask()
    encodings = {
        "eight_bit": _encode(binary, "PNG"),
        "one_bit": _encode(binary, "PNG", mode="1"),
        "zero_one": _encode((binary > 0).astype(np.uint8), "PNG"),
        "sixteen_bit": _encode(binary.astype(np.uint16) * 257, "PNG"),
        "palette": _encode(binary, "PNG", mode="P"),
        "rgba_flat_colour": _encode(np.dstack([np.zeros((60, 80, 3), np.uint8), binary]), "PNG"),
    }
    areas = {}
    for name, data in encodings.items():
        image, mask = _pair(tmp_path, _encode(_rgb()), name=name)
        mask.write_bytes(data)
        areas[name] = load_cutout(image, mask, 200).area
    assert set(areas.values()) == {40.0 * 40.0}, areas


def test_soft_edged_mask_keeps_its_edges_as_alpha(tmp_path):
    soft = cv2.GaussianBlur(_mask(), (0, 0), 3)
    image, mask = _pair(tmp_path, _encode(_rgb()), soft)
    alpha = load_cutout(image, mask, 200).levels[0][..., 3]
    partial = np.count_nonzero((alpha > 10) & (alpha < 245))
    assert partial > 100
    assert load_cutout(image, mask, 200).area == pytest.approx(soft.sum() / 255, rel=1e-6)


def test_cutout_is_cropped_and_shrunk_to_max_side(tmp_path):
    rng = np.random.default_rng(0)
    write_object_pair(tmp_path, "big", rng, size=(400, 300))
    cutout = load_cutout(tmp_path / "big.jpg", tmp_path / "big.png", 64)
    assert max(cutout.shape) == 64
    assert all(max(level.shape[:2]) <= 64 for level in cutout.levels)
    # mip levels halve down to a few pixels
    assert [max(level.shape[:2]) for level in cutout.levels][:3] == [64, 32, 16]


@pytest.mark.parametrize("name, data", [
    ("gray.jpg", _encode(_rgb(120, 160), "JPEG", mode="L")),
    ("cmyk.jpg", _encode(_rgb(120, 160), "JPEG", mode="CMYK")),
    ("rgba.png", _encode(np.dstack([_rgb(120, 160), np.full((120, 160), 90, np.uint8)]), "PNG")),
    ("deep.png", _encode(np.full((120, 160), 50000, np.uint16), "PNG")),
    ("portrait.jpg", _encode(_rgb(160, 120), "JPEG")),
])
def test_background_modes_all_load_as_rgb(tmp_path, name, data):
    (tmp_path / name).write_bytes(data)
    image = load_background(tmp_path / name, 64)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3 and min(image.shape[:2]) == 64
    assert max(image.shape[:2]) == round(64 * 160 / 120)
    assert image.mean() > 20  # decoded content, not black


def test_backgrounds_decode_to_short_side(tmp_path):
    make_scenes(tmp_path, n=2)
    files, _, _ = scan_backgrounds(tmp_path)
    for rel in files:
        image = load_background(tmp_path / rel, 64)
        assert min(image.shape[:2]) == 64 and image.shape[2] == 3
    cv2.imwrite(str(tmp_path / "tiny.png"), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(BadInputError, match="only 8x8"):
        load_background(tmp_path / "tiny.png", 64)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(BadInputError, match="cannot be decoded"):
        load_background(tmp_path / "broken.jpg", 64)


def _gradient(h, w):
    y, x = np.mgrid[:h, :w]
    return np.dstack([x * 255 // w, y * 255 // h, (x + y) * 255 // (w + h)]).astype(np.uint8)


def _exif(orientation):
    exif = Image.new("RGB", (1, 1)).getexif()
    exif[0x0112] = orientation
    exif[0x010E] = "x" * 30000  # a long description: the frame header lies past a large APP1 segment
    return exif.tobytes()


@pytest.mark.parametrize("data", [
    _encode(_rgb(61, 83)),
    _encode(_rgb(61, 83), progressive=True),
    _encode(_rgb(61, 83), optimize=True, quality=40),
    _encode(_rgb(61, 83), "JPEG", mode="L"),
    _encode(_rgb(61, 83), "JPEG", mode="CMYK"),
    _encode(_rgb(61, 83), exif=_exif(6)),
    _encode(_rgb(61, 83), icc_profile=b"\0" * 70000),  # a profile split over two APP2 segments
])
def test_the_jpeg_frame_header_gives_the_size_pillow_reads(data):
    assert jpeg_size(data) == Image.open(io.BytesIO(data)).size == (83, 61)
    assert jpeg_size(np.frombuffer(data, np.uint8)) == (83, 61)  # as the decoder's buffer, too


@pytest.mark.parametrize("data", [
    b"", b"\xff\xd8", b"\xff\xd8\xff garbage", _encode(_rgb(61, 83))[:40], _encode(_rgb(61, 83), "PNG"),
    b"\xff\xd8\xff\xda\x00\x02",  # a scan before any frame header
])
def test_bytes_without_a_readable_jpeg_frame_header_have_no_size(data):
    assert jpeg_size(data) is None


def test_an_exif_rotated_background_is_decoded_scaled_and_upright(tmp_path):
    # Stored 640x480, shown 480x640 (orientation 6): the short side goes to 64 at 1/4 scale in the DCT
    # domain, and the result must be the upright photo, as a full decode shrinks it.
    stored = _gradient(480, 640)
    (tmp_path / "turned.jpg").write_bytes(_encode(stored, quality=95, exif=_exif(6)))
    image = load_background(tmp_path / "turned.jpg", 64)
    upright = cv2.cvtColor(cv2.imread(str(tmp_path / "turned.jpg")), cv2.COLOR_BGR2RGB)
    assert upright.shape[:2] == (640, 480) and image.shape == (85, 64, 3)
    expected = cv2.resize(upright, (64, 85), interpolation=cv2.INTER_AREA)
    assert np.abs(image.astype(int) - expected).mean() < 3


def test_real_thus10000_pairs_all_load(real_objects):
    pairs, skipped, _ = scan_objects(real_objects)
    assert len(pairs) == 18 and not skipped
    for image, mask in pairs:
        cutout = load_cutout(real_objects / image, real_objects / mask, 161)
        raw = cv2.imread(str(real_objects / mask), cv2.IMREAD_GRAYSCALE)
        assert max(cutout.shape) <= 161
        # the cut-out is the mask's object, shrunk: its area scales with the square of the shrink factor
        ys, xs = np.nonzero(raw)
        shrink = min(1.0, 161 / max(np.ptp(ys) + 1, np.ptp(xs) + 1))
        assert cutout.area == pytest.approx(raw.sum() / 255 * shrink**2, rel=0.03)


def test_captures_of_native_stderr_in_many_threads_each_get_their_own_text():
    """With `--backend threading` the workers decode in threads of one process. Two that began the capture's
    first use at once each made a lock of their own, went in together and swapped each other's descriptors:
    fd 2 was left on a capture file (every later message lost) or closed, and packs failed with "Bad file
    descriptor", "release unlocked lock", a segmentation fault or a hang at exit, in about half of the runs."""
    import threading

    from synthgen.sources import _NativeStderr

    before = os.fstat(2)
    for _ in range(30):
        capture, texts, start = _NativeStderr(), {}, threading.Barrier(6)

        def speak(k, capture=capture, texts=texts, start=start):
            start.wait()
            with capture as captured:
                os.write(2, f"thread {k} speaking\n".encode())
            texts[k] = captured.text

        threads = [threading.Thread(target=speak, args=(k,), daemon=True) for k in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=10)
        assert not any(thread.is_alive() for thread in threads), "a capture never ended (a swapped lock)"
        assert texts == {k: f"thread {k} speaking" for k in range(6)}
    after = os.fstat(2)
    assert (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino)
