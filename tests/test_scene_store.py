"""The scene store (`synthgen build --scene-store`): scenes decoded once, the same sets, clear refusals."""
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import FAST, assert_same_sets, make_objects, make_scenes, manifest_of
from synthgen.errors import OutputError
from synthgen.scenes import SCENES_MANIFEST, StoredBackgrounds, make_store
from synthgen.sources import load_background, scan_backgrounds


def _scenes_with_a_bad_one(folder):
    make_scenes(folder, n=8)
    bad = folder / "c" / "category0" / "broken.jpg"
    bad.write_bytes((folder / "a" / "category0" / "scene0.jpg").read_bytes()[:300])  # truncated
    return folder, bad


def test_a_set_built_with_the_store_is_the_one_built_without_it(synthgen, tmp_path):
    scenes, bad = _scenes_with_a_bad_one(tmp_path / "scenes")
    objects = make_objects(tmp_path / "objects")
    store = tmp_path / "store"
    common = ["--n", 60, "--objects", objects, "--backgrounds", scenes, "--cache-mb", 0, *FAST]
    plain = synthgen("build", *common, "--out", tmp_path / "plain")
    made = synthgen("build", *common, "--out", tmp_path / "made", "--scene-store", store)
    assert plain.rc == 0 and made.rc == 0, made.err
    assert "decoded 8 scenes" in made.out and (store / SCENES_MANIFEST).exists()
    provenance = manifest_of(tmp_path / "made")["summary"]["scene_store"]
    assert provenance["path"] == str(store) and "OpenCV" in provenance["made_with"]
    assert_same_sets(tmp_path / "plain", tmp_path / "made")
    # The broken scene is kept with the decoder's reason and reported when drawn, as from the folder.
    assert json.loads((store / SCENES_MANIFEST).read_text())["usable"] == 8
    assert manifest_of(tmp_path / "plain")["summary"]["skipped_inputs"] == \
           manifest_of(tmp_path / "made")["summary"]["skipped_inputs"] != []
    assert str(bad) in made.out

    # Every stored scene is the decoder's own output at the build's size.
    stored = StoredBackgrounds(store, scenes)
    files = manifest_of(tmp_path / "plain")["sources"]["backgrounds"]
    assert len(stored) == files["count"] == 9
    listed = json.loads((tmp_path / "made" / "sources.json").read_text())["backgrounds"]["files"]
    for k, name in enumerate(listed):
        if name.endswith("broken.jpg"):
            continue
        assert np.array_equal(stored.load(k, 64), load_background(scenes / name, 64)), name

    # A later build reads the store: a scene changed since (same size, so the same folder to a build) does
    # not change its images, which are still those of the scenes as they were decoded.
    changed = scenes / "a" / "category0" / "scene0.jpg"
    data = bytearray(changed.read_bytes())
    data[-200:-2] = bytes(198)
    changed.write_bytes(bytes(data))
    again = synthgen("build", *common, "--out", tmp_path / "again", "--scene-store", store)
    assert again.rc == 0 and "reading the scenes from --scene-store" in again.out
    assert_same_sets(tmp_path / "plain", tmp_path / "again")
    from_folder = synthgen("build", *common, "--out", tmp_path / "from-folder")
    assert from_folder.rc == 0
    assert manifest_of(tmp_path / "from-folder")["build_identity"] == manifest_of(tmp_path / "plain")["build_identity"]
    assert [s["content_sha256"] for s in manifest_of(tmp_path / "from-folder")["shards"]] != \
           [s["content_sha256"] for s in manifest_of(tmp_path / "plain")["shards"]]  # the change shows from the folder


