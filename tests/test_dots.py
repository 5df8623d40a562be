"""`synthgen dots`: Stoianov & Zorzi's dot arrays; counts, areas and separation hold exactly."""
import json
import re
import shlex
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import manifest_of, read_set
from synthgen import ShardSet
from synthgen.dots import check_feasible, convex_hull_area, levels_of
from synthgen.stats import HULL_FROM_COUNT
from common.settings import from_args
from synthgen.cli import make_parser
from synthgen.config import DotConfig, DotsCommand

FAST = ["--no-progress", "--workers", "1"]


@pytest.fixture(scope="module")
def dot_set(tmp_path_factory):
    from synthgen.cli import main

    out = tmp_path_factory.mktemp("dots") / "set"
    assert main(["dots", "--n", "1024", "--count", "1-32", "--area-levels", "4", "--shard-size", "400",
                 "--out", str(out), *FAST]) == 0
    return out


def test_counts_areas_and_separation_hold_exactly(dot_set):
    data = read_set(dot_set)
    offsets = np.concatenate([[0], np.cumsum(data["count"])])
    for i in range(len(data["count"])):
        image = data["images"][i]
        assert set(np.unique(image)) <= {0, 255} and np.array_equal(image[..., 0], image[..., 2])
        white = (image[..., 0] > 0).astype(np.uint8)
        # every dot is its own 8-connected component: at least one pixel of background between any two
        assert cv2.connectedComponents(white, connectivity=8)[0] - 1 == data["count"][i]
        assert white.sum() == data["visible_area"][i] == data["full_area"][i]
        rows = slice(offsets[i], offsets[i + 1])
        assert data["objects/visible_area"][rows].sum() == white.sum()
        for (x0, y0, x1, y1), area in zip(data["objects/box"][rows], data["objects/visible_area"][rows]):
            assert white[y0:y1, x0:x1].sum() >= area  # each box holds its whole dot
        assert data["field_area"][i] == pytest.approx(convex_hull_area(white))


def test_numerosity_is_crossed_with_the_area_levels(dot_set):
    data = read_set(dot_set)
    config = DotConfig(n=1024, counts=tuple(range(1, 33)), area_levels=4)
    levels = levels_of(config)
    level = np.searchsorted(levels, data["target_area"] - 1e-3)
    assert np.allclose(levels[level], data["target_area"], rtol=1e-5)
    cells = np.zeros((32, 4), int)
    np.add.at(cells, (data["count"] - 1, level), 1)
    assert (cells == 8).all()  # 1024 images = 8 of each of the 32 x 4 cells
    log_n, log_a = np.log(data["count"]), np.log(data["target_area"])
    assert abs(np.corrcoef(log_n, log_a)[0, 1]) < 1e-9  # the design's area is independent of N
    assert abs(np.corrcoef(log_n, np.log(data["visible_area"]))[0, 1]) < 0.05  # and so is the drawn one
    # the field is one fixed disc: every dot lies in it, and the hull is never larger
    assert data["field_area"].max() <= 0.8 * 32 * 32 * 1.1
    with ShardSet(dot_set) as shards:
        assert shards.kind == "dots" and shards.labels["field_area"].shape == (1024,)
    assert manifest_of(dot_set)["levels"] == pytest.approx(levels.tolist())


def test_item_size_control_and_a_varied_field(synthgen, tmp_path):
    out = tmp_path / "items"
    result = synthgen("dots", "--n", 256, "--count", "1-16", "--area-levels", 4, "--control", "item-size",
                      "--field-range", "0.4-0.9", "--out", out, *FAST)
    assert result.rc == 0, result.err
    data = read_set(out)
    mean_item = data["target_area"] / data["count"]
    assert np.unique(np.round(mean_item, 6)).size == 4  # the mean dot size takes the levels, whatever N
    assert np.corrcoef(np.log(data["count"]), np.log(data["target_area"]))[0, 1] > 0.7  # area grows with N
    assert data["field_area"].std() > 0


