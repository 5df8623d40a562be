"""verify (corruption is found and named), inspect (statistics and PNGs), the reader, the CLI."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
from PIL import Image

from conftest import FAST, manifest_of, read_set
from synthgen import ShardSet
from synthgen.errors import OutputError
from synthgen.shards import content_checksum


@pytest.fixture(scope="module")
def built_set(tmp_path_factory):
    """One small finished set, shared read-only by the tests of this module."""
    from synthgen.cli import main

    out = tmp_path_factory.mktemp("sets") / "base"
    assert main(["build", "--n", "50", "--shard-size", "20", "--out", str(out), *FAST]) == 0
    return out


@pytest.fixture
def copy_of(built_set, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(built_set, out)
    return out


def test_verify_passes_an_intact_set(synthgen, built_set):
    result = synthgen("verify", built_set, "--no-progress")
    assert result.rc == 0 and "all 3 shards" in result.out


def test_verify_finds_changed_labels(synthgen, copy_of):
    with h5py.File(copy_of / "shard-00001.h5", "r+") as f:
        f["target_area"][3] = f["target_area"][3] + 1  # still a valid layout: only the checksum can tell
    with h5py.File(copy_of / "shard-00002.h5", "r+") as f:
        f["count"][3] = f["count"][3] + 1  # no longer matches the per-object table
    result = synthgen("verify", copy_of, "--no-progress")
    assert result.rc == 1 and "shard-00001.h5: checksum mismatch" in result.err
    assert "shard-00002.h5: object_offset does not match count" in result.err
    assert "shard-00000.h5" not in result.err


def test_verify_finds_flipped_image_bytes(synthgen, copy_of):
    path = copy_of / "shard-00000.h5"
    with h5py.File(path, "r") as f:
        offset = f["images"].id.get_chunk_info(7).byte_offset  # the raw bytes of image 7 in the file
    data = bytearray(path.read_bytes())
    data[offset + 100] ^= 0xFF
    path.write_bytes(bytes(data))
    result = synthgen("verify", copy_of, "--no-progress")
    assert result.rc == 1 and "shard-00000.h5: checksum mismatch" in result.err


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "shard-00002.h5").unlink(), "shard-00002.h5: missing"),
    (lambda d: (d / "shard-00002.h5").write_bytes((d / "shard-00002.h5").read_bytes()[:5000]),
     "shard-00002.h5: cannot be read"),
    (lambda d: shutil.copy(d / "shard-00000.h5", d / "shard-00009.h5"), "shard-00009.h5: not listed"),
])
def test_verify_finds_missing_truncated_and_stray_shards(synthgen, copy_of, damage, message):
    damage(copy_of)
    result = synthgen("verify", copy_of, "--no-progress")
    assert result.rc == 1 and message in result.err


def test_verify_and_reader_refuse_an_incomplete_build(synthgen, copy_of):
    manifest = manifest_of(copy_of)
    manifest["complete"] = False
    (copy_of / "manifest.json").write_text(json.dumps(manifest))
    result = synthgen("verify", copy_of, "--no-progress")
    assert result.rc == 1 and "not complete" in result.err
    with pytest.raises(OutputError, match="not complete.*resume"):
        ShardSet(copy_of)
    with pytest.raises(OutputError, match="not a folder"):
        ShardSet(copy_of / "shard-00000.h5").__len__()


def test_verify_names_a_path_that_is_no_set_folder(synthgen, copy_of, tmp_path):
    (tmp_path / "empty").mkdir()
    for path, what in [(tmp_path / "nowhere", "no such folder"), (copy_of / "shard-00000.h5", "not a folder"),
                       (tmp_path / "empty", "no synthgen manifest.json here")]:
        result = synthgen("verify", path, "--no-progress")
        # one error naming the path, as the reader gives it, not a set of problems with its manifest
        assert result.rc == 1 and result.err == f"synthgen: error: {path}: {what}; give the --out folder of a " \
            "`synthgen build` or `synthgen pack`\n"
    # a folder of sets given for a set: the sets are named (vae-train --data sets/ for sets/train, sets/test)
    (tmp_path / "sets").mkdir()
    copy_of.rename(tmp_path / "sets" / "train")
    result = synthgen("verify", tmp_path / "sets", "--no-progress")
    assert result.rc == 1 and result.err.endswith("; sets lie in its subfolders train: name those\n")


def flip_image_bytes(path, image=7, count=64):
    """Flip bytes of one image's pixels in the file itself, as a failing disk or a bad copy would."""
    with h5py.File(path, "r") as f:
        offset = f["images"].id.get_chunk_info(image).byte_offset
    data = bytearray(path.read_bytes())
    for k in range(count):
        data[offset + 100 + k] ^= 0xFF
    path.write_bytes(bytes(data))


