"""The prepared object store: each object decoded once, read back identically, reused on resume."""
import numpy as np
import pytest

from conftest import make_objects
from synthgen.errors import BadInputError
from synthgen.compositor import Eligibility
from synthgen.config import BuildConfig
from synthgen.prepared import PreparedObjects, part_size, prepare_objects, store_dir
from synthgen.sources import FolderObjects, scan_objects


def run_here(calls):
    return [function(*args) for function, args in calls]


def everywhere(k, cutout):  # every object may appear everywhere (what the store records is tested below)
    return True


def test_store_round_trip_reuse_and_bad_inputs(tmp_path):
    folder = make_objects(tmp_path / "objects", n=5)
    (folder / "obj001.jpg").write_bytes(b"\xff\xd8 corrupt")
    objects = FolderObjects(folder, scan_objects(folder)[0])
    out = tmp_path / "out"
    first = prepare_objects(objects, list(range(5)), 64, out, "skip", everywhere, run_here)
    usable, bad = first.ids, first.bad
    assert usable == [0, 2, 3, 4]
    assert [info["kind"] for _, info in first.masks] == ["binary"] * 4 and first.masks[0][0].endswith("obj000.png")
    assert [(b.path.rsplit("/", 1)[1], b.reason.split(" (")[0]) for b in bad] == [("obj001.jpg", "cannot be decoded")]

    store = PreparedObjects(store_dir(out, 64), len(objects))
    for k in usable:
        assert np.array_equal(store.load(k, 64).levels[0], objects.load(k, 64).levels[0])
    with pytest.raises(BadInputError, match="not in the prepared store"):
        store.load(1, 64)

    # A resumed build finds the complete store: nothing is decoded again, the same inputs are reported.
    calls = []
    again = prepare_objects(objects, list(range(5)), 64, out, "skip", everywhere,
                            lambda c: calls.extend(c) or run_here(c))
    assert calls == [] and again.ids == usable and [b.path for b in again.bad] == [b.path for b in bad]
    assert again.masks == first.masks

    # An interrupted preparation (no index yet) is redone from scratch.
    (store_dir(out, 64) / "index.npz").unlink()
    redone = prepare_objects(objects, list(range(5)), 64, out, "skip", everywhere,
                             lambda c: calls.extend(c) or run_here(c))
    assert len(calls) == 1 and redone.ids == usable


def test_fail_mode_stops_on_the_first_bad_object(tmp_path):
    folder = make_objects(tmp_path / "objects", n=3)
    (folder / "obj002.png").write_bytes(b"\x89PNG truncated")
    objects = FolderObjects(folder, scan_objects(folder)[0])
    with pytest.raises(BadInputError, match="obj002.png"):
        prepare_objects(objects, [0, 1, 2], 64, tmp_path / "out", "fail", everywhere, run_here)


def test_the_store_records_which_objects_can_appear_everywhere(tmp_path):
    folder = make_objects(tmp_path / "objects", n=4)
    objects = FolderObjects(folder, scan_objects(folder)[0])
    # at the top of this range, one object covers 90% of a 64-pixel canvas: the ellipses cannot
    config = BuildConfig(n=1, size=64, counts=(1,), area_range=(0.5, 0.9))
    store = prepare_objects(objects, list(range(4)), 64, tmp_path / "out", "skip", Eligibility(config), run_here)
    assert store.eligible == {k: False for k in range(4)}
    assert PreparedObjects(store_dir(tmp_path / "out", 64), 4).eligible == store.eligible
    roomy = BuildConfig(n=1, size=64, counts=(1,), area_range=(0.05, 0.2))
    assert all(prepare_objects(objects, list(range(4)), 64, tmp_path / "roomy", "skip", Eligibility(roomy),
                               run_here).eligible.values())


def test_objects_are_split_in_parts_for_every_worker_and_read_back_the_same(tmp_path):
    assert [part_size(n, w) for n, w in ((10_000, 16), (10_000, 1), (240, 2), (18, 2))] == [157, 256, 30, 16]
    folder = make_objects(tmp_path / "objects", n=40)
    objects = FolderObjects(folder, scan_objects(folder)[0])
    calls = []
    split = prepare_objects(objects, list(range(40)), 64, tmp_path / "split", "skip", everywhere,
                            lambda c: calls.extend(c) or run_here(c), workers=2)
    whole = prepare_objects(objects, list(range(40)), 64, tmp_path / "whole", "skip", everywhere, run_here)
    assert len(calls) == 3 and split.ids == whole.ids == list(range(40))  # parts of 16, 16 and 8
    split_store, whole_store = (PreparedObjects(store_dir(tmp_path / name, 64), 40) for name in ("split", "whole"))
    for k in range(40):
        a, b = split_store.load(k, 64), whole_store.load(k, 64)
        assert all(np.array_equal(x, y) for x, y in zip(a.levels, b.levels)) and a.area == b.area
