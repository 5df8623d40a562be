"""The parts of a training run, built from its checked settings (vae.config): the data (sets, split, feed), the
model, the reconstruction loss, the optimiser and its schedule. vae.train puts them together into a run."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from common import streams
from common.errors import UsageError, UserError
from common.machine import cores
from vae.config import TrainConfig, TrainingSettings
from vae.data import FeedChoice, Pool, Split, choose_feed, make_feed, split_pool
from vae.losses import BernoulliLoss, PerceptualLoss, PixelLoss
from vae.model import VAE, ModelConfig
from vae.runtime import Runtime
from vae.vgg import load_vgg


class TrainingError(UserError):
    """A problem the user can fix; the message says what and how."""


@dataclass
class Data:
    """The run's images: the sets (pool), their split into training and validation images, and the feed that
    brings batches of them to the device."""
    pool: Pool
    split: Split
    feed: object  # vae.data.MemoryFeed or LoaderFeed
    image_size: int
    feed_choice: FeedChoice

    def sets(self) -> list[dict]:
        """Every set the run reads, in order: the option that named it, where it is, its build identity, its
        number of images and their size. Equal identities and counts mean equal images (a smaller --n is a
        prefix of a larger one), so these pin the images, the split and the order of the run wherever the sets
        lie."""
        return [{"option": "--natural" if natural else "--data", "path": str(s.root), "identity": s.identity,
                 "n_images": len(s), "image_size": s.image_size}
                for s, natural in zip(self.pool.sets, self.pool.natural_set)]


def load_data(config: TrainConfig, runtime: Runtime, new: bool = True) -> Data:
    """The run's sets, split and feed; for a new run, sets that share no image, natural sets only as --natural,
    and an --image-size that reduces the sets' images, never enlarges them."""
    data = config.data
    pool = Pool(data.data, data.natural, verify=config.runtime.verify_shards,
                progress=config.runtime.progress and runtime.main, distinct=new, image_size=config.model.image_size)
    natural = [s for s, is_natural in zip(pool.sets, pool.natural_set) if s.kind == "natural" and not is_natural]
    if new and natural:
        raise UsageError(f"--data {natural[0].root}: a natural set (synthgen pack); give it with --natural, which "
                         "mixes it in on the paper's schedule (after --natural-start epochs) and balances its classes "
                         "(--natural-drop); --natural alone, with --natural-start 0, trains on natural images only")
    size = config.model.image_size or pool.image_size
    if new and size > pool.image_size:
        raise UsageError(f"--image-size {size}: the sets' images are {pool.image_size} px ({pool.sets[0].root}); "
                         "enlarging them adds no detail and trains the model on blurred images: train at "
                         f"{pool.image_size} px or less, or build (or pack) the sets at --size {size}")
    split = split_pool(pool, config.training.seed, data.val_fraction, data.natural_drop)
    if split.validation.size == 0:
        raise TrainingError(f"--val-fraction {data.val_fraction}: no validation images; raise it or add data")
    if split.train_synthetic.size + split.train_natural_order.size == 0:
        raise TrainingError(f"--val-fraction {data.val_fraction}: all {len(pool)} images are held out for validation, "
                            "none is left to train on; lower it or add data")
    choice = choose_feed(pool, runtime.device, config.runtime.data_on_device)
    # Loader processes beyond the cores only contend, and each one imports torch (a few hundred MB of memory).
    workers = min(config.runtime.workers, cores())
    if choice.feed == "stream" and workers < config.runtime.workers:
        choice.reason += (f"; --workers {config.runtime.workers} is more than the {workers} cores here: "
                          f"{workers} loader workers")
    feed = make_feed(pool, runtime.device, choice, workers)
    return Data(pool, split, feed, size, choice)


def build_model(config: TrainConfig, image_size: int, runtime: Runtime) -> VAE:
    settings = config.model
    model_config = ModelConfig(image_size=image_size, encoder=settings.encoder, decoder=settings.decoder,
                               output_layer=settings.output_layer, latent=settings.latent)
    with torch.random.fork_rng(devices=[]):  # the initial weights come from the seed too
        torch.manual_seed(int(np.random.SeedSequence([config.training.seed, streams.INIT]).generate_state(1)[0]))
        model = VAE(model_config).to(runtime.device)
    synced = config.runtime.sync_bn and runtime.world > 1  # then the statistics are over every process's batch
    if config.training.batch_size == 1 and min(model.normalised_sides) == 1 and not synced:
        # BatchNorm's training statistics are over the batch and the map: one image on a 1x1 map gives one value
        raise TrainingError(f"--batch-size 1: this model has a layer whose map is 1x1 (the grids after each "
                            f"convolution: {', '.join(map(str, model.normalised_sides))}), where BatchNorm cannot "
                            "take statistics of a single image; raise --batch-size, or use a larger --image-size or "
                            "fewer stride-2 layers")
    if synced:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model.to(memory_format=torch.channels_last) if config.runtime.channels_last else model


def build_reconstruction(config: TrainConfig, runtime: Runtime) -> tuple[torch.nn.Module, dict | None]:
    """The reconstruction loss, and where its VGG-19 weights came from (perceptual loss only)."""
    loss = config.loss
    if loss.recon == "perceptual":
        with torch.random.fork_rng(devices=[]):  # random VGG weights: the run's own, and the same when it resumes
            torch.manual_seed(streams.seed64(config.training.seed, streams.RANDOM_VGG))
            vgg, record = load_vgg(loss.vgg_weights)
        module = PerceptualLoss(vgg, loss.rec_reduction).to(runtime.device)
        return (module.to(memory_format=torch.channels_last) if config.runtime.channels_last else module), record
    return (BernoulliLoss if loss.recon == "bce" else PixelLoss)(loss.rec_reduction), None


def build_optimizer(model: torch.nn.Module, lr: float) -> torch.optim.Adam:
    """Adam, fused (one kernel and one pass over parameters, gradients and moments) where torch has it for
    the parameters' device: the multi-tensor update of the paper model's 186M parameters makes about 16
    passes over memory (1.2 s a step on a 2-core CPU against 0.18 s fused). The two agree to rounding."""
    try:
        return torch.optim.Adam(model.parameters(), lr=lr, fused=True)
    except RuntimeError:  # a device without the fused kernel
        return torch.optim.Adam(model.parameters(), lr=lr)


def build_scheduler(optimizer: torch.optim.Optimizer, training: TrainingSettings
                    ) -> torch.optim.lr_scheduler.ReduceLROnPlateau:
    """Section 4.2's schedule: the rate times --lr-factor after more than --lr-patience epochs without a better
    validation loss, never below --lr-min."""
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=training.lr_factor,
                                                      patience=training.lr_patience, min_lr=training.lr_min)