def test_the_reader_refuses_a_corrupted_shard_before_its_first_use(synthgen, built_set, copy_of, monkeypatch):
    import synthgen.reader as reader

    hashed = []
    monkeypatch.setattr(reader, "content_checksum", lambda *a: hashed.append(1) or content_checksum(*a))
    with ShardSet(copy_of) as shards:  # intact: each shard is hashed once in this process, however often read
        shards.images([0, 1, 45])
        assert np.array_equal(ShardSet(copy_of).labels["count"], shards.labels["count"])
        ShardSet(copy_of).union_boxes()
    assert len(hashed) == 3
    flip_image_bytes(copy_of / "shard-00001.h5")
    for read in (lambda s: s.images([25]), lambda s: s.labels, lambda s: s.union_boxes(), lambda s: s[21]):
        with pytest.raises(OutputError, match=r"shard-00001.h5: corrupted.*`synthgen verify .*copy`"):
            read(ShardSet(copy_of))
    assert ShardSet(copy_of).images([0]).shape == (1, 64, 64, 3)  # the intact shards stay readable
    assert ShardSet(copy_of, verify=False).images([25]).shape == (1, 64, 64, 3)  # the opt-out, for checked sets
    result = synthgen("inspect", copy_of)
    assert result.rc == 1 and "shard-00001.h5: corrupted" in result.err and result.err.count("\n") == 1
    assert synthgen("inspect", copy_of, "--no-verify-shards", "--samples", 4).rc == 0
    # what the message advises: delete the damaged shard, re-run the command that made the set
    (copy_of / "shard-00001.h5").unlink()
    rebuilt = synthgen("build", "--n", "50", "--shard-size", "20", "--out", copy_of, *FAST)
    assert rebuilt.rc == 0 and "built 20 images" in rebuilt.out and "30 were already built" in rebuilt.out
    assert np.array_equal(ShardSet(copy_of).images(np.arange(50)), read_set(built_set)["images"])


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "shard-00001.h5").write_bytes((d / "shard-00001.h5").read_bytes()[:5000]),
     "not a readable HDF5 shard"),
    (lambda d: (d / "shard-00001.h5").write_bytes(b"\0" * 8 + (d / "shard-00001.h5").read_bytes()[8:]),
     "not a readable HDF5 shard"),
    (lambda d: shutil.copy(d / "shard-00000.h5", d / "shard-00001.h5"), "not the shard manifest.json lists"),
    (lambda d: (d / "shard-00001.h5").unlink(), "listed in manifest.json but missing"),
    (lambda d: (d / "manifest.json").write_text('{"format": "synthgen-manifest", "complete": true}'),
     "damaged manifest"),
])
def test_the_reader_names_unreadable_foreign_and_missing_shards(copy_of, damage, message):
    damage(copy_of)
    with pytest.raises(OutputError, match=message):
        ShardSet(copy_of, verify=False).labels


def test_inspect_writes_valid_pngs_and_true_statistics(synthgen, built_set, tmp_path):
    out = tmp_path / "figures"
    result = synthgen("inspect", built_set, "--out", out, "--samples", 10)
    assert result.rc == 0
    assert "count histogram   0: 10  1: 10  2: 10  3: 10  4: 10" in result.out
    report = json.loads((out / "inspect.json").read_text())
    data = read_set(built_set)
    keep = data["count"] > 0
    expected = np.corrcoef(np.log(data["count"][keep]), np.log(data["visible_area"][keep]))[0, 1]
    assert report["summary"]["corr_log_count_log_area"]["visible"] == pytest.approx(expected)
    for name in ("count_vs_area.png", "contact_sheet.png"):
        with Image.open(out / name) as image:
            image.verify()
        with Image.open(out / name) as image:
            pixels = np.asarray(image.convert("RGB"))
            assert image.width > 600 and pixels.std() > 10  # a real figure, not a blank canvas


