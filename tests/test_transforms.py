"""Object transforms: sampled parameters, and operations that equal albumentations' own."""
import os

import cv2
import numpy as np
import pytest

from synthgen.sources import Cutout
from synthgen.transforms import (BRIGHTNESS, HUE, SATURATION, ObjectParams, ObjectTransform, adjust_brightness,
                                 adjust_hue, adjust_saturation, rotate_to_fit)

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network check on import
import albumentations as A  # noqa: E402
from albumentations.augmentations.pixel import functional as F  # noqa: E402


def photo(seed=0, h=57, w=83) -> np.ndarray:
    """A smooth colourful image with some saturated and some grey pixels."""
    rng = np.random.default_rng(seed)
    base = cv2.resize(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), (w, h), interpolation=cv2.INTER_CUBIC)
    base[:5] = 128  # grey rows: hue and saturation must leave them alone
    base[-3:] = [255, 0, 0]  # saturated red: clipping
    return base


def blob(h=41, w=67) -> np.ndarray:
    """Premultiplied RGBA: an ellipse with a soft edge on a zero background."""
    alpha = np.zeros((h, w), np.uint8)
    cv2.ellipse(alpha, (w // 2, h // 2), (w // 3, h // 4), 20, 0, 360, 255, -1)
    alpha = cv2.GaussianBlur(alpha, (5, 5), 0)
    rgb = (photo(1, h, w).astype(np.float32) * alpha[..., None] / 255 + 0.5).astype(np.uint8)
    return np.dstack([rgb, alpha])


def orientation(rgba) -> float:
    """The angle of the alpha's principal axis, in degrees (image axes: y down)."""
    m = cv2.moments(np.ascontiguousarray(rgba[..., 3]))
    return float(np.degrees(0.5 * np.arctan2(2 * m["mu11"], m["mu20"] - m["mu02"])))


@pytest.mark.parametrize("factor", [0.0, 0.5, 0.83, 1.0, 1.17, 1.9])
def test_brightness_and_saturation_equal_albumentations(factor):
    image = photo()
    assert np.array_equal(adjust_brightness(image, factor), F.adjust_brightness_torchvision(image, factor))
    assert np.array_equal(adjust_saturation(image, factor), F.adjust_saturation_torchvision(image, factor))


@pytest.mark.parametrize("shift", [-0.5, -0.05, -0.013, 0.0, 0.021, 0.05, 0.49])
def test_hue_equals_albumentations(shift):
    image = photo(2)
    ours = adjust_hue(image, shift)
    assert np.array_equal(ours, F.adjust_hue_torchvision(image, shift))
    if shift:
        assert not np.array_equal(ours, image)  # it did something
    assert np.array_equal(ours[:5], image[:5])  # grey stays grey


def test_the_colour_operations_run_in_the_drawn_order():
    image = np.ascontiguousarray(blob()[..., :3])
    rgba = np.dstack([image, np.full(image.shape[:2], 255, np.uint8)])
    transform = ObjectTransform(0, 0, (0.3, 0.3, 0.1))
    results = {}
    for order in [(BRIGHTNESS, SATURATION, HUE), (HUE, SATURATION, BRIGHTNESS)]:
        params = ObjectParams(brightness=1.25, saturation=0.7, hue=0.04, colour_order=order)
        expected = image
        for operation in order:
            expected = {BRIGHTNESS: lambda x: F.adjust_brightness_torchvision(x, 1.25),
                        SATURATION: lambda x: F.adjust_saturation_torchvision(x, 0.7),
                        HUE: lambda x: F.adjust_hue_torchvision(x, 0.04)}[operation](expected)
        results[order] = transform.apply(rgba, params)
        assert np.array_equal(results[order][..., :3], expected)
        assert np.array_equal(results[order][..., 3], rgba[..., 3])  # alpha untouched by colour
    assert not np.array_equal(*results.values())  # the order matters, so drawing it matters


def test_rotation_fits_the_whole_object_like_albumentations_affine():
    rgba = blob()
    for angle in (-10.0, -3.3, 7.5, 30.0):
        ours = rotate_to_fit(rgba, angle)
        theirs = A.Compose([A.Affine(rotate=(angle, angle), fit_output=True, interpolation=cv2.INTER_LINEAR,
                                     border_mode=cv2.BORDER_CONSTANT, fill=0, p=1.0)])(image=rgba)["image"]
        # the same object (the canvas around it is cropped away later): nothing cut off, the same extent to
        # a pixel, the same orientation, the same pixels once the crops are lined up
        assert int(ours[..., 3].sum()) == pytest.approx(int(rgba[..., 3].sum()), rel=0.01)
        assert int(ours[..., 3].sum()) == pytest.approx(int(theirs[..., 3].sum()), rel=0.01)
        ours_box = cv2.boundingRect(cv2.extractChannel(ours, 3))
        theirs_box = cv2.boundingRect(cv2.extractChannel(np.ascontiguousarray(theirs), 3))
        assert np.abs(np.subtract(ours_box[2:], theirs_box[2:])).max() <= 1, (angle, ours_box, theirs_box)
        assert orientation(ours) == pytest.approx(orientation(theirs), abs=0.5)
        assert orientation(ours) == pytest.approx(orientation(rgba) - angle, abs=0.5)  # y down: minus
        a = ours[ours_box[1]:, ours_box[0]:].astype(float)
        b = theirs[theirs_box[1]:, theirs_box[0]:].astype(float)
        h, w = min(a.shape[0], b.shape[0]) - 1, min(a.shape[1], b.shape[1]) - 1
        best = min(np.abs(a[dy:dy + h - 1, dx:dx + w - 1] - b[:h - 1, :w - 1]).mean()
                   for dy in (0, 1) for dx in (0, 1))
        assert best < 6, angle  # resampling of a soft edge (a turn the wrong way differs by 40-80)
    square = np.arange(5 * 5 * 4, dtype=np.uint8).reshape(5, 5, 4)
    assert np.array_equal(rotate_to_fit(square, 90.0), np.rot90(square))  # counter-clockwise, exactly
    assert rotate_to_fit(square, 0.0) is square


def test_parameters_come_from_the_generator_in_their_ranges():
    transform = ObjectTransform(10, 0.5, (0.2, 0.3, 0.05))
    draws = [transform.sample(np.random.default_rng(seed)) for seed in range(400)]
    assert draws[:5] == [transform.sample(np.random.default_rng(seed)) for seed in range(5)]  # reproducible
    assert all(-10 <= d.angle <= 10 and 0.8 <= d.brightness <= 1.2 and 0.7 <= d.saturation <= 1.3
               and -0.05 <= d.hue <= 0.05 and sorted(d.colour_order) == [0, 1, 2] for d in draws)
    assert 0.4 < np.mean([d.flip for d in draws]) < 0.6
    assert len({d.colour_order for d in draws}) == 6  # every order occurs
    plain = ObjectTransform(0, 0, (0, 0, 0)).sample(np.random.default_rng(0))
    assert plain == ObjectParams()


def test_a_transformed_object_keeps_its_area_and_the_cached_cutout_is_untouched():
    cutout = Cutout.from_rgba(blob(81, 121))
    before = [level.copy() for level in cutout.levels]
    transform = ObjectTransform(10, 0.5, (0.2, 0.2, 0.05))
    rng = np.random.default_rng(3)
    for area in (150.0, 800.0, 2500.0):
        sprite = transform(cutout, area, 161, rng)
        assert sprite.area == pytest.approx(area, rel=0.06)
        assert sprite.alpha.dtype == np.float32 and sprite.alpha.max() <= 1.0
        assert sprite.alpha[0].any() and sprite.alpha[:, 0].any() and sprite.alpha[-1].any()  # tightly cropped
    assert transform(cutout, 161 * 161 * 2, 161, rng) is None  # would not fit: the caller redraws
    assert all(np.array_equal(a, b) for a, b in zip(before, cutout.levels))


def test_cutout_levels_round_trip_through_bytes():
    cutout = Cutout.from_rgba(blob(81, 121))
    data = cutout.tobytes()
    assert len(data) == Cutout.stored_bytes(*cutout.shape)
    again = Cutout.from_bytes(data, *cutout.shape)
    assert [level.shape for level in again.levels] == [level.shape for level in cutout.levels]
    assert len(cutout.levels) > 2
    assert all(np.array_equal(a, b) for a, b in zip(again.levels, cutout.levels))
    assert again.area == cutout.area


def test_sprites_without_colour_have_the_alpha_of_sprites_with_it():
    # The eligibility probe places sprites resampled from the alpha alone: the same draws and the same bytes of
    # alpha as the RGBA sprites of a build, so its verdicts are those a build's own placement would give.
    # Areas from tiny to the canvas pick every mip level, exact level sizes, bilinear and area resampling.
    cutouts = [Cutout.from_rgba(blob(81, 121)), Cutout.from_rgba(blob(200, 90)), Cutout.from_rgba(blob(23, 31))]
    with_colour = ObjectTransform(10, 0.5, (0.0, 0.0, 0.0))
    alpha_only = ObjectTransform(10, 0.5, (0.0, 0.0, 0.0), alpha_only=True)
    levels = set()
    for k, area in enumerate(np.geomspace(4, 161 * 161, 120)):
        cutout = cutouts[k % 3]
        a, b = np.random.default_rng(k), np.random.default_rng(k)
        full, alone = with_colour(cutout, area, 322, a), alpha_only(cutout, area, 322, b)
        assert a.random() == b.random()  # the same draws
        if full is None:
            assert alone is None
            continue
        assert alone.premul is None and alone.alpha.dtype == np.float32
        assert np.array_equal(full.alpha, alone.alpha), (k, area)
        scale = np.sqrt(area / cutout.area)
        width, height = round(cutout.shape[1] * scale), round(cutout.shape[0] * scale)
        levels.add(sum(level.shape[0] >= height and level.shape[1] >= width for level in cutout.levels[1:]))
    assert levels == {0, 1, 2, 3, 4}  # the level each resize starts from
    with pytest.raises(ValueError):
        ObjectTransform(10, 0.5, (0.2, 0.0, 0.0), alpha_only=True)
