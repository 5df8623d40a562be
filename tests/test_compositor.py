"""The compositor on real sources: area control, occlusion and canvas constraints, determinism."""
import numpy as np
import pytest

from conftest import make_objects
from synthgen.compositor import Compositor
from synthgen.config import BuildConfig
from synthgen.errors import BadInputError
from synthgen.procedural import ProceduralBackgrounds, ProceduralObjects
from synthgen.sources import Cutout, FolderObjects, scan_objects


def compositor(**overrides):
    config = BuildConfig(**{"n": 1, "size": 96, **overrides})
    objects = ProceduralObjects()
    return Compositor(config, objects, ProceduralBackgrounds(), range(len(objects)))


def scenes(comp, n=120, counts=(1, 2, 3, 4)):
    return [comp.render(i, counts[i % len(counts)]) for i in range(n)]


def test_cumulative_area_follows_the_target_without_occlusion():
    comp = compositor(max_occlusion=0.0)
    for scene in scenes(comp):
        assert scene.visible_area == pytest.approx(scene.full_area, abs=1e-6)  # nothing hidden
        # object sizes are whole pixels, so the area lands within a few percent of the target
        assert scene.full_area == pytest.approx(scene.target_area, rel=0.06)
        assert len(scene.objects) == scene.count


def test_occlusion_budget_is_respected_and_used():
    comp = compositor(max_occlusion=0.3, area_range=(0.2, 0.4))
    hidden = [1 - o.visible_area / o.full_area for s in scenes(comp) for o in s.objects]
    assert max(hidden) <= 0.3 + 1e-6
    assert sum(h > 0.01 for h in hidden) > 10  # the constraint is active, not vacuous


def test_objects_stay_inside_unless_allowed_out():
    inside = compositor()
    for scene in scenes(inside, 60):
        for obj in scene.objects:
            assert obj.visible_area == pytest.approx(obj.full_area, rel=0.2 + 1e-6)
            x0, y0, x1, y1 = obj.box
            assert 0 <= x0 < x1 <= 96 and 0 <= y0 < y1 <= 96
    outside = compositor(max_outside=0.4, max_occlusion=0.0)
    fractions = [o.visible_area / o.full_area for s in scenes(outside) for o in s.objects]
    assert min(fractions) >= 0.6 - 1e-6
    assert min(fractions) < 0.95  # some objects do cross the edge


def test_same_object_and_pool_restriction():
    config = BuildConfig(n=1, size=96, same_object=True, area_range=(0.04, 0.15))  # all three fit
    comp = Compositor(config, ProceduralObjects(), ProceduralBackgrounds(), [3, 17, 42])
    used = set()
    for scene in scenes(comp, 60):
        ids = {o.source_id for o in scene.objects}
        assert len(ids) == 1
        used |= ids
    assert used == {3, 17, 42}


def test_rendering_is_a_pure_function_of_seed_and_index():
    a, b = compositor(), compositor()
    for i in (0, 5, 99):
        first, second = a.render(i, 3), b.render(i, 3)
        assert np.array_equal(first.image, second.image)
        assert first.objects == second.objects and first.image_seed == second.image_seed
    assert not np.array_equal(a.render(7, 3).image, compositor(seed=1).render(7, 3).image)


def test_bad_objects_are_redrawn_and_reported_once(tmp_path):
    make_objects(tmp_path, n=4)
    (tmp_path / "obj001.jpg").write_bytes(b"\xff\xd8 corrupt")
    pairs, _, _ = scan_objects(tmp_path)
    config = BuildConfig(n=1, size=96)
    comp = Compositor(config, FolderObjects(tmp_path, pairs), ProceduralBackgrounds(), range(4))
    rendered = scenes(comp, 40)
    assert all(o.source_id != 1 for s in rendered for o in s.objects)
    assert [s.path.split("/")[-1] for s in comp.skipped] == ["obj001.jpg"]
    strict = Compositor(config, FolderObjects(tmp_path, pairs), ProceduralBackgrounds(), range(4), on_bad_input="fail")
    with pytest.raises(BadInputError, match="obj001.jpg"):
        scenes(strict, 40)


class WhiteObjects:
    """A source of one pure-white disc with a wide soft edge (graded alpha)."""

    kind = "test"

    def __len__(self):
        return 1

    def load(self, k, max_side):
        yy, xx = np.mgrid[:80, :80]
        alpha = np.clip((36 - np.hypot(yy - 40, xx - 40)) / 12, 0, 1)
        rgba = np.dstack([np.full((80, 80, 3), 255) * alpha[..., None], alpha * 255]).round().astype(np.uint8)
        return Cutout.from_rgba(rgba)


class WhiteBackgrounds:
    kind = "test"

    def __len__(self):
        return 1

    def load(self, k, size):
        return np.full((size, size, 3), 255, np.uint8)


def test_soft_edges_are_blended_without_fringes():
    # White on white must stay white: resampling straight (not premultiplied) colour would
    # darken the soft edge, and any colour shift must keep white white at full brightness.
    config = BuildConfig(n=1, size=96, color_shift=(0.0, 0.3, 0.1), rotation=10)
    comp = Compositor(config, WhiteObjects(), WhiteBackgrounds(), [0])
    for scene in scenes(comp, 20):
        assert scene.image.min() >= 254


class SquareNoiseBackground:
    """One square textured background, returned from a cache as the real sources do; its crop is
    then the whole cached array (the risky case)."""

    kind = "test"

    def __init__(self):
        self.cached = np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)

    def __len__(self):
        return 1

    def load(self, k, size):
        return self.cached


def test_blending_never_alters_the_cached_background():
    config = BuildConfig(n=1, size=96)
    reused = Compositor(config, ProceduralObjects(), SquareNoiseBackground(), range(240))
    images = [reused.render(i, 4).image for i in range(12)]
    for i in (0, 6, 11):
        fresh = Compositor(config, ProceduralObjects(), SquareNoiseBackground(), range(240))
        assert np.array_equal(fresh.render(i, 4).image, images[i])