def test_contact_sheet_shows_every_sample_at_its_own_pixels_with_its_boxes(built_set, tmp_path):
    from synthgen.inspection import BOX_COLOUR, contact_sheet, tile_origin

    indices = np.array([0, 7, 19, 20, 33, 49])  # across all three shards
    path = tmp_path / "sheet.png"
    with ShardSet(built_set) as shards:
        contact_sheet(shards, indices, path, columns=4)
        images, labels = shards.images(indices), shards.labels
        boxes = [shards.objects(int(i))["box"] for i in indices]
    sheet = np.asarray(Image.open(path).convert("RGB"))
    scale = 3  # 64-pixel images are enlarged by whole pixels to at least 160
    for k, (image, image_boxes) in enumerate(zip(images, boxes)):
        top, left = tile_origin(k, 4, 64 * scale)
        tile = sheet[top:top + 64 * scale, left:left + 64 * scale]
        outline = np.zeros(tile.shape[:2], bool)
        for x0, y0, x1, y1 in image_boxes.tolist():
            x0, y0, x1, y1 = x0 * scale, y0 * scale, x1 * scale - 1, y1 * scale - 1
            outline[y0:y1 + 1, [x0, x1]] = outline[[y0, y1], x0:x1 + 1] = True
            assert (tile[y0, x0:x1 + 1] == BOX_COLOUR).all() and (tile[y0:y1 + 1, x1] == BOX_COLOUR).all()
        enlarged = image.repeat(scale, axis=0).repeat(scale, axis=1)
        assert np.array_equal(tile[~outline], enlarged[~outline])
        caption = sheet[top - 16:top, left:left + 64 * scale]
        assert (caption.min(axis=2) < 100).sum() > 50  # dark text on the white band above the image
    assert len(boxes[0]) == labels["count"][0]
    assert sheet.shape[1] == 4 + 4 * (64 * scale + 4)  # four columns, two rows
    assert (sheet[-4:] == 255).all() and sheet.shape[0] == 4 + 2 * (16 + 64 * scale + 4)


def test_contact_sheet_shrinks_large_images_to_a_tile(tmp_path):
    from synthgen.cli import main
    from synthgen.inspection import TILE_SIDE, contact_sheet, tile_origin, tile_scale

    assert tile_scale(32) == 5 and tile_scale(161) == tile_scale(320) == 1 and tile_scale(640) == 0.5
    out = tmp_path / "large"
    assert main(["build", "--n", "3", "--size", "480", "--out", str(out), "--no-progress", "--workers", "1"]) == 0
    with ShardSet(out) as shards:
        contact_sheet(shards, np.arange(3), tmp_path / "sheet.png")
        image = shards.images([1])[0]
    sheet = np.asarray(Image.open(tmp_path / "sheet.png").convert("RGB"))
    side = TILE_SIDE[1]
    assert sheet.shape[:2] == (4 + 16 + side + 4, 4 + 3 * (side + 4))
    top, left = tile_origin(1, 3, side)
    shrunk = cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA).astype(int)
    tile = sheet[top:top + side, left:left + side].astype(int)
    assert np.median(np.abs(tile - shrunk)) == 0  # the image, but where a box outline is drawn


def test_chi_square_test_matches_scipy():
    from scipy.stats import chi2_contingency

    from synthgen.stats import chi_square_test

    rng = np.random.default_rng(3)
    tables = [rng.integers(0, 30, (r, k)) + 1 for r, k in ((2, 2), (2, 5), (185, 5), (40, 3))]
    tables.append(np.array([[12, 0], [3, 9]]))  # 2x2: Yates' correction applies
    tables.append(np.array([[5.0, 5.2], [5.1, 4.9]]))  # expectations within half a unit of the counts
    for table in tables:
        ours, theirs = chi_square_test(table.astype(float)), chi2_contingency(table)
        assert ours[0] == pytest.approx(theirs[0], rel=1e-12, abs=1e-12)
        assert ours[1] == pytest.approx(theirs[1], rel=1e-10, abs=1e-14)
        assert ours[2] == theirs[2] and np.allclose(ours[3], theirs[3])


