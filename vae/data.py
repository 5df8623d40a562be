"""Training data: synthgen sets read through `synthgen.ShardSet`, the epoch plan, and batch feeding.

* Pool: all images of the given sets, indexed 0..n-1 (synthetic sets first, then natural ones).
* Validation: a fixed, seeded fraction of every set is held out for the learning-rate schedule
  and model selection; the test split of natural data is never read by the trainer.
* Class imbalance (section 4.2): 10% of the training examples of the most frequent classes of the
  natural data are removed at random. "Most frequent" means more frequent than the average class.
* Mixing (section 4.2): epochs 1..start are synthetic only; from then on a growing, seeded prefix of
  the natural training images joins, `natural_fraction(epoch)`, computed in the main process.
* Feeding: either the whole pool is loaded once as uint8 into the training device's memory and
  batches are indexed there, or a DataLoader's workers read batches from the shards (each worker
  opens its own HDF5 handles, never across a fork) into pinned memory for non-blocking copies.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import torch

from common import streams
from common.errors import UsageError
from common.machine import available_memory
from synthgen import ShardSet
from synthgen.overlap import first_shared
from vae.augment import to_float


def natural_fraction(epoch: int, start: int, ramp: int) -> float:
    """Share of the natural training images used in (1-based) `epoch`: 0 up to `start`, then
    rising linearly to all of them over `ramp` epochs."""
    if epoch <= start:
        return 0.0
    return min(1.0, (epoch - start) / max(1, ramp))


def mixing_plan(epochs: int, start: int, ramp: int, n_natural: int) -> str | None:
    """The schedule of the natural images in words, saying so where they would not all join the run."""
    if n_natural == 0:
        return None
    only_in = f"epochs 1-{start}" if start > 1 else "epoch 1"
    synthetic = f"synthetic images only in {only_in}, then " if start else ""
    epochs_joining = f"over epochs {start + 1}-{start + ramp}" if ramp > 1 else f"in epoch {start + 1}"
    plan = f"mixing: {synthetic}the {n_natural} natural training images join {epochs_joining}"
    last = natural_fraction(epochs, start, ramp)
    if last == 0:
        return (f"{plan}; with --epochs {epochs} none of them joins this run (the validation holds some): lower "
                "--natural-start, or continue the run later with --resume --epochs")
    if last < 1:
        return f"{plan}; with --epochs {epochs}, {last:.0%} of them have joined by its last epoch"
    return plan


def repeated_images(sets: list[ShardSet], natural: np.ndarray) -> str | None:
    """Why these sets cannot be trained on together: two of them hold the same images, which a run would train
    on twice and hold out for validation besides (a set given twice, a prefix of a build with the build, two
    packs of one photo folder that took the same photos). None when every image is in one set."""
    found = first_shared([("--natural" if is_natural else "--data", s) for s, is_natural in zip(sets, natural)])
    if found is None:
        return None
    shared = found[-1]
    return f"{shared}: the run would train on them twice and validate on images it trains on; give each set once"


def reduce_images(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 (k, H, H, 3) reduced to (k, size, size, 3) by area averaging, as `vae.augment.to_float` reduces, and
    rounded back to uint8, as a set built or packed at that size holds its images."""
    reduced = to_float(images, size).mul_(255).round_().clamp_(0, 255).to(torch.uint8)
    return reduced.permute(0, 2, 3, 1).contiguous().numpy()


