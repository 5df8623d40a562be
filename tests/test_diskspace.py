"""Room on disk, checked before any work (synthgen.diskspace): everything a command writes on one disk summed,
the scene store's size estimated from its scenes' headers, and a set replaced only once every check passed."""
import os
import shutil
from pathlib import Path

import pytest

from conftest import FAST, make_objects, make_scenes, manifest_of
from synthgen.build import planned_writes
from synthgen.config import BuildConfig
from synthgen.diskspace import Planned, check_room, size_text
from synthgen.errors import OutputError
from synthgen.prepared import store_bytes_at_most
from synthgen.scenes import estimated_store_bytes, stored_bytes
from synthgen.sources import scan_backgrounds


def test_sizes_read_as_people_write_them():
    assert [size_text(n) for n in (11.64e9, 1.38e9, 310e6, 8.4e6, 48e3, 12)] == \
        ["12 GB", "1.4 GB", "310 MB", "8.4 MB", "48 KB", "12 bytes"]


def test_what_lands_on_one_disk_is_summed_and_what_is_replaced_counts_as_free(tmp_path):
    free = shutil.disk_usage(tmp_path).free
    store, out = tmp_path / "store", tmp_path / "sets" / "new"  # neither exists yet: their disk is tmp_path's
    shards = Planned("--out", out, "shards", int(free * 0.6), remedy="use --compression lzf")
    scenes = Planned("--scene-store", store, "decoded scenes", int(free * 0.6), remedy="build without --scene-store")
    check_room([shards])
    check_room([scenes])
    with pytest.raises(OutputError) as refused:
        check_room([shards, scenes])
    said = str(refused.value)
    assert said.startswith(f"--out {out} and --scene-store {store} (one disk): this writes about ")
    assert "in all, but only" in said and said.endswith("use --compression lzf or build without --scene-store")
    check_room([shards, scenes], freed={tmp_path / "sets": int(free * 0.3)})  # a replaced set's room counts


def test_folders_on_different_disks_are_checked_apart(tmp_path):
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on a disk other than the temporary folder's")
    folders = sorted([tmp_path / "set", shm / "store"], key=lambda folder: shutil.disk_usage(folder.parent).free)
    room = shutil.disk_usage(folders[0].parent).free  # the smaller disk's, first: a sum would be checked there
    near_full = [Planned(str(k), folder, "files", int(room * 0.9)) for k, folder in enumerate(folders)]
    check_room(near_full)  # each fits its own disk
    with pytest.raises(OutputError, match=r"^0 .* and 2 .* \(one disk\): .* in all"):
        check_room([*near_full, Planned("2", folders[0].parent / "more", "files", int(room * 0.2))])


def test_the_build_counts_its_object_store_and_a_scene_store_to_make(tmp_path):
    config = BuildConfig(n=1000, shard_size=500, size=161)
    planned = planned_writes(tmp_path, config, [0, 1], workers=2, objects_to_prepare=240,
                             scene_store=tmp_path / "store", scene_bytes=11_000_000)
    assert [(p.flag, p.what, p.nbytes) for p in planned] == [
        ("--out", "shards", 1000 * 161 * 161 * 3),
        ("--out", "decoded objects (while it runs)", store_bytes_at_most(240, 161)),
        ("--scene-store", "decoded scenes (kept for later builds)", 11_000_000)]
    assert 161 * 161 * 4 < store_bytes_at_most(1, 161) < 161 * 161 * 4 * 4 / 3  # the cut-out and its mip levels
    compressed = planned_writes(tmp_path, BuildConfig(n=1000, compression="lzf"), [0], workers=1, objects_to_prepare=0)
    assert compressed == []  # compressed shards' size is not known before; a resumed build keeps its object store


def test_the_scene_store_estimate_is_what_the_store_takes(synthgen, tmp_path):
    scenes = make_scenes(tmp_path / "scenes", n=9)  # landscape and portrait
    (tmp_path / "scenes" / "a" / "notes.jpg").write_bytes(b"not an image")  # counted as a square scene
    store = tmp_path / "store"
    made = synthgen("build", "--n", 10, "--objects", make_objects(tmp_path / "objects"), "--backgrounds", scenes,
                    "--out", tmp_path / "set", "--scene-store", store, *FAST)
    assert made.rc == 0, made.err
    files = scan_backgrounds(scenes)[0]
    assert len(files) == 10
    stored = sum(path.stat().st_size for path in store.glob("part-*.bin"))
    assert estimated_store_bytes(str(scenes), files, 64) == stored + stored_bytes(64, 64, 64)
    assert abs(estimated_store_bytes(str(scenes), files, 64, sample=4) / stored - 1) < 0.25


def test_a_scene_store_that_cannot_fit_with_the_set_is_refused_before_any_work(synthgen, tmp_path):
    scenes = make_scenes(tmp_path / "scenes", n=4)
    common = ["--objects", make_objects(tmp_path / "objects"), "--backgrounds", scenes, "--size", 2048,
              "--no-progress", "--workers", 1, "--scene-store", tmp_path / "store"]
    # scenes of 2048 px on the short side, 15-17 MB each, and shards of 12.6 MB per image: twice the free space
    n = 2 * shutil.disk_usage(tmp_path).free // (2048 * 2048 * 3)
    refused = synthgen("build", "--n", n, "--shard-size", 64, *common, "--out", tmp_path / "set")
    assert refused.rc == 1 and "(one disk): this writes about" in refused.err
    assert "of decoded scenes (kept for later builds)" in refused.err and "build without --scene-store" in refused.err
    assert not (tmp_path / "set").exists() and not (tmp_path / "store").exists()


def test_a_set_is_replaced_only_once_the_new_design_passes_its_checks(synthgen, tmp_path):
    out, objects = tmp_path / "set", ["--objects", make_objects(tmp_path / "objects")]
    assert synthgen("build", "--n", 20, *objects, "--out", out, *FAST).rc == 0
    assert "masks" in manifest_of(out)["summary"]
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    impossible = synthgen("build", "--n", 20, *objects, "--count", "4-8", "--area-range", "0.7-0.7",
                          "--max-occlusion", 0, "--out", out, "--overwrite", *FAST)
    assert impossible.rc == 2 and "no object can appear" in impossible.err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the set is as it was
    assert synthgen("verify", out, "--no-progress").rc == 0
    dots = tmp_path / "dots"
    assert synthgen("dots", "--n", 20, "--out", dots, *FAST).rc == 0
    kept = {p.name: p.read_bytes() for p in dots.iterdir()}
    refused = synthgen("dots", "--n", 20, "--count", "32", "--area-range", "0.5-0.6", "--out", dots, "--overwrite",
                       *FAST)
    assert refused.rc == 2 and "cannot place 32 dots" in refused.err
    assert {p.name: p.read_bytes() for p in dots.iterdir()} == kept
    # a design that passes replaces the set, and nothing of the old one stays in the new manifest
    replaced = synthgen("build", "--n", 20, *objects, "--count", "0", "--out", out, "--overwrite", *FAST)
    assert replaced.rc == 0 and manifest_of(out)["summary"]["count_histogram"] == {"0": 20}
    assert "masks" not in manifest_of(out)["summary"]