def test_source_area_association_counts_each_source_once_per_image():
    from scipy.stats import chi2_contingency

    from synthgen.stats import source_area_association

    rng = np.random.default_rng(4)
    n = 400
    counts = rng.integers(0, 5, n)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    source_ids = rng.integers(0, 12, offsets[-1])
    area = np.where(counts > 0, rng.uniform(0.04, 0.36, n), 0.0)
    # the table by hand: one row per distinct source of an image, in the image's area quintile
    images = np.flatnonzero(counts > 0)
    edges = np.quantile(np.log(area[images]), [0.2, 0.4, 0.6, 0.8])
    table = np.zeros((12, 5))
    for i in images:
        for source in set(source_ids[offsets[i]:offsets[i + 1]].tolist()):
            table[source, np.searchsorted(edges, np.log(area[i]), side="right")] += 1
    table = table[table.sum(axis=1) > 0]
    chi2, p, dof, _ = chi2_contingency(table)
    result = source_area_association(offsets, source_ids, area)
    assert result["sources"] == table.shape[0] and result["dof"] == dof
    assert result["chi2"] == pytest.approx(chi2) and result["chi2_p"] == pytest.approx(p)


def test_reader_matches_the_files(built_set):
    data = read_set(built_set)
    with ShardSet(built_set) as shards:
        assert len(shards) == 50 and shards.image_size == 64
        assert np.array_equal(shards.labels["count"], data["count"])
        order = [49, 3, 20, 3, 19, 0]  # across shards, unsorted, with a repeat
        assert np.array_equal(shards.images(order), data["images"][order])
        image, labels = shards[21]
        assert np.array_equal(image, data["images"][21]) and labels["count"] == data["count"][21]
        objects = shards.objects(21)
        assert len(objects["box"]) == data["count"][21]
        assert objects["visible_area"].sum() == pytest.approx(labels["visible_area"], rel=1e-5, abs=1e-3)
        with pytest.raises(IndexError):
            shards.image(50)
        for outside in (50, -1):  # the same message as image(): numpy's own, or the labels of image 49, before
            with pytest.raises(IndexError, match=rf"image {outside} out of range 0\.\.49"):
                shards[outside]
        with pytest.raises(TypeError):
            shards[2.0]
        assert len(list(shards)) == 50  # iteration ends at the range's end


def test_reader_in_forked_dataloader_workers(built_set):
    torch = pytest.importorskip("torch")
    shards = ShardSet(built_set)
    shards.image(0)  # the parent holds an open handle; the workers must not use it

    class Images(torch.utils.data.Dataset):
        def __len__(self):
            return len(shards)

        def __getitem__(self, i):
            return torch.from_numpy(shards.image(i)), int(shards.labels["count"][i])

    loader = torch.utils.data.DataLoader(Images(), batch_size=8, num_workers=2,
                                         multiprocessing_context="fork")
    images = torch.cat([batch for batch, _ in loader]).numpy()
    assert np.array_equal(images, read_set(built_set)["images"])
    shards.close()