class Pool:
    """The images of several synthgen sets under one index, with labels and object boxes."""

    def __init__(self, synthetic: list[str], natural: list[str], verify: bool = True, progress: bool = False,
                 distinct: bool = True, image_size: int | None = None):
        """`distinct`: refuse sets that share images (checked before any shard is read). `image_size`: the size
        the run trains at; sets of different sizes are each reduced to it as they are read (sets of one size are
        read at their own, and reduced on the training device)."""
        self.sets = [ShardSet(path, verify=verify, progress=progress, option=option)
                     for option, paths in (("--data", synthetic), ("--natural", natural)) for path in paths]
        self.natural_set = np.array([False] * len(synthetic) + [True] * len(natural))
        problem = repeated_images(self.sets, self.natural_set) if distinct else None
        if problem:
            raise UsageError(problem)
        sizes = sorted({s.image_size for s in self.sets})
        if len(sizes) > 1 and (image_size is None or image_size > sizes[0]):
            detail = ", ".join(f"{s.root} ({s.image_size} px)" for s in self.sets)
            asked = f"--image-size {image_size} is above the smallest" if image_size else "no --image-size is given"
            raise UsageError(f"--data/--natural: the sets have different image sizes ({detail}) and {asked}; give "
                             f"--image-size {sizes[0]} or less, to which each set's images are reduced as they are "
                             "read, or build or pack the sets at one --size")
        self.image_size = sizes[0] if len(sizes) == 1 else image_size
        for path, shards in zip(natural, self.sets[len(synthetic):]):
            if shards.kind != "natural":
                raise UsageError(f"--natural {path}: a synthetic set; give it with --data")
        self.starts = np.concatenate([[0], np.cumsum([len(s) for s in self.sets])])
        self.counts = np.concatenate([s.labels["count"] for s in self.sets]).astype(np.int64)
        # boxes in pixels of the images as the pool gives them
        self.boxes = np.concatenate([s.union_boxes() * np.float32(self.image_size / s.image_size) for s in self.sets])
        self.is_natural = np.repeat(self.natural_set, [len(s) for s in self.sets])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def images(self, indices) -> np.ndarray:
        """uint8 (k, S, S, 3), in the order asked."""
        indices = np.asarray(indices, dtype=np.int64)
        out = np.empty((len(indices), self.image_size, self.image_size, 3), np.uint8)
        which = np.searchsorted(self.starts, indices, side="right") - 1
        for set_index in np.unique(which):
            rows = np.flatnonzero(which == set_index)
            images = self.sets[set_index].images(indices[rows] - self.starts[set_index])
            out[rows] = images if images.shape[1] == self.image_size else reduce_images(images, self.image_size)
        return out


@dataclass
class Split:
    train_synthetic: np.ndarray
    train_natural_order: np.ndarray  # the order in which natural images join the training set
    validation: np.ndarray
    dropped: dict[int, int]  # class -> natural training examples removed for balance

    def to_state(self) -> dict:
        """The split as tensors and a JSON string, for last.pt: a resumed run goes on with the very split it
        started with, whichever version of this module resumes it."""
        return {"train_synthetic": torch.from_numpy(self.train_synthetic.astype(np.int64)),
                "train_natural_order": torch.from_numpy(self.train_natural_order.astype(np.int64)),
                "validation": torch.from_numpy(self.validation.astype(np.int64)),
                "dropped": json.dumps({str(label): n for label, n in self.dropped.items()})}

    @classmethod
    def from_state(cls, state: dict) -> Split:
        return cls(*(state[key].numpy().astype(np.int64) for key in ("train_synthetic", "train_natural_order",
                                                                       "validation")),
                   {int(label): int(n) for label, n in json.loads(state["dropped"]).items()})

    def same_as(self, other: Split) -> bool:
        """The same images on each side, in the same order of joining."""
        return (self.dropped == other.dropped and np.array_equal(self.train_synthetic, other.train_synthetic)
                and np.array_equal(self.train_natural_order, other.train_natural_order)
                and np.array_equal(self.validation, other.validation))

    def counts(self) -> dict:
        """What config.json records of the split (its "data" entry)."""
        return {"synthetic_train": int(self.train_synthetic.size), "natural_train": int(self.train_natural_order.size),
                "validation": int(self.validation.size), "natural_dropped_per_class": self.dropped}


def balance_removals(class_sizes: np.ndarray, share: float) -> np.ndarray:
    """How many examples to remove from each class: `share` of every class above the mean class size,
    but never so many that it falls below the mean. (A class just above the mean of a balanced set
    would otherwise lose a tenth and end up the rarest.)"""
    sizes = np.asarray(class_sizes, dtype=np.int64)
    above_mean = np.maximum(sizes - int(np.ceil(sizes.mean())), 0)
    return np.minimum(np.rint(share * sizes).astype(np.int64), above_mean)