def test_dots_are_deterministic_extendable_and_verified(synthgen, dot_set, tmp_path):
    two = tmp_path / "two"
    # 3 shards on 2 workers: the last one rendered in parts (synthgen.parts), the same shards
    assert synthgen("dots", "--n", 1024, "--count", "1-32", "--area-levels", 4, "--shard-size", 400, "--out", two,
                    "--no-progress", "--workers", 2).rc == 0
    assert [s["content_sha256"] for s in manifest_of(two)["shards"]] == \
           [s["content_sha256"] for s in manifest_of(dot_set)["shards"]]
    assert manifest_of(two)["summary"]["shards_in_parts"] == 1 and not (two / "prepared").exists()
    assert f"OpenCV {cv2.__version__}" in manifest_of(two)["summary"]["machine"]  # it drew the dots
    small = tmp_path / "small"
    assert synthgen("dots", "--n", 100, "--count", "1-32", "--area-levels", 4, "--out", small, *FAST).rc == 0
    assert np.array_equal(read_set(small)["images"], read_set(dot_set)["images"][:100])
    assert synthgen("verify", dot_set, "--no-progress").rc == 0


def test_a_design_at_the_edge_is_judged_by_its_design_not_its_seed(synthgen, tmp_path):
    # At --field-range 0.35-0.9 the most crowded arrays in the smallest field come out about 1 try in 50: an
    # earlier probe passed seeds 2 and 3, whose builds then stopped at images 11068 and 10936.
    edge = ["--n", 25600, "--field-range", "0.35-0.9", "--area-range", "0.03-0.12", *FAST]
    said = [synthgen("dots", *edge, "--seed", seed, "--out", tmp_path / f"s{seed}") for seed in range(4)]
    assert all(r.rc == 2 for r in said) and len({r.err for r in said}) == 1 and not list(tmp_path.iterdir())
    assert "cannot place 32 dots" in said[0].err and "Raise the bottom of --field-range" in said[0].err
    assert re.search(r"came out in \d of \d+ tries", said[0].err)  # hopeless: a few tries decide it
    # the varied field of `make dots` and the README passes, for any seed
    for seed in range(4):
        check_feasible(DotConfig(n=25600, field_range=(0.4, 0.9), area_range=(0.03, 0.12), seed=seed))


def test_an_impossible_dot_design_is_refused_before_any_work(synthgen, tmp_path):
    out = tmp_path / "never"
    result = synthgen("dots", "--n", 10, "--count", "32", "--area-range", "0.5-0.6", "--out", out, *FAST)
    assert result.rc == 2 and "cannot place 32 dots" in result.err and not out.exists()
    counts = synthgen("dots", "--n", 10, "--count", "0-4", "--out", out, *FAST)
    assert counts.rc == 2 and "counts start at 1" in counts.err
    # the range of the other control went unread, while the user believed it shaped the set
    unread = synthgen("dots", "--n", 10, "--item-range", "2-9", "--out", out, *FAST)
    assert unread.rc == 2 and "--item-range is not used with --control total-area" in unread.err
    unread = synthgen("dots", "--n", 10, "--control", "item-size", "--area-range", "0.05-0.1", "--out", out, *FAST)
    assert unread.rc == 2 and "--area-range is not used with --control item-size" in unread.err
    assert not out.exists()


