"""A partial last round of shards rendered in parts (synthgen.parts): the plan, the part files, the claim,
and whole builds through the real command line that use them."""
import json
import shutil

import numpy as np
import pytest

from conftest import assert_same_sets, manifest_of
from synthgen import parts as parts_module
from synthgen.build import planned_writes
from synthgen.config import BuildConfig
from synthgen.diskspace import check_room
from synthgen.errors import OutputError
from synthgen.parts import MIN_PART_IMAGES, PARTS_PER_SHARD, Part, claim_if_complete, load_parts, part_path, \
    plan_parts, save_part
from synthgen.shards import ShardArrays

# 3 shards of 128 on 2 workers: the last round is one shard, rendered in 4 parts of 32 images
PARTIAL_ROUND = ["--n", 384, "--shard-size", 128, "--seed", 4, "--size", 64, "--no-progress"]


def _rows_of(parts: list[Part], n: int) -> list[int]:
    rows = [row for part in parts for row in range(part.first_row, part.first_row + part.n_rows)]
    assert rows == list(range(n))  # every row once, in order
    return [part.n_rows for part in parts]


def test_only_a_partial_last_round_is_split_and_its_parts_cover_each_shard():
    thousand = {s: 1000 for s in range(80)}
    assert plan_parts(list(range(80)), thousand, 16) == (list(range(80)), {})  # full rounds stay whole
    assert plan_parts(list(range(3)), thousand, 1) == ([0, 1, 2], {})  # one worker: nothing to share
    whole, split = plan_parts(list(range(40)), thousand, 16)  # 2.5 rounds: the last 8 shards in parts
    assert whole == list(range(32)) and sorted(split) == list(range(32, 40))
    assert all(_rows_of(parts, 1000) == [250] * PARTS_PER_SHARD for parts in split.values())
    whole, split = plan_parts([0], {0: 1000}, 16)  # one shard on 16 workers: a part for each
    assert whole == [] and len(_rows_of(split[0], 1000)) == 16
    whole, split = plan_parts([5, 9], {5: 1000, 9: 100}, 16)  # a short last shard: parts no smaller than the floor
    assert whole == [] and min(_rows_of(split[9], 100)) >= MIN_PART_IMAGES and len(split[9]) == 3
    assert plan_parts([0, 1, 2], {0: 100, 1: 100, 2: 40}, 2) == ([0, 1, 2], {})  # too small to split


def _shard_arrays(counts, first: int, rng) -> dict:
    shard = ShardArrays(8)
    for row, count in enumerate(counts):
        objects = [(int(rng.integers(100)), (1, 2, 5, 7), float(rng.random()), float(rng.random()))
                   for _ in range(count)]
        shard.add(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), count=count, index=first + row,
                  image_seed=int(rng.integers(2**63)), target_area=float(rng.random()), full_area=1.5,
                  visible_area=1.25, background_id=first + row, objects=objects)
    return shard.arrays()


def test_parts_saved_and_joined_give_the_shard_arrays_exactly(tmp_path):
    counts = [0, 0, 2, 1, 0, 3, 0, 0, 1, 4]  # the first part has no objects at all
    parts = [Part(7, 0, 0, 2), Part(7, 1, 2, 4), Part(7, 2, 6, 4)]
    whole = _shard_arrays(counts, 70, np.random.default_rng(1))
    rng = np.random.default_rng(1)  # the same draws, part by part
    for part in parts:
        save_part(tmp_path, part, _shard_arrays(counts[part.first_row:part.first_row + part.n_rows],
                                                70 + part.first_row, rng))
    joined = load_parts(tmp_path, parts)
    assert joined.keys() == whole.keys()
    for name, array in whole.items():
        assert joined[name].dtype == array.dtype and np.array_equal(joined[name], array), name
    assert joined["object_offset"].tolist() == [0, 0, 0, 2, 3, 3, 6, 6, 6, 7, 11]


def test_the_shard_is_claimed_once_and_only_when_every_part_is_in(tmp_path):
    parts = [Part(3, i, 2 * i, 2) for i in range(3)]
    arrays = _shard_arrays([1, 0], 0, np.random.default_rng(0))
    for part in parts[:2]:
        save_part(tmp_path, part, arrays)
    assert not claim_if_complete(tmp_path, parts)
    save_part(tmp_path, parts[2], arrays)
    assert claim_if_complete(tmp_path, parts)
    assert not claim_if_complete(tmp_path, parts)  # a second worker that saw the last part land: not it