def test_help_documents_every_option_with_its_default(capsys):
    from synthgen.cli import main

    with pytest.raises(SystemExit):
        main(["build", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for option, default in (("--count", "0-4"), ("--size", "161"), ("--area-range", "0.04-0.36"),
                            ("--area-dist", "loguniform"), ("--size-jitter", "0.15"), ("--max-occlusion", "0.2"),
                            ("--max-outside", "0.0"), ("--shard-size", "1000"), ("--workers", "-1"),
                            ("--backend", "loky"), ("--on-bad-input", "skip"), ("--color-shift", "0.2,0.2,0.05"),
                            ("--seed", "0"), ("--compression", "none")):
        assert option in text and f"default: {default}" in text, option
    for option in ("--same-object", "--source-objects", "--scheduler", "--overwrite", "--objects", "--backgrounds"):
        assert option in text


def test_console_script_is_installed():
    # pip puts console scripts beside the environment's interpreter (.venv/bin), on PATH or not.
    synthgen = Path(sys.executable).parent / "synthgen"
    assert synthgen.exists(), f"no {synthgen}: the package is not installed (pip install -e .)"
    result = subprocess.run([str(synthgen), "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("synthgen ")


@pytest.mark.parametrize("compression", ["none", "lzf", "gzip"])
def test_random_batches_read_the_right_images_for_every_compression(compression, tmp_path):
    from synthgen.cli import main
    from synthgen.shards import raw_image_offsets

    out = tmp_path / compression
    assert main(["build", "--n", "45", "--shard-size", "20", "--size", "32", "--compression", compression,
                 "--out", str(out), "--no-progress", "--workers", "1"]) == 0
    expected = read_set(out)["images"]
    with h5py.File(out / "shard-00000.h5", "r") as f:
        offsets = raw_image_offsets(f["images"])
    # uncompressed images are read straight from the file, compressed ones through HDF5
    assert (offsets is not None) == (compression == "none")
    rng = np.random.default_rng(1)
    with ShardSet(out) as shards:
        for indices in ([44, 0, 21, 21, 19, 20, 1, 2, 3], rng.integers(0, 45, 200), np.arange(45), [],
                        np.arange(45)[::-1]):
            assert np.array_equal(shards.images(indices), expected[np.asarray(indices, dtype=np.int64)])
        assert all(np.array_equal(shards.image(i), expected[i]) for i in (0, 19, 20, 44))


@pytest.mark.parametrize("compression", ["none", "lzf"])
def test_a_streamed_checksum_hashes_the_same_bytes_as_the_arrays(compression, tmp_path):
    """Raw images are hashed as they are read from the file, in blocks that need not hold whole images;
    compressed ones are read through HDF5. Either way the checksum is the one over the arrays."""
    from synthgen.cli import main
    from synthgen.shards import StreamedDataset, arrays_to_hash, raw_blocks, raw_image_offsets, read_arrays, read_attrs

    out = tmp_path / compression
    assert main(["build", "--n", "20", "--size", "32", "--compression", compression, "--out", str(out),
                 "--no-progress", "--workers", "1"]) == 0
    path = out / "shard-00000.h5"
    with h5py.File(path, "r") as f:
        arrays, attrs, to_hash = read_arrays(f), read_attrs(f), arrays_to_hash(f)
        offsets = raw_image_offsets(f["images"])
    assert isinstance(to_hash["images"], StreamedDataset) == (compression == "none")
    assert content_checksum(to_hash, attrs) == content_checksum(arrays, attrs) == attrs["content_sha256"]
    if compression == "none":
        image_bytes = 32 * 32 * 3
        for block_bytes in (1000, image_bytes, 5 * image_bytes + 7, 1 << 20):
            blocks = [bytes(b) for b in raw_blocks(path, offsets, image_bytes, block_bytes)]
            assert max(map(len, blocks)) <= block_bytes and b"".join(blocks) == arrays["images"].tobytes()
        picked = offsets[[3, 4, 5, 9, 2]]  # runs end to end and single images out of order
        assert b"".join(bytes(b) for b in raw_blocks(path, picked, image_bytes, 1000)) == \
            arrays["images"][[3, 4, 5, 9, 2]].tobytes()
        beyond = np.array([path.stat().st_size - image_bytes // 2])  # half an image before the end of the file
        assert sum(len(b) for b in raw_blocks(path, beyond, image_bytes, 1000)) == image_bytes // 2


def test_a_shard_cut_short_after_its_check_is_named_not_read_as_zeros(built_set, copy_of):
    with ShardSet(copy_of) as shards:
        shards.images([0])  # checked, and its offsets known
        path = copy_of / "shard-00000.h5"
        with open(path, "r+b") as handle:
            handle.truncate(path.stat().st_size - 64 * 64 * 3 * 3)
        with pytest.raises(OutputError, match="shard-00000.h5: shorter than its index says"):
            shards.images([19, 18])


def test_count_ticks_stay_apart_on_many_counts():
    from synthgen.inspection import count_ticks

    assert count_ticks(np.arange(5)).tolist() == [0, 1, 2, 3, 4]  # the paper's 0-4: every count
    many = count_ticks(np.arange(1, 33))  # the dot stimuli's 1-32 printed over each other
    assert many[0] == 1 and len(many) <= 16 and np.all(np.diff(many) == 2)