def test_dots_drawn_much_larger_than_designed_are_refused(synthgen, tmp_path):
    # at 16 px, 32 dots share 3% of the canvas: 0.24 px each, drawn as one pixel, and the drawn cumulative area
    # grew with N (corr(log N, log A) +0.42 where the design holds it at 0)
    out = tmp_path / "tiny"
    result = synthgen("dots", "--n", 10, "--size", 16, "--out", out, *FAST)
    assert result.rc == 2 and "the smallest dots (32 dots at the lowest level) would cover 0.24 px" in result.err
    assert "Build at --size 29 or more" in result.err and not out.exists()
    items = synthgen("dots", "--n", 10, "--control", "item-size", "--item-range", "0.5-8", "--out", out, *FAST)
    assert items.rc == 2 and "Raise the bottom of --item-range to 0.75" in items.err
    # the remedies it names do: the size it gives, and the defaults at 32 px (0.96 px), whose areas hold
    assert synthgen("dots", "--n", 256, "--size", 29, "--out", out, *FAST).rc == 0
    corr = manifest_of(out)["summary"]["corr_log_count_log_area"]
    assert abs(corr["visible"]) < 0.1


def test_the_summary_says_how_far_the_hull_goes_with_number(dot_set, synthgen, tmp_path):
    """A fixed field's hull grows with N; a field drawn from a range takes it partly apart. The build and inspect
    report both measures, over the arrays of 4 dots or more, as the comparison's references use them."""
    data = read_set(dot_set)
    keep = data["count"] >= HULL_FROM_COUNT
    count, log_hull = data["count"][keep], np.log2(data["field_area"][keep].astype(np.float64))
    within = np.concatenate([log_hull[count == n] - log_hull[count == n].mean() for n in np.unique(count)])
    fixed = manifest_of(dot_set)["summary"]["field_area"]
    assert fixed["from_count"] == HULL_FROM_COUNT
    assert fixed["corr_log_count"] == pytest.approx(np.corrcoef(np.log(count), log_hull)[0, 1], rel=1e-9)
    assert fixed["sd_log2_at_fixed_count"] == pytest.approx(np.sqrt(np.mean(within ** 2)), rel=1e-9)
    varied = tmp_path / "varied"
    result = synthgen("dots", "--n", 1024, "--count", "1-32", "--area-levels", 4, "--field-range", "0.4-0.9",
                      "--area-range", "0.03-0.12", "--out", varied, *FAST)
    assert result.rc == 0 and "corr(log N, log hull)" in result.out
    spread = manifest_of(varied)["summary"]["field_area"]
    assert fixed["corr_log_count"] > 0.75 > spread["corr_log_count"] > 0.4
    assert spread["sd_log2_at_fixed_count"] > 1.4 * fixed["sd_log2_at_fixed_count"]
    inspected = synthgen("inspect", varied, "--no-progress")
    assert inspected.rc == 0 and json.loads((varied / "inspect" / "inspect.json").read_text())["summary"][
        "field_area"] == spread


def test_every_dot_design_the_readme_shows_builds(synthgen, tmp_path):
    """The README's `synthgen dots` commands, at a small --n: a design there that the command refuses (its example
    of a varying field once asked for 32 dots of 8 px in 41% of a 32x32 canvas) sends users to a dead end."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    commands = [shlex.split(line, comments=True)[2:] for line in re.findall(r"^synthgen dots --.*$", readme, re.M)]
    designs = {tuple(args) for args in (drop_options(c, {"--n", "--out"}) for c in commands)}
    assert len(designs) >= 3  # S&Z's default (train and test), and at least one whose field varies
    assert any("--field-range" in design for design in designs)
    for k, design in enumerate(sorted(designs)):
        result = synthgen("dots", *design, "--n", 64, "--out", tmp_path / f"set{k}", *FAST)
        assert result.rc == 0, f"synthgen dots {' '.join(design)}: {result.err}"
    # and each passes the placement probe at the --n it is shown with (the probe is stricter for larger sets)
    for args in commands:
        given = vars(make_parser().parse_args(["dots", *args]))
        del given["command"]
        check_feasible(from_args(DotsCommand, given).config)


def drop_options(args: list[str], options: set[str]) -> list[str]:
    """`args` without the named options, each with its one value."""
    dropped = {i + 1 for i, arg in enumerate(args) if arg in options}
    return [arg for i, arg in enumerate(args) if arg not in options and i not in dropped]