def test_a_partial_last_round_in_parts_gives_the_same_set(synthgen, tmp_path):
    assert synthgen("build", *PARTIAL_ROUND, "--out", tmp_path / "one", "--workers", 1).rc == 0
    result = synthgen("build", *PARTIAL_ROUND, "--out", tmp_path / "two", "--workers", 2)
    assert result.rc == 0, result.err
    assert_same_sets(tmp_path / "one", tmp_path / "two")
    summary = manifest_of(tmp_path / "two")["summary"]
    assert summary["render_timeline"]["shards_in_parts"] == 1 and summary["images_built"] == 384
    assert manifest_of(tmp_path / "one")["summary"]["render_timeline"]["shards_in_parts"] == 0
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == [
        "manifest.json", "shard-00000.h5", "shard-00001.h5", "shard-00002.h5", "sources.json"]  # no parts left
    assert synthgen("verify", tmp_path / "two", "--no-progress").rc == 0


def test_a_shard_no_worker_claimed_is_written_after_the_render(synthgen, tmp_path, monkeypatch):
    # A shared file system that shows a worker the other workers' part files late: no worker sees its
    # shard complete. Threads, so that the workers run the code patched here.
    asked = []
    monkeypatch.setattr(parts_module, "claim_if_complete", lambda out_dir, parts: asked.append(parts) and False)
    assert synthgen("build", *PARTIAL_ROUND, "--out", tmp_path / "one", "--workers", 1).rc == 0
    result = synthgen("build", *PARTIAL_ROUND, "--out", tmp_path / "two", "--workers", 2, "--backend", "threading")
    assert result.rc == 0, result.err
    assert_same_sets(tmp_path / "one", tmp_path / "two")
    assert manifest_of(tmp_path / "two")["summary"]["render_timeline"]["shards_in_parts"] == 1
    assert len(asked) == 4  # every part's worker asked, none claimed: the shard was written after the render


def test_parts_left_by_an_interrupted_run_are_not_used(synthgen, tmp_path):
    assert synthgen("build", *PARTIAL_ROUND, "--out", tmp_path / "one", "--workers", 1).rc == 0
    out = tmp_path / "two"
    assert synthgen("build", *PARTIAL_ROUND, "--out", out, "--workers", 2).rc == 0
    # Stopped before its last shard was written, with that shard's parts left from a run that split it
    # otherwise: were they used, the first part rendered now would find its shard "complete".
    manifest = manifest_of(out)
    manifest["complete"] = False
    (out / "manifest.json").write_text(json.dumps(manifest))
    (out / "shard-00002.h5").unlink()
    stale = _shard_arrays([0] * 32, 0, np.random.default_rng(2))
    for i in range(4):
        save_part(out, Part(2, i, 32 * i, 32), stale)
    assert part_path(out, Part(2, 3, 96, 32)).exists()
    result = synthgen("build", *PARTIAL_ROUND, "--out", out, "--workers", 2)
    assert result.rc == 0, result.err
    assert manifest_of(out)["summary"]["images_built"] == 128
    assert_same_sets(tmp_path / "one", out)
    assert synthgen("verify", out, "--no-progress").rc == 0


def test_the_disk_check_counts_the_parts_of_a_partial_last_round(synthgen, tmp_path):
    free = shutil.disk_usage(tmp_path).free
    image = 64 * 64 * 3
    shards = 2 * free // (128 * image)  # twice what the disk holds: refused before any work
    result = synthgen("build", "--n", shards * 128, "--shard-size", 128, "--size", 64, "--no-progress",
                      "--workers", 2, "--out", tmp_path / "big")
    assert result.rc != 0 and "of shards" in result.err and not (tmp_path / "big").exists()

    def check(config: BuildConfig, workers: int) -> None:
        check_room(planned_writes(tmp_path, config, [0, 1, 2], workers, objects_to_prepare=0))

    # The parts of the last round are counted besides: 3 shards on 2 workers need 4 shards of room.
    check(BuildConfig(n=384, shard_size=128, size=64), workers=2)
    quarter = int(free / image / 4 * 1.1)  # 4 such shards are 10% over what is free, 3 fit with 17% to spare
    three = BuildConfig(n=3 * quarter, shard_size=quarter, size=64)
    with pytest.raises(OutputError, match="of shards"):
        check(three, workers=2)
    check(three, workers=3)  # a full round: no parts, 3 shards fit
