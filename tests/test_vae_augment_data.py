"""Augmentation on the device (crops keep every object) and the training data plan."""
import numpy as np
import pytest
import torch

from common.errors import UserError
from conftest import FAST
from synthgen import ShardSet
from synthgen.cli import main as synthgen_main
from vae.augment import AugmentConfig, augment, to_float
from vae.data import (LoaderFeed, MemoryFeed, Pool, balance_removals, epoch_indices, mixing_plan, natural_fraction,
                      rank_batches, reduce_images, split_pool)
from test_pack import make_sos_tree

NO_COLOUR = dict(brightness=0, contrast=0, saturation=0, hue=0)


def squares_at_the_edges(n=64, side=64, seed=0):
    """White squares on black, each touching an image edge, with their boxes."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, side, side, 3), np.uint8)
    boxes = np.zeros((n, 4), np.float32)
    for i in range(n):
        w = int(rng.integers(8, 20))
        x0 = 0 if i % 2 else side - w
        y0 = int(rng.integers(0, side - w))
        images[i, y0:y0 + w, x0:x0 + w] = 255
        boxes[i] = (x0, y0, x0 + w, y0 + w)
    return torch.from_numpy(images), torch.from_numpy(boxes)


def test_crops_never_cut_an_object():
    images, boxes = squares_at_the_edges()
    config = AugmentConfig(flip_prob=0.5, crop_max=0.5, **NO_COLOUR)
    before = (to_float(images) > 0.5).sum((1, 2, 3)).float()
    for seed in range(5):
        out = augment(images, boxes, config, torch.Generator().manual_seed(seed))
        after = (out > 0.5).sum((1, 2, 3)).float()
        # crops only zoom in (area grows by (side / crop)^2 >= 1); a cut object would lose area
        assert torch.all(after >= before * 0.97), (after / before).min()
    unconstrained = augment(images, torch.full_like(boxes, float("nan")), config, torch.Generator().manual_seed(0))
    assert torch.any((unconstrained > 0.5).sum((1, 2, 3)) < before * 0.9)  # without boxes, crops do cut


def test_augmentation_is_reproducible_and_in_range():
    images, boxes = squares_at_the_edges(8)
    config = AugmentConfig()
    a = augment(images, boxes, config, torch.Generator().manual_seed(3))
    b = augment(images, boxes, config, torch.Generator().manual_seed(3))
    c = augment(images, boxes, config, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (8, 3, 64, 64) and a.min() >= 0 and a.max() <= 1
    assert a.is_contiguous(memory_format=torch.channels_last)
    identity = AugmentConfig(flip_prob=0, crop_max=0, **NO_COLOUR)
    assert torch.allclose(augment(images, boxes, identity, torch.Generator().manual_seed(0)), to_float(images),
                          atol=1e-5)  # float rounding in the resampling
    assert augment(images, boxes, config, torch.Generator().manual_seed(0), size=32).shape == (8, 3, 32, 32)


@pytest.mark.parametrize("hue, size", [(0.02, None), (0.0, 48)])
def test_compiled_augmentation_is_one_graph_that_matches_eager(hue, size):
    """The trainer compiles `apply` (vae.runtime.compile_augmentation_checked): it must go into one graph (no
    random draw, host-device copy or cache lookup inside, which would break it into pieces and leave passes over
    the batch unfused), give what eager execution gives, and leave the draws to `draw` alone."""
    import torch._dynamo

    from vae.augment import apply, draw
    from vae.runtime import AUGMENT_TOLERANCE, compile_augmentation_checked

    images, boxes = squares_at_the_edges(8)
    boxes[::3] = float("nan")  # images without objects: crops anywhere
    config = AugmentConfig(hue=hue)
    params = draw(images, boxes, config, torch.Generator().manual_seed(1), size)
    assert (params.hue is None) == (hue == 0)
    torch._dynamo.reset()
    whole = torch.compile(apply, dynamic=False, fullgraph=True)  # fullgraph: a graph break is an error
    eager = apply(images, params, size)
    assert (whole(images, params, size) - eager).abs().max() <= AUGMENT_TOLERANCE
    compiled, record = compile_augmentation_checked(images, params, size)
    assert record["used"] and record["error"] is None and 0 <= record["max_difference"] <= AUGMENT_TOLERANCE
    other = draw(images, boxes, config, torch.Generator().manual_seed(2), size)  # new draws, the same graph
    assert (compiled(images, other, size) - apply(images, other, size)).abs().max() <= AUGMENT_TOLERANCE
    # augment is draw then apply: the same images as before the split, from the same generator state
    assert torch.equal(augment(images, boxes, config, torch.Generator().manual_seed(1), size), eager)


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("vae-data")
    assert synthgen_main(["build", "--n", "60", "--out", str(root / "synth"), *FAST]) == 0
    tree = root / "sos"
    make_sos_tree(tree, per_label=10)
    for extra in range(30):  # class 1 is the most frequent, as in SOS
        (tree / "1" / f"img{extra + 10}.jpg").write_bytes((tree / "1" / "img0.jpg").read_bytes())
    assert synthgen_main(["pack", str(tree), "--out", str(root / "natural"), "--size", "64", "--no-progress",
                          "--workers", "1"]) == 0
    return root


def test_natural_images_join_gradually_after_the_synthetic_epochs(sets):
    assert [natural_fraction(e, 20, 20) for e in (1, 20, 21, 30, 40, 41)] == [0, 0, 0.05, 0.5, 1, 1]
    assert mixing_plan(140, 20, 20, 9000) == ("mixing: synthetic images only in epochs 1-20, then the 9000 natural "
                                              "training images join over epochs 21-40")
    assert mixing_plan(4, 1, 1, 5) == ("mixing: synthetic images only in epoch 1, then the 5 natural training "
                                       "images join in epoch 2")
    assert mixing_plan(140, 20, 20, 0) is None  # no natural set
    # a run too short for its schedule says so: its natural images would be validated on but never trained on
    assert mixing_plan(10, 20, 20, 9000).endswith("; with --epochs 10 none of them joins this run (the validation "
                                                  "holds some): lower --natural-start, or continue the run later "
                                                  "with --resume --epochs")
    assert mixing_plan(30, 20, 20, 9000).endswith("; with --epochs 30, 50% of them have joined by its last epoch")
    assert mixing_plan(3, 0, 4, 8) == ("mixing: the 8 natural training images join over epochs 1-4; with --epochs 3, "
                                       "75% of them have joined by its last epoch")
    pool = Pool([str(sets / "synth")], [str(sets / "natural")])
    split = split_pool(pool, seed=0, val_fraction=0.1, natural_drop=0.1)
    seen = []
    for epoch in range(1, 8):
        indices, fraction, n_natural = epoch_indices(split, epoch, seed=0, start=2, ramp=4)
        natural = indices[pool.is_natural[indices]]
        assert len(natural) == n_natural == round(fraction * split.train_natural_order.size)
        assert set(seen) <= set(natural)  # images join and stay
        seen = natural.tolist()
    assert fraction == 1 and len(seen) == split.train_natural_order.size
    # the validation images are never trained on
    assert not set(split.validation) & set(indices)


def test_most_frequent_natural_classes_lose_ten_percent(sets):
    pool = Pool([str(sets / "synth")], [str(sets / "natural")])
    kept = split_pool(pool, seed=0, val_fraction=0.1, natural_drop=0.1)
    full = split_pool(pool, seed=0, val_fraction=0.1, natural_drop=0.0)
    counts = lambda s: np.bincount(pool.counts[s.train_natural_order], minlength=5)  # noqa: E731
    assert kept.dropped == {1: int(round(0.1 * counts(full)[1]))}  # only class 1 is above the average
    assert counts(full)[1] - counts(kept)[1] == kept.dropped[1]
    assert np.array_equal(counts(full)[[0, 2, 3, 4]], counts(kept)[[0, 2, 3, 4]])


def test_class_balance_never_takes_a_class_below_the_mean():
    # SOS's extended train set: the two largest classes lose a tenth each, as the paper says
    assert balance_removals([2596, 4854, 1604, 1058, 853], 0.1).tolist() == [260, 485, 0, 0, 0]
    # a balanced set, but for one image: a tenth off that class would make it the rarest
    assert balance_removals([100, 101, 100, 100, 100], 0.1).tolist() == [0, 0, 0, 0, 0]
    assert balance_removals([100, 50, 50], 0.5).tolist() == [33, 0, 0]  # down to the mean, 67, not to 50


def test_every_rank_gets_the_same_number_of_batches():
    indices = np.arange(103)
    batches = [rank_batches(indices, 8, rank, 3) for rank in range(3)]
    assert len({len(b) for b in batches}) == 1
    assert not set(np.concatenate(batches[0])) & set(np.concatenate(batches[1]))
    # a last training batch of one image is left out (BatchNorm of a 1 x 1 map cannot take its statistics); a
    # validation batch of one image is kept, since BatchNorm then uses its running statistics
    assert [len(b) for b in rank_batches(np.arange(17), 8, 0, 1, training=True)] == [8, 8]
    assert [len(b) for b in rank_batches(np.arange(17), 8, 0, 1)] == [8, 8, 1]
    assert [len(b) for b in rank_batches(np.arange(18), 8, 0, 1, training=True)] == [8, 8, 2]


def test_worker_feed_matches_memory_feed(sets):
    pool = Pool([str(sets / "synth")], [str(sets / "natural")])
    pool.images([0])  # the parent opens HDF5 handles before the workers fork
    batches = [np.array([3, 70, 1]), np.array([59, 0])]
    memory = list(MemoryFeed(pool, torch.device("cpu")).batches(batches))
    workers = list(LoaderFeed(pool, torch.device("cpu"), workers=2).batches(batches))
    for (a, boxes_a), (b, boxes_b) in zip(memory, workers):
        assert torch.equal(a, b) and torch.equal(torch.nan_to_num(boxes_a, -1), torch.nan_to_num(boxes_b, -1))


def test_sets_of_different_sizes_are_each_reduced_to_the_training_size(sets, tmp_path):
    """Sets built or packed at different sizes (synthetic at 48 px, photos at 64) train together at an --image-size
    at most the smallest: each set's images and boxes are reduced to it as they are read."""
    small = tmp_path / "synth-48"
    assert synthgen_main(["build", "--n", "20", "--seed", "3", "--out", str(small), *FAST, "--size", "48"]) == 0
    for size, asked in ((None, "no --image-size is given"), (56, "--image-size 56 is above the smallest")):
        with pytest.raises(UserError, match=rf"the sets have different image sizes \({small} \(48 px\), "
                           rf"{sets / 'natural'} \(64 px\)\) and {asked}; give --image-size 48 or less"):
            Pool([str(small)], [str(sets / "natural")], image_size=size)
    pool = Pool([str(small)], [str(sets / "natural")], image_size=32)
    own = [ShardSet(small), ShardSet(sets / "natural")]
    assert pool.image_size == 32 and pool.images(np.arange(len(pool))).shape == (len(pool), 32, 32, 3)
    for k, shards in enumerate(own):
        rows = np.arange(len(shards)) + pool.starts[k]
        expected = (to_float(shards.images(np.arange(len(shards))), 32) * 255).round().to(torch.uint8)
        assert np.array_equal(pool.images(rows), expected.permute(0, 2, 3, 1).numpy())
        scale = 32 / shards.image_size
        assert np.array_equal(np.isnan(pool.boxes[rows]), np.isnan(shards.union_boxes()))
        assert np.allclose(pool.boxes[rows], shards.union_boxes() * scale, equal_nan=True)
    # area averaging by 2: each pixel the mean of a 2 x 2 block, exactly, as a set made at the smaller size holds it
    coarse = np.random.default_rng(0).integers(0, 256, (3, 24, 24, 3), dtype=np.uint8)
    assert np.array_equal(reduce_images(np.kron(coarse, np.ones((1, 2, 2, 1), np.uint8)), 24), coarse)
    # loader workers reduce them as the memory feed does (torch in forked processes)
    pool.images([0])
    batches = [np.array([3, 25, 1]), np.array([59, 0])]
    memory = list(MemoryFeed(pool, torch.device("cpu")).batches(batches))
    workers = list(LoaderFeed(pool, torch.device("cpu"), workers=2).batches(batches))
    for (a, boxes_a), (b, boxes_b) in zip(memory, workers):
        assert a.shape[1:] == (32, 32, 3) and torch.equal(a, b)
        assert torch.equal(torch.nan_to_num(boxes_a, -1), torch.nan_to_num(boxes_b, -1))
    # one size: read as it is, reduced on the training device as before
    assert Pool([str(small)], [], image_size=32).image_size == 48