def split_pool(pool: Pool, seed: int, val_fraction: float, natural_drop: float) -> Split:
    """Hold out a fixed fraction of every set, then balance the natural training images."""
    train, validation = [], []
    for set_index in range(len(pool.sets)):
        indices = np.arange(pool.starts[set_index], pool.starts[set_index + 1])
        order = streams.rng(seed, streams.VALIDATION, set_index).permutation(indices)
        n_val = int(round(val_fraction * len(indices))) if len(indices) > 1 else 0
        validation.append(np.sort(order[:n_val]))
        train.append(np.sort(order[n_val:]))
    train = np.concatenate(train)
    natural = train[pool.is_natural[train]]
    dropped = {}
    if natural.size and natural_drop > 0:
        classes, freq = np.unique(pool.counts[natural], return_counts=True)
        rng = streams.rng(seed, streams.NATURAL_DROP)
        keep = np.ones(natural.size, bool)
        for label, n_remove in zip(classes, balance_removals(freq, natural_drop)):
            if n_remove:
                members = np.flatnonzero(pool.counts[natural] == label)
                keep[rng.choice(members, n_remove, replace=False)] = False
                dropped[int(label)] = int(n_remove)
        natural = natural[keep]
    natural_order = streams.rng(seed, streams.NATURAL_ORDER).permutation(natural)
    return Split(train[~pool.is_natural[train]], natural_order, np.concatenate(validation), dropped)


def epoch_indices(split: Split, epoch: int, seed: int, start: int, ramp: int) -> tuple[np.ndarray, float, int]:
    """The shuffled training indices of an epoch, the natural fraction used, and the natural count."""
    fraction = natural_fraction(epoch, start, ramp)
    n_natural = int(round(fraction * split.train_natural_order.size))
    indices = np.concatenate([split.train_synthetic, split.train_natural_order[:n_natural]])
    return streams.rng(seed, streams.EPOCH, epoch).permutation(indices), fraction, n_natural


def rank_batches(indices: np.ndarray, batch_size: int, rank: int, world: int, training: bool = False
                 ) -> list[np.ndarray]:
    """This process's batches: every rank gets the same number (collectives must pair up), so up to
    world - 1 trailing images of the epoch are left out; a last partial batch is kept, but in `training`
    not one of a single image: BatchNorm cannot take batch statistics of one image where a layer's map is
    1 x 1 (a small --image-size, a deep encoder), and of one image elsewhere they are mostly noise. The
    image left out is another one each epoch."""
    per_rank = len(indices) // world
    mine = indices[rank * per_rank:(rank + 1) * per_rank]
    batches = [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]
    if training and len(batches) > 1 and len(batches[-1]) == 1:
        batches.pop()
    return batches


class MemoryFeed:
    """The whole pool loaded once as uint8 onto the training device; batches are indexed there."""

    LOAD_IMAGES = 4096  # read and moved a block at a time: the host never holds the whole pool besides the device

    def __init__(self, pool: Pool, device: torch.device):
        size = pool.image_size
        self.images = torch.empty((len(pool), size, size, 3), dtype=torch.uint8, device=device)
        for start in range(0, len(pool), self.LOAD_IMAGES):
            block = np.arange(start, min(start + self.LOAD_IMAGES, len(pool)))
            self.images[start:start + block.size] = torch.from_numpy(pool.images(block)).to(device)
        self.boxes = torch.from_numpy(pool.boxes).to(device)

    def close(self) -> None:
        """Nothing to stop (LoaderFeed.close)."""

    def batches(self, batches: list[np.ndarray]):
        if not batches:
            return
        # the epoch's indices go to the device in one copy, then each batch is a slice of them
        indices = torch.from_numpy(np.concatenate(batches)).to(self.images.device)
        start = 0
        for batch in batches:
            index = indices[start:start + len(batch)]
            start += len(batch)
            yield self.images[index], self.boxes[index]


