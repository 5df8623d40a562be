"""benchmarks/bench_synthgen.py: its experiment switch reaches the real build, its rows' phases add up, its store
rows read a scene store; benchmarks/bench_sources.py: a row for every step of every source it is given."""
from __future__ import annotations

import json

import synthgen.build
import synthgen.diskspace
import synthgen.parts
from conftest import assert_same_sets, load_benchmark, make_objects, make_scenes
from synthgen.config import BuildConfig, RunOptions

# 2 shards of 128 on 2 workers: one full round, which synthgen renders whole
FULL_ROUND = BuildConfig(n=256, shard_size=128, size=64, seed=5)


def _build(out):
    return synthgen.build.build(FULL_ROUND, RunOptions(workers=2, progress=False), out, log=lambda *_: None)


def test_split_full_rounds_renders_a_full_last_round_in_parts_and_the_set_is_the_same(tmp_path, monkeypatch):
    # the switch once patched a name the build no longer looked up, and the experiment measured the default
    whole = _build(tmp_path / "whole")
    assert whole["render_timeline"]["shards_in_parts"] == 0
    for module in (synthgen.parts, synthgen.diskspace):  # undone after the test
        monkeypatch.setattr(module, "plan_parts", module.plan_parts)
    load_benchmark("bench_synthgen").split_full_rounds()
    split = _build(tmp_path / "split")
    assert split["render_timeline"]["shards_in_parts"] == 2
    assert_same_sets(tmp_path / "whole", tmp_path / "split")


def test_the_phases_of_a_build_add_up_to_its_time(tmp_path):
    summary = _build(tmp_path / "set")
    phases = summary["phase_seconds"]
    assert set(phases) == {"scan_and_checks", "waiting_for_workers", "prepare", "render", "labels_and_other"}
    assert min(phases.values()) >= 0
    assert phases["render"] == summary["render_seconds"] > 0 and phases["prepare"] == summary["prepare_seconds"]
    assert abs(sum(phases.values()) - summary["total_seconds"]) <= 0.003  # each rounded to the millisecond


STEPS = ["background", "object, decode", "object, cut out", "object, probe"]


def test_the_sources_benchmark_times_every_step_of_the_embedded_default():
    rows = load_benchmark("bench_sources").measure(BuildConfig(n=1, size=64), limit=2, repeats=1)
    assert [(source, step, n) for source, step, _, n in rows] == [("embedded default", step, 2) for step in STEPS]
    assert all(ms > 0 for _, _, ms, _ in rows)


def test_the_sources_benchmark_times_every_step_of_the_folders_given(real_objects, real_scenes):
    rows = load_benchmark("bench_sources").measure(BuildConfig(n=1, size=64), limit=2, repeats=1,
                                                   objects_dir=real_objects, backgrounds_dir=real_scenes)
    assert [(source, step, n) for source, step, _, n in rows[4:]] == [
        (real_scenes.name, "background", 2), *((real_objects.name, step, 2) for step in STEPS[1:])]
    assert all(ms > 0 for _, _, ms, _ in rows)


def test_the_store_rows_read_a_scene_store_made_once(tmp_path):
    bench = load_benchmark("bench_synthgen")
    scenes, objects = make_scenes(tmp_path / "scenes", n=4), make_objects(tmp_path / "objects")
    assert bench.cache_rows("warm,store,cold") == [("warm", 512), ("store", 0), ("cold", 0)]
    store = tmp_path / "store"
    assert bench.make_scene_store(store, 1, objects, scenes) > 0
    assert json.loads((store / "scenes.json").read_text())["usable"] == 4
    made = (store / "scenes.json").stat().st_mtime_ns
    summary = bench.run(20, 1, 0, objects, scenes, store)
    assert summary["images_built"] == 20 and (store / "scenes.json").stat().st_mtime_ns == made  # read, not made again
