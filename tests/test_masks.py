"""Masks for what they are: binary, soft-edged or graded; one object per mask, never a wrong count."""
import cv2
import numpy as np
import pytest

from conftest import manifest_of
from synthgen import ShardSet
from synthgen.errors import BadInputError
from synthgen.masks import MaskRule, read_mask
from synthgen.sources import _mask_to_grey, load_cutout

SKIP, LARGEST = MaskRule(0.5, "skip"), MaskRule(0.5, "largest")


def disc(shape=(100, 140), centre=(70, 50), radius=25, value=255) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    cv2.circle(mask, centre, radius, value, -1)
    return mask


def test_binary_and_soft_edged_masks_keep_their_alpha():
    binary = disc()
    alpha, info = read_mask(binary, SKIP, "m")
    assert (info.kind, info.parts, info.specks) == ("binary", 1, 0) and np.array_equal(alpha, binary)
    alpha, info = read_mask(_mask_to_grey(binary // 255), SKIP, "m")  # saved as 0/1
    assert info.kind == "binary" and np.array_equal(alpha, binary)
    assert np.array_equal(read_mask(_mask_to_grey(binary.astype(np.uint16) * 257), SKIP, "m")[0], binary)  # 16-bit
    for sigma in (1.0, 8.0):  # anti-aliasing, and a wide feather: ramps, not plateaus
        soft = cv2.GaussianBlur(binary, (0, 0), sigma)
        alpha, info = read_mask(soft, SKIP, "m")
        assert info.kind == "soft" and info.parts == 1
        assert np.array_equal(alpha, _mask_to_grey(soft))  # soft edges are kept as alpha (maximum made opaque)
        assert np.count_nonzero((alpha > 0) & (alpha < 255)) > 100
    dim = (binary // 255 * 200).astype(np.uint8)  # a binary mask whose foreground is 200, not 255
    assert np.array_equal(read_mask(dim, SKIP, "m")[0], binary)


def test_graded_masks_are_cut_at_the_threshold_and_counted():
    # PASCAL-S style: three people marked by 100%, 80% and 60% of annotators, a region by 25%
    graded = disc(centre=(25, 50), radius=17) | disc(centre=(70, 50), radius=15, value=204)
    graded = np.maximum(graded, disc(centre=(115, 50), radius=15, value=153))
    cv2.rectangle(graded, (5, 85), (60, 97), 64, -1)
    with pytest.raises(BadInputError, match="shows 3 separate objects.*graded mask.*--mask-parts largest"):
        read_mask(graded, SKIP, "people.png")
    alpha, info = read_mask(graded, LARGEST, "people.png")
    assert (info.kind, info.parts) == ("graded", 3) and info.levels == (64, 153, 204)
    assert set(np.unique(alpha)) == {0, 255}  # cut, never see-through
    assert np.array_equal(alpha > 0, disc(centre=(25, 50), radius=17) > 0)  # the largest part only
    # a stricter threshold keeps only the object everyone marked: one object, nothing skipped
    alpha, info = read_mask(graded, MaskRule(0.9, "skip"), "people.png")
    assert info.parts == 1 and np.array_equal(alpha > 0, disc(centre=(25, 50), radius=17) > 0)


def test_parts_touching_at_a_corner_are_one_object_on_either_path():
    # Two squares that meet only at a corner are one 8-connected part. One-part masks take a shortcut past
    # the distance transform whose labels define the parts; both must draw the same line.
    touching = np.zeros((80, 80), np.uint8)
    touching[10:40, 10:40] = 255
    touching[40:70, 40:70] = 255
    alpha, info = read_mask(touching, SKIP, "m")
    assert (info.parts, info.specks) == (1, 0) and np.array_equal(alpha, touching)
    apart = touching.copy()
    apart[40:70, 40:70], apart[41:71, 41:71] = 0, 255  # one pixel apart: two objects, as the full path says
    for mask in (apart, cv2.GaussianBlur(apart, (0, 0), 1.5)):  # soft edges join the two below the threshold
        with pytest.raises(BadInputError, match="shows 2 separate objects"):
            read_mask(mask, SKIP, "m")
    soft = cv2.GaussianBlur(touching, (0, 0), 1.5)
    alpha, info = read_mask(soft, SKIP, "m")
    assert (info.kind, info.parts, info.specks) == ("soft", 1, 0) and np.array_equal(alpha, soft)
    _, labels = cv2.distanceTransformWithLabels((soft < 128).astype(np.uint8), cv2.DIST_L2, 5,
                                                labelType=cv2.DIST_LABEL_CCOMP)
    assert np.unique(labels[soft >= 128]).size == 1  # the full path's own parts: one


def test_specks_are_removed_and_empty_masks_refused():
    mask = disc()
    for x in (5, 130):
        mask[5:7, x:x + 2] = 255  # annotation noise
    alpha, info = read_mask(mask, SKIP, "m")
    assert (info.parts, info.specks) == (1, 2) and np.array_equal(alpha, disc())
    with pytest.raises(BadInputError, match="empty"):
        read_mask(np.zeros((50, 50), np.uint8), SKIP, "m")
    faint = disc(radius=2)  # 13 pixels: no usable object
    with pytest.raises(BadInputError, match="empty"):
        read_mask(faint, SKIP, "m")


def test_real_sample_masks_are_single_binary_objects(real_objects):
    for mask_path in sorted(real_objects.glob("*.png")):
        cutout = load_cutout(mask_path.with_suffix(".jpg"), mask_path, 161)
        assert (cutout.mask.kind, cutout.mask.parts, cutout.mask.specks) == ("binary", 1, 0), mask_path.name


def make_graded_objects(folder):
    """White objects whose graded masks show k = 1, 2 or 3 objects, plus a faint region below the threshold."""
    folder.mkdir()
    levels = (255, 200, 150)
    for k in (1, 2, 3):
        for copy in range(3):
            mask = np.zeros((120, 160), np.uint8)
            for j, x in enumerate(np.linspace(25, 135, k)):
                cv2.circle(mask, (int(x), 60), 14, levels[j], -1)
            cv2.rectangle(mask, (5, 100), (40, 115), 70, -1)
            cv2.imwrite(str(folder / f"k{k}-{copy}.jpg"), np.full((120, 160, 3), 255, np.uint8))
            cv2.imwrite(str(folder / f"k{k}-{copy}.png"), mask)
    return folder


def blobs(image) -> int:
    """Objects a viewer sees: bright regions (4-connected: touching soft edges do not merge two objects)."""
    return cv2.connectedComponents((image[..., 0] > 128).astype(np.uint8), connectivity=4)[0] - 1


@pytest.mark.parametrize("parts, used, kept_largest", [("skip", 3, 0), ("largest", 9, 6)])
def test_graded_multi_object_masks_never_give_a_wrong_count(synthgen, tmp_path, parts, used, kept_largest):
    objects = make_graded_objects(tmp_path / "objects")
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    cv2.imwrite(str(scenes / "black.png"), np.zeros((200, 200, 3), np.uint8))
    out = tmp_path / "set"
    result = synthgen("build", "--n", 60, "--count", "1-3", "--size", 128, "--objects", objects, "--backgrounds",
                      scenes, "--area-range", "0.02-0.06", "--max-occlusion", 0, "--rotation", 0, "--color-shift", 0,
                      "--mask-parts", parts, "--workers", 1, "--no-progress", "--out", out)
    assert result.rc == 0, result.err
    manifest = manifest_of(out)
    assert manifest["config"]["mask_threshold"] == 0.5 and manifest["config"]["mask_parts"] == parts
    masks = manifest["summary"]["masks"]
    assert masks["graded"] == used and masks["several_objects_largest_kept"] == kept_largest
    assert len(manifest["mask_notes"]) == used  # every graded mask is noted, with what was done to it
    skipped = [s["path"] for s in manifest["summary"]["skipped_inputs"]]
    assert len(skipped) == 9 - used and all("/k1-" not in path for path in skipped)
    with ShardSet(out) as shards:
        for i in range(len(shards)):
            image, labels = shards[i]
            assert blobs(image) == labels["count"], i  # the label is what a viewer counts
            assert image.max() == 255  # graded objects are pasted opaque, not see-through