def test_the_store_is_refused_where_it_cannot_serve(synthgen, tmp_path):
    scenes = make_scenes(tmp_path / "scenes", n=4)
    objects = make_objects(tmp_path / "objects")
    store = tmp_path / "store"
    common = ["--n", 20, "--objects", objects, "--backgrounds", scenes, *FAST]
    assert synthgen("build", *common, "--out", tmp_path / "one", "--scene-store", store).rc == 0

    other_size = synthgen("build", *common, "--size", 48, "--out", tmp_path / "two", "--scene-store", store)
    assert other_size.rc == 2 and "holds the scenes at 64 pixels, not at --size 48" in other_size.err
    make_scenes(tmp_path / "scenes", n=5)  # one scene more: another folder
    other_folder = synthgen("build", *common, "--out", tmp_path / "three", "--scene-store", store)
    assert other_folder.rc == 2 and "are not the same now" in other_folder.err
    embedded = synthgen("build", "--n", 20, *FAST, "--out", tmp_path / "four", "--scene-store", tmp_path / "s2")
    assert embedded.rc == 2 and "Give --backgrounds, or drop --scene-store" in embedded.err
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"x")
    taken = synthgen("build", *common, "--out", tmp_path / "five", "--scene-store", foreign)
    assert taken.rc == 1 and "holds files synthgen did not write (holiday.jpg)" in taken.err
    assert (foreign / "holiday.jpg").read_bytes() == b"x"
    (store / "part-00000.bin").rename(tmp_path / "away.bin")
    damaged = synthgen("build", *common, "--out", tmp_path / "s4", "--scene-store", store)
    assert damaged.rc == 1 and "the store's part-00000.bin is missing; delete the folder" in damaged.err
    same = synthgen("build", *common, "--out", tmp_path / "six", "--scene-store", tmp_path / "six")
    inside = synthgen("build", *common, "--out", tmp_path / "seven", "--scene-store", tmp_path / "seven" / "store")
    holding = synthgen("build", *common, "--out", tmp_path / "s3" / "set", "--scene-store", tmp_path / "s3")
    for refused in (same, inside, holding):
        assert refused.rc == 2 and "give a folder apart from --out" in refused.err
    empty = synthgen("build", *common, "--out", tmp_path / "eight", "--scene-store", "")
    assert empty.rc == 2 and "--scene-store '': an empty value" in empty.err
    blank = synthgen("build", *common, "--out", tmp_path / "eight", "--scene-store", "  ")
    assert blank.rc == 2 and "--scene-store   : give a folder" in blank.err
    # Nothing was written where a check failed.
    assert not any((tmp_path / name).exists() for name in ("two", "three", "four", "five", "s2", "s4", "six",
                                                           "seven", "s3", "eight"))


def test_a_store_is_never_made_over_files_that_appeared_after_the_check(tmp_path):
    scenes = make_scenes(tmp_path / "scenes", n=3)
    files, _, fingerprint = scan_backgrounds(scenes)
    store = tmp_path / "store"
    store.mkdir()
    (store / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match=r"holds files synthgen did not write \(notes.txt\)"):
        make_store(store, str(scenes), files, fingerprint, 48, lambda calls: [f(*a) for f, a in calls])
    assert (store / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scenes", "store"]  # no half-made store beside it


def test_an_interrupted_store_is_made_again(synthgen, tmp_path):
    scenes = make_scenes(tmp_path / "scenes", n=4)
    objects = make_objects(tmp_path / "objects")
    store = tmp_path / "store"
    store.mkdir()
    (store / "part-00000.bin").write_bytes(b"half a part")  # no manifest: not a store
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    abandoned = tmp_path / f".store.making-{int(ended.stdout)}"  # a build that was killed while making it
    abandoned.mkdir()
    (abandoned / "part-00000.bin").write_bytes(b"x" * 1000)
    common = ["--n", 20, "--objects", objects, "--backgrounds", scenes, *FAST]
    made = synthgen("build", *common, "--out", tmp_path / "one", "--scene-store", store)
    assert made.rc == 0 and "decoded 4 scenes" in made.out
    assert not abandoned.exists() and sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    assert sorted(p.name for p in store.iterdir()) == ["index.npz", "part-00000.bin", "scenes.json"]
    plain = synthgen("build", *common, "--out", tmp_path / "plain")
    assert plain.rc == 0
    assert_same_sets(tmp_path / "one", tmp_path / "plain")


def test_two_builds_making_the_same_store_keep_one(tmp_path):
    # The second to finish finds the store in place, keeps it, and leaves no half-made folder behind.
    scenes = make_scenes(tmp_path / "scenes", n=5)
    files, _, fingerprint = scan_backgrounds(scenes)
    store = tmp_path / "store"

    def here(calls):
        return [function(*args) for function, args in calls]

    assert make_store(store, str(scenes), files, fingerprint, 48, here) == 5
    first = (store / "part-00000.bin").read_bytes()
    assert make_store(store, str(scenes), files, fingerprint, 48, here) == 5
    assert (store / "part-00000.bin").read_bytes() == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scenes", "store"]


def test_a_moved_folder_keeps_its_store_and_its_bad_scenes_are_named_where_they_are(synthgen, tmp_path):
    scenes, _ = _scenes_with_a_bad_one(tmp_path / "scenes")
    objects = make_objects(tmp_path / "objects")
    store = tmp_path / "store"
    common = ["--n", 60, "--objects", objects, "--cache-mb", 0, *FAST]
    first = synthgen("build", *common, "--backgrounds", scenes, "--out", tmp_path / "one", "--scene-store", store)
    assert first.rc == 0
    moved = tmp_path / "moved"
    scenes.rename(moved)
    again = synthgen("build", *common, "--backgrounds", moved, "--out", tmp_path / "two", "--scene-store", store)
    assert again.rc == 0 and "reading the scenes from --scene-store" in again.out
    assert_same_sets(tmp_path / "one", tmp_path / "two")
    skipped = [item["path"] for item in manifest_of(tmp_path / "two")["summary"]["skipped_inputs"]]
    assert skipped == [str(moved / "c" / "category0" / "broken.jpg")]