class _PoolDataset(torch.utils.data.Dataset):
    def __init__(self, pool: Pool):
        self.pool = pool

    def __len__(self):
        return len(self.pool)

    def __getitems__(self, indices):  # one sorted read per shard for the whole batch
        indices = np.asarray(indices)
        return torch.from_numpy(self.pool.images(indices)), torch.from_numpy(self.pool.boxes[indices])


def _as_is(batch):
    return batch  # __getitems__ already returns the batch's tensors


class _Batches(torch.utils.data.Sampler):
    """The current epoch's batches; set before each epoch (the sampler runs in the main process)."""

    def __init__(self):
        self.batches: list[np.ndarray] = []

    def __iter__(self):
        return iter([b.tolist() for b in self.batches])

    def __len__(self):
        return len(self.batches)


class LoaderFeed:
    """DataLoader workers read batches from the shards; pinned memory, non-blocking copies."""

    def __init__(self, pool: Pool, device: torch.device, workers: int):
        self.device = device
        self.sampler = _Batches()
        self.loader = torch.utils.data.DataLoader(
            _PoolDataset(pool), batch_sampler=self.sampler, num_workers=workers, collate_fn=_as_is,
            pin_memory=device.type == "cuda", persistent_workers=workers > 0)

    def batches(self, batches: list[np.ndarray]):
        self.sampler.batches = batches
        for images, boxes in self.loader:
            yield images.to(self.device, non_blocking=True), boxes.to(self.device, non_blocking=True)

    def close(self) -> None:
        """Stop the workers now, as the run ends (done, failed or interrupted). Left to the garbage collector (a
        run is a reference cycle), the queues that tell them to stop were closed first: each worker was waited on
        for 5 s and then killed, so a SIGTERM or Ctrl-C took 10-20 s to end vae-train, and a run trained from
        Python stalled whatever ran at the next collection. DataLoader has no public way to do this."""
        iterator, self.loader._iterator = self.loader._iterator, None
        if iterator is not None:
            iterator._shutdown_workers()


@dataclass
class FeedChoice:
    """Which feed a run uses and why; recorded in config.json and the log."""

    feed: str  # "memory": the whole pool on the device; "stream": workers read batches from the shards
    reason: str
    pool_bytes: int
    free_bytes: int | None  # free memory of the device when `auto` decided, else None

    def line(self) -> str:
        return ("data in device memory" if self.feed == "memory" else "data streamed from the shards") + \
            f" ({self.reason})"


def choose_feed(pool: Pool, device: torch.device, mode: str) -> FeedChoice:
    """--data-on-device: yes or no as asked; auto: memory when the pool takes under half the free memory of
    the device (of the host, for CPU training)."""
    need = len(pool) * pool.image_size**2 * 3
    if mode == "no":
        return FeedChoice("stream", "--data-on-device no", need, None)
    if device.type == "cuda":
        free, where = torch.cuda.mem_get_info(device)[0], f"free on {device}"
    else:
        free, where = available_memory(), "of available host memory"
    if mode == "yes":
        if free is not None and need > free:
            raise UsageError(f"--data-on-device yes: the pool's {need / 2**30:.2f} GiB is more than the "
                             f"{free / 2**30:.2f} GiB {where}; give --data-on-device auto (or no) to stream it from "
                             "the shards")
        return FeedChoice("memory", "--data-on-device yes", need, None)
    free = free or 0
    fits = need < free / 2
    return FeedChoice("memory" if fits else "stream",
                      f"--data-on-device auto: the pool's {need / 2**30:.2f} GiB is {'under' if fits else 'over'} half "
                      f"the {free / 2**30:.2f} GiB {where}", need, int(free))


def make_feed(pool: Pool, device: torch.device, choice: FeedChoice, workers: int):
    """The feed `choice` names: MemoryFeed or LoaderFeed (which gives the same batches in the same order)."""
    return MemoryFeed(pool, device) if choice.feed == "memory" else LoaderFeed(pool, device, workers)
