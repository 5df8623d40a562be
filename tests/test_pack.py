"""`synthgen pack`: natural labelled images into shards of the same schema."""
import json

import cv2
import h5py
import numpy as np

from conftest import assert_same_sets, manifest_of, read_set
from synthgen import ShardSet

FAST = ["--size", "48", "--no-progress", "--workers", "1"]


def make_sos_tree(root, per_label=4, seed=0):
    """Count folders 0, 1, 2, 3, 4+ of real JPEGs of mixed sizes; returns {relative path: label}."""
    rng = np.random.default_rng(seed)
    labels = {}
    for folder, label in (("0", 0), ("1", 1), ("2", 2), ("3", 3), ("4+", 4)):
        (root / folder).mkdir(parents=True)
        for k in range(per_label):
            shape = (60 + 20 * k, 90, 3) if k % 2 else (90, 60 + 20 * k, 3)
            image = (rng.random(shape) * 200 + 30).astype(np.uint8)
            cv2.imwrite(str(root / folder / f"img{k}.jpg"), image)
            labels[f"{folder}/img{k}.jpg"] = label
    return labels


def test_pack_count_folders(synthgen, tmp_path):
    root = tmp_path / "sos"
    labels = make_sos_tree(root)
    (root / "2" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    (root / "stray.jpg").write_bytes(b"x")
    (root / "4+" / "notes.txt").write_text("hi")
    out = tmp_path / "packed"
    result = synthgen("pack", root, "--out", out, "--shard-size", 7, *FAST)
    assert result.rc == 0, result.err
    assert "count histogram   0: 4  1: 4  2: 4  3: 4  4: 4" in result.out
    for name, reason in (("broken.jpg", "cannot be decoded"), ("stray.jpg", "not inside a count folder"),
                         ("notes.txt", "not an image file")):
        assert any(name in line and reason in line for line in result.out.splitlines()), name
    manifest = manifest_of(out)
    assert manifest["kind"] == "natural" and manifest["n_images"] == 20
    assert len(manifest["summary"]["skipped_inputs"]) == 3
    assert f"OpenCV {cv2.__version__}" in manifest["summary"]["machine"]  # it decoded the photos
    data = read_set(out)
    sources = json.loads((out / "sources.json").read_text())
    assert data["images"].shape == (20, 48, 48, 3)
    # index points into sources.json files; the label is the folder's
    for index, count in zip(data["index"], data["count"]):
        assert labels[sources["files"][index]] == count
    assert np.isnan(data["visible_area"]).all() and not len(data["objects/box"])
    assert synthgen("verify", out, "--no-progress").rc == 0
    with ShardSet(out) as shards:
        assert shards.kind == "natural" and len(shards) == 20
    again = synthgen("pack", root, "--out", out, "--shard-size", 7, *FAST)
    assert again.rc == 0 and "(0 in this run)" in again.out
    assert {s["path"] for s in manifest_of(out)["summary"]["skipped_inputs"]} >= {str(root / "2" / "broken.jpg")}
    refused = synthgen("pack", root, "--out", out, "--shard-size", 5, *FAST)
    assert refused.rc == 1 and "different set" in refused.err


def test_packs_in_threads_are_the_packs_of_processes(synthgen, tmp_path):
    """`--backend threading` decodes in threads of one process: their captures of the decoders' messages once
    swapped each other's descriptors (synthgen.sources._NativeStderr), and about half of such packs failed."""
    make_sos_tree(tmp_path / "photos", per_label=4)
    args = ["--shard-size", 3, "--size", 48, "--no-progress", "--workers", 2]
    assert synthgen("pack", tmp_path / "photos", *args, "--out", tmp_path / "loky").rc == 0
    for run in range(3):
        result = synthgen("pack", tmp_path / "photos", *args, "--backend", "threading", "--out", tmp_path / f"t{run}")
        assert result.rc == 0, result.err
        assert_same_sets(tmp_path / "loky", tmp_path / f"t{run}")


def test_fit_modes(synthgen, tmp_path):
    root = tmp_path / "sos"
    (root / "1").mkdir(parents=True)
    wide = np.full((50, 150, 3), 128, np.uint8)
    wide[:, :20] = (0, 0, 255)  # a red band at the left edge (BGR)
    cv2.imwrite(str(root / "1" / "wide.png"), wide)
    images = {}
    for fit in ("squash", "crop", "pad"):
        assert synthgen("pack", root, "--out", tmp_path / fit, "--fit", fit, *FAST).rc == 0
        images[fit] = read_set(tmp_path / fit)["images"][0].astype(int)
    red = lambda image: (image[..., 0] > 200) & (image[..., 1] < 60)  # noqa: E731
    assert red(images["squash"])[:, :4].all()  # the edge band survives the squash
    assert not red(images["crop"]).any()  # and is cut off by the centre crop
    assert red(images["pad"])[20:28, :4].all() and not red(images["pad"])[:8].any()  # padded above and below
    mean = wide.reshape(-1, 3)[:, ::-1].mean(axis=0)
    assert np.abs(images["pad"][0, 24] - mean).max() <= 2


def test_pack_an_sos_split_file(synthgen, tmp_path):
    root = tmp_path / "images"
    labels = make_sos_tree(root, per_label=2)
    rows = ["path,label,split"]
    for k, (path, label) in enumerate(sorted(labels.items())):
        rows.append(f"{path},{label},{'test' if k % 3 == 0 else 'train'}")
    rows.append("0/missing.jpg,0,test")
    split_file = tmp_path / "sos_split.csv"
    split_file.write_text("\n".join(rows) + "\n")
    out = tmp_path / "test-set"
    result = synthgen("pack", root, "--split-file", split_file, "--split", "test", "--out", out, *FAST)
    assert result.rc == 0, result.err
    assert "missing.jpg" in result.out and "not found" in result.out
    expected = sorted(path for k, path in enumerate(sorted(labels)) if k % 3 == 0)
    sources = json.loads((out / "sources.json").read_text())
    assert sorted(sources["files"]) == expected
    data = read_set(out)
    assert sorted(data["count"].tolist()) == sorted(labels[p] for p in expected)
    failed = synthgen("pack", root, "--split-file", split_file, "--out", tmp_path / "x", *FAST)
    assert failed.rc == 2 and "--split-file and --split go together" in failed.err


def test_inspect_a_natural_set(synthgen, tmp_path):
    root = tmp_path / "sos"
    make_sos_tree(root, per_label=2)
    assert synthgen("pack", root, "--out", tmp_path / "p", *FAST).rc == 0
    result = synthgen("inspect", tmp_path / "p", "--samples", 5)
    assert result.rc == 0 and "count histogram   0: 2" in result.out and "corr" not in result.out
    assert (tmp_path / "p" / "inspect" / "count_histogram.png").stat().st_size > 5000
    assert (tmp_path / "p" / "inspect" / "contact_sheet.png").stat().st_size > 5000


def test_pack_argument_errors(synthgen, tmp_path):
    (tmp_path / "sos").mkdir()
    result = synthgen("pack", tmp_path / "sos", "--out", tmp_path / "o", "--split", "train", *FAST)
    assert result.rc == 2 and "--split-file and --split go together" in result.err
    empty = synthgen("pack", tmp_path / "sos", "--out", tmp_path / "o", *FAST)
    assert empty.rc == 2 and "no labelled images found" in empty.err
    missing = synthgen("pack", tmp_path / "nowhere", "--out", tmp_path / "o", *FAST)
    assert missing.rc == 2 and "does not exist" in missing.err
    assert not (tmp_path / "o").exists()


def test_counts_above_four_are_4_plus_in_folders_and_split_files_alike(synthgen, tmp_path):
    root = tmp_path / "images"
    make_sos_tree(root, per_label=1)
    (root / "7").mkdir()
    cv2.imwrite(str(root / "7" / "crowd.jpg"), np.full((50, 70, 3), 90, np.uint8))
    folders = synthgen("pack", root, "--out", tmp_path / "by-folder", *FAST)
    assert folders.rc == 0 and "count histogram   0: 1  1: 1  2: 1  3: 1  4: 2" in folders.out
    split_file = tmp_path / "split.csv"
    split_file.write_text("path,label,split\n7/crowd.jpg,7,train\n4+/img0.jpg,4+,train\n1/img0.jpg,1,train\n")
    listed = synthgen("pack", root, "--split-file", split_file, "--split", "train", "--out", tmp_path / "by-file",
                      *FAST)
    assert listed.rc == 0 and "count histogram   1: 1  4: 2" in listed.out


def test_an_image_listed_twice_is_an_error_naming_both_lines(synthgen, tmp_path):
    root = tmp_path / "images"
    make_sos_tree(root, per_label=1)
    split_file = tmp_path / "split.csv"
    # in both splits: the test images would leak into training
    split_file.write_text("path,label,split\n1/img0.jpg,1,train\n2/img0.jpg,2,train\n1/img0.jpg,1,test\n")
    result = synthgen("pack", root, "--split-file", split_file, "--split", "train", "--out", tmp_path / "o", *FAST)
    assert result.rc == 2 and "1/img0.jpg is listed twice, on lines 2 and 4" in result.err
    assert not (tmp_path / "o").exists()
    # spelled otherwise, or through a link, it is still the one image, and would still leak
    (root / "linked").symlink_to(root / "1")
    for other, told in (("./1/img0.jpg", "1/img0.jpg is listed twice, on lines 2 and 3 (as 1/img0.jpg and "
                                         "./1/img0.jpg)"),
                        ("2/../1/img0.jpg", "1/img0.jpg is listed twice, on lines 2 and 3 (as 1/img0.jpg and "
                                            "2/../1/img0.jpg)"),
                        (f"{root}/1/img0.jpg", f"1/img0.jpg is listed twice, on lines 2 and 3 (as 1/img0.jpg and "
                                               f"{root}/1/img0.jpg)"),
                        ("linked/img0.jpg", "lines 2 (1/img0.jpg) and 3 (linked/img0.jpg) name one image")):
        split_file.write_text(f"path,label,split\n1/img0.jpg,1,train\n{other},1,test\n")
        result = synthgen("pack", root, "--split-file", split_file, "--split", "test", "--out", tmp_path / "o", *FAST)
        assert result.rc == 2 and told in result.err, result.err
    assert not (tmp_path / "o").exists()


def test_split_file_paths_are_named_within_root_so_sets_of_one_folder_tell_the_photos_they_share(synthgen, tmp_path):
    """A set records its photos by their paths within ROOT; spelled otherwise in a split file (./a.jpg,
    b/../a.jpg, ROOT/a.jpg), the photo a folder pack of ROOT also holds would not be seen as shared."""
    from synthgen.overlap import shared_images

    root = tmp_path / "images"
    make_sos_tree(root, per_label=1)
    split_file = tmp_path / "split.csv"
    split_file.write_text(f"path,label,split\n./1/img0.jpg,1,train\n3/../2/img0.jpg,2,train\n"
                          f"{root}/0/img0.jpg,0,train\n")
    assert synthgen("pack", root, "--split-file", split_file, "--split", "train", "--out", tmp_path / "listed",
                    *FAST).rc == 0
    assert synthgen("pack", root, "--out", tmp_path / "folders", *FAST).rc == 0
    sources = json.loads((tmp_path / "listed" / "sources.json").read_text())
    assert sorted(sources["files"]) == ["0/img0.jpg", "1/img0.jpg", "2/img0.jpg"]
    assert shared_images(ShardSet(tmp_path / "listed"), ShardSet(tmp_path / "folders")) == \
        f"packed from the same photos: 3 of {root} are in both"
    # outside ROOT: its photos could not be compared with those of any other set of ROOT
    (tmp_path / "elsewhere.jpg").write_bytes((root / "1" / "img0.jpg").read_bytes())
    for outside in ("../elsewhere.jpg", f"{tmp_path}/elsewhere.jpg", "1/../../elsewhere.jpg"):
        split_file.write_text(f"path,label,split\n1/img0.jpg,1,train\n{outside},1,train\n")
        result = synthgen("pack", root, "--split-file", split_file, "--split", "train", "--out", tmp_path / "o", *FAST)
        assert result.rc == 2 and f"--split-file {split_file}, line 3: {outside} lies outside ROOT {root}; give as " \
            "ROOT the folder that holds every listed image" in result.err, result.err
    split_file.write_text("path,label,split\n,1,train\n")  # a label without its path
    result = synthgen("pack", root, "--split-file", split_file, "--split", "train", "--out", tmp_path / "o", *FAST)
    assert result.rc == 2 and "line 2: expected 'path,label,split', got ['', '1', 'train']" in result.err
    assert not (tmp_path / "o").exists()
    split_file.write_text("path,label,split\n1/img0.jpg,1,train\n2,2,train\n")  # a folder where a photo goes
    result = synthgen("pack", root, "--split-file", split_file, "--split", "train", "--out", tmp_path / "o", *FAST)
    assert result.rc == 0 and f"skipped {root / '2'}: listed in split.csv but a folder, not an image file" in result.out
    # a folder of ROOT that links elsewhere (datasets kept on another disk): its photos are within ROOT
    (tmp_path / "disk").mkdir()
    (tmp_path / "disk" / "far.jpg").write_bytes((root / "1" / "img0.jpg").read_bytes())
    (root / "linked").symlink_to(tmp_path / "disk")
    # and `linked/..` is the disk's parent, as the file system has it, not ROOT: no photo there
    split_file.write_text(f"path,label,split\n{root}/linked/far.jpg,1,train\nlinked/../2/img0.jpg,2,train\n")
    result = synthgen("pack", root, "--split-file", split_file, "--split", "train", "--out", tmp_path / "l", *FAST)
    assert result.rc == 0 and f"skipped {root}/linked/../2/img0.jpg: listed in split.csv but not found" in result.out
    assert json.loads((tmp_path / "l" / "sources.json").read_text())["files"] == ["linked/far.jpg"]


def test_a_pack_is_the_same_pack_however_its_paths_are_spelled_but_not_with_other_labels(synthgen, tmp_path,
                                                                                       monkeypatch):
    root = tmp_path / "images"
    labels = make_sos_tree(root, per_label=1)
    split_file = tmp_path / "split.csv"
    split_file.write_text("".join(f"{path},{label},train\n" for path, label in sorted(labels.items())))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "packed"
    assert synthgen("pack", "images/", "--split-file", "split.csv", "--split", "train", "--out", out, *FAST).rc == 0
    again = synthgen("pack", root, "--split-file", split_file, "--split", "train", "--out", out, *FAST)
    assert again.rc == 0 and "(0 in this run)" in again.out
    split_file.write_text(split_file.read_text().replace("1/img0.jpg,1,", "1/img0.jpg,2,"))  # a relabelled image
    relabelled = synthgen("pack", "images", "--split-file", "split.csv", "--split", "train", "--out", out, *FAST)
    assert relabelled.rc == 1 and "the listed image files or labels differ" in relabelled.err


def test_a_pack_whose_one_shard_is_decoded_in_parts_is_the_same_pack(synthgen, tmp_path):
    # 1 shard of 132 photos on 2 workers: a partial last round, decoded in 4 parts of 33 (synthgen.parts).
    # The bad files fall in two different parts: the shard still records both, in order, for a resume.
    root = tmp_path / "sos"
    make_sos_tree(root, per_label=26)
    for folder in ("1", "4+"):
        (root / folder / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    options = ["--size", "32", "--no-progress"]
    assert synthgen("pack", root, "--out", tmp_path / "one", "--workers", 1, *options).rc == 0
    result = synthgen("pack", root, "--out", tmp_path / "two", "--workers", 2, *options)
    assert result.rc == 0, result.err
    assert_same_sets(tmp_path / "one", tmp_path / "two")
    one, two = manifest_of(tmp_path / "one"), manifest_of(tmp_path / "two")
    assert (one["summary"]["shards_in_parts"], two["summary"]["shards_in_parts"]) == (0, 1)
    assert two["summary"]["images_packed"] == two["n_images"] == 130
    broken = [str(root / "1" / "broken.jpg"), str(root / "4+" / "broken.jpg")]
    with h5py.File(tmp_path / "two" / "shard-00000.h5", "r") as shard:
        assert [path for path, _ in json.loads(shard.attrs["skipped_json"])] == broken
    assert [s["path"] for s in two["summary"]["skipped_inputs"]] == broken
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["manifest.json", "shard-00000.h5",
                                                                     "sources.json"]  # no parts left


def test_a_split_file_saved_by_a_spreadsheet_and_one_under_the_wrong_root(synthgen, tmp_path):
    root = tmp_path / "images"
    labels = make_sos_tree(root, per_label=1)
    split_file = tmp_path / "split.csv"
    # a byte-order mark and CRLF line ends, as spreadsheet programs save CSV
    split_file.write_bytes(b"\xef\xbb\xbf" + "".join(f"{path},{label},train\r\n"
                                                     for path, label in sorted(labels.items())).encode())
    out = tmp_path / "packed"
    result = synthgen("pack", root, "--split-file", split_file, "--split", "train", "--out", out, *FAST)
    assert result.rc == 0 and "skipped inputs    0" in result.out, result.out + result.err
    assert sorted(json.loads((out / "sources.json").read_text())["files"]) == sorted(labels)
    # the same split written on Windows: backslashes between folders; the same pack
    windows = tmp_path / "windows.csv"
    windows.write_text(split_file.read_text(encoding="utf-8-sig").replace("/", "\\"))
    assert synthgen("pack", root, "--split-file", windows, "--split", "train", "--out", tmp_path / "w", *FAST).rc == 0
    assert manifest_of(tmp_path / "w")["build_identity"] == manifest_of(out)["build_identity"]
    wrong = synthgen("pack", tmp_path, "--split-file", split_file, "--split", "train", "--out", tmp_path / "o", *FAST)
    assert wrong.rc == 2 and "no labelled images found" in wrong.err
    assert "5 files passed over" in wrong.err and "not found" in wrong.err  # why: every path is missing there
