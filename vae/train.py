"""vae-train: train the paper's VAE on synthgen shards (synthetic first, natural images mixed in).

Read top to bottom: building a run (data, model, reconstruction loss, optimiser) -> one step, the same
for training and validation -> an epoch of training and a pass of validation -> the end of an epoch
(schedule, checkpoint, log) -> the epoch loop -> `train`, which the command line (vae.cli) calls with
checked settings (vae.config). Devices, processes and compiling live in vae.runtime.

Reproducibility: the initial weights come from the seed; every random draw of a training step
(augmentation, the reparameterisation noise) from a generator seeded by (seed, epoch, step, rank);
the epoch's images and their order from (seed, epoch). So `--resume` from the last finished epoch
repeats exactly what an uninterrupted run would have done.
"""
from __future__ import annotations

import json
import math
import shutil
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from common import streams
from common.atomic import write_atomic
from common.errors import UsageError, UserError
from common.jsontext import json_text
from common.locks import FolderLock
from common.machine import cores, describe as describe_machine
from common.settings import to_dict
from vae.augment import apply, draw, to_float
from vae.checkpoint import (CheckpointError, detached_copy, kept_epochs, kept_epochs_line, load_checkpoint,
                            save_checkpoint, saved_sets, weights_fingerprint)
from vae.config import EPOCHS_FOLDER, TrainConfig, TrainingSettings, holds_run
from vae.data import (FeedChoice, Pool, Split, choose_feed, epoch_indices, make_feed, mixing_plan, rank_batches,
                      split_pool)
from vae.losses import BernoulliLoss, Objective, PerceptualLoss, PixelLoss
from vae.model import VAE, ModelConfig, describe, parameter_counts
from vae.plots import loss_curves, reconstruction_grid
from vae.runtime import (Runtime, compile_augmentation_checked, compile_checked, compile_decision, compile_objective,
                         setup_runtime, step_generator)
from vae.vgg import load_vgg


class TrainingError(UserError):
    """A problem the user can fix; the message says what and how."""


# ---------------------------------------------------------------------------------------------- building a run


@dataclass
class Data:
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


def sets_problem(saved: list[dict], now: list[dict]) -> str | None:
    """Why the sets `now` cannot continue a run that read `saved`, as one line; None when they are the same sets
    (wherever they lie now)."""
    fix = "resume with the run's own sets, or start a new run in another --out"
    if len(now) != len(saved):
        started = ", ".join(f"{s.get('option', '')} {s['path']}".strip() for s in saved)
        return (f"--resume: the run was started with {len(saved)} set(s) ({started}), and {len(now)} are given now; "
                f"give all of them, in that order, or start a new run in another --out")
    for old, new in zip(saved, now):
        named = f"{new['option']} {new['path']}"
        where = "" if old["path"] == new["path"] else f" (the run started with {old['path']})"
        if old.get("option", new["option"]) != new["option"]:
            return f"--resume: {named}: the run read its set there with {old['option']}{where}; {fix}"
        if old["identity"] != new["identity"]:
            what = ("changed since the run started (a different set is there now)" if not where else
                    f"is not the run's set {old['path']} (another build)")
            return f"--resume: {named} {what}; {fix}"
        if old.get("n_images", new["n_images"]) != new["n_images"]:
            return (f"--resume: {named} holds {new['n_images']} images, the run started with {old['n_images']} "
                    f"(the same build, made larger or smaller since){where}; {fix}")
    return None


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


def save_kept_epoch(out: Path, state: dict) -> None:
    """A model the run keeps (epoch 0: the untrained one) as EPOCHS_FOLDER/epoch-NNNN.pt, a checkpoint like best.pt:
    --save-every keeps the course of training for the analyses."""
    folder = out / EPOCHS_FOLDER
    folder.mkdir(exist_ok=True)
    save_checkpoint(folder / f"epoch-{state['epoch']:04d}.pt", state)


def augmentation_line(record: dict) -> str:
    """What became of compiling the augmentation, for the log."""
    if record["used"]:
        return f"the augmentation compiled too (largest difference from eager {record['max_difference']:.2g})"
    why = record["error"] or (f"it differs from eager execution by up to {record['max_difference']:.3g}, over the "
                              f"tolerance {record['tolerance']}")
    return f"the augmentation runs eagerly: {why}"


# ---------------------------------------------------------------------------------------------- the run


class Run:
    """One training run: its data, model, objective, optimiser, run folder and history."""

    def __init__(self, config: TrainConfig, runtime: Runtime, last: dict | None, log):
        """`last`: the run's last checkpoint, to continue from (None: a new run)."""
        self.config, self.runtime, self.log = config, runtime, log
        self.out = Path(config.out)
        # The loss network before the data: a bad weights file is told at once, not after loading every image.
        self.reconstruction, self.vgg_record = build_reconstruction(config, runtime)
        self.data = load_data(config, runtime, new=last is None)
        self.model = build_model(config, self.data.image_size, runtime)
        # what the run starts from, kept in its checkpoints (written by the first process alone): a resume can then
        # rebuild its untrained start and know it
        self.initial_weights = weights_fingerprint(self.model) if last is None and runtime.main else None
        training = config.training
        self.optimizer = build_optimizer(self.model, training.lr)
        self.scheduler = build_scheduler(self.optimizer, training)
        self.history: list[dict] = []
        self.writer: ThreadPoolExecutor | None = None  # writes the checkpoints (main process), `save`
        self.pending: Future | None = None
        self.best = math.inf
        self.epoch = 0
        if last is not None:
            self.restore(last)
        net = self.model
        if runtime.world > 1:
            ids = [runtime.device.index] if runtime.device.type == "cuda" else None
            net = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.objective = Objective(net, self.reconstruction, config.loss.alpha, config.loss.beta)
        self.eager_objective, self.compiled_batch, self.compiled_augmentation = self.objective, None, None
        wanted, why = compile_decision(config.runtime.compile, config.runtime.compile_mode, runtime.device)
        record = {"setting": config.runtime.compile, "why": why}
        self.compile_check = record | (self.compile(why) if wanted else {"used": False})

    def compile(self, why: str) -> dict:
        """Compile the training step: the whole objective, then the augmentation, each checked against eager
        execution on a training batch (vae.runtime). The objective's check runs on the bare model: a DDP
        wrapper expects a backward pass after every forward pass."""
        config, runtime = self.config, self.runtime
        self.log(f"{why}: compiling the training step and checking it against eager execution before the first "
                 "epoch (seconds to minutes; --compile no trains eagerly without the wait)")
        split = self.data.split
        train = np.concatenate([split.train_synthetic, split.train_natural_order])
        images, boxes = next(self.data.feed.batches([train[:config.training.batch_size]]))
        x = to_float(images, self.data.image_size).contiguous(memory_format=torch.channels_last)
        noise = torch.randn(x.shape[0], config.model.latent, generator=torch.Generator(device=x.device).manual_seed(0),
                            device=x.device)
        bare = Objective(self.model, self.reconstruction, config.loss.alpha, config.loss.beta)
        mode = config.runtime.compile_mode
        started = time.perf_counter()
        compiled, check = compile_checked(bare, self.model, x, noise, runtime, mode)
        if compiled is not None:
            self.objective = compile_objective(self.objective, mode) if runtime.world > 1 else compiled
            self.compiled_batch = x.shape[0]
            # the step's augmentation too, with draws of its own (the run's generators are not touched)
            params = draw(images, boxes, config.augment, torch.Generator(device=x.device).manual_seed(0),
                          self.data.image_size)
            self.compiled_augmentation, check["augmentation"] = compile_augmentation_checked(
                images, params, self.data.image_size)
        check["seconds"] = round(time.perf_counter() - started, 2)  # what compiling costs before the first epoch
        if check["error"]:
            self.log(f"{why}: torch.compile failed on this machine ({check['error']}); training without compiling. "
                     "Compiling needs a working C++ compiler for CPU code, and Triton for CUDA; eagerly the run is "
                     "the same, only slower (--compile no skips the attempt)")
        elif compiled is None:
            self.log(f"{why}: the compiled objective differs from eager execution by "
                     f"{check['mean_difference']:.3g} on average on a training batch (tolerance {check['tolerance']}), "
                     f"a torch.compile correctness bug in torch {torch.__version__}; training without compiling")
        else:
            self.log(f"compiled and checked in {check['seconds']:.0f} s (mean difference from eager execution "
                     f"{check['mean_difference']:.2g}); {augmentation_line(check['augmentation'])}")
        return check

    # -- one step, the same for training and validation

    def step(self, x: torch.Tensor, noise: torch.Tensor, learn: bool) -> dict[str, torch.Tensor]:
        """The objective on a batch; with `learn`, its gradient and an optimiser step too.

        Only training batches of the checked shape (full batches) go through the compiled objective, the
        graph checked against eager execution. Another batch shape would make torch.compile build a
        dynamic-shape graph, which nobody checked and which then serves every later batch (dynamo tries the
        newest graph first); validation (no gradient, eval mode) would get a graph of its own. Those batches,
        a few per epoch, run eagerly."""
        objective = self.objective if learn and x.shape[0] == self.compiled_batch else self.eager_objective
        with nullcontext() if learn else torch.no_grad(), self.runtime.autocast():
            terms = objective(x, noise)
        if learn:
            self.optimizer.zero_grad(set_to_none=True)
            terms["loss"].backward()
            self.optimizer.step()
        return terms

    def augmented(self, images: torch.Tensor, boxes: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A training batch augmented (vae.augment), its draws from `generator`; compiled for batches of the
        checked shape, as the objective is (`step` says why)."""
        params = draw(images, boxes, self.config.augment, generator, self.data.image_size)
        compiled = self.compiled_augmentation if images.shape[0] == self.compiled_batch else None
        return (compiled or apply)(images, params, self.data.image_size)

    # -- an epoch of training, a pass of validation

    def train_epoch(self) -> dict:
        config, runtime, training = self.config, self.runtime, self.config.training
        indices, fraction, n_natural = epoch_indices(self.data.split, self.epoch, training.seed,
                                                     config.data.natural_start, config.data.natural_ramp)
        batches = rank_batches(indices, training.batch_size, runtime.rank, runtime.world, training=True)
        self.objective.train()
        self.reconstruction.train()
        sums = torch.zeros(3, device=runtime.device)  # loss, kl, rec, summed over images (stays on the device)
        images_seen = 0
        finite = torch.ones((), device=runtime.device)
        check_every = 1 if runtime.device.type == "cpu" else 25  # a check waits for the GPU: not every step
        started = time.perf_counter()
        bar = tqdm(total=len(batches), desc=f"epoch {self.epoch}/{training.epochs}", unit="batch",
                   disable=not (runtime.main and config.runtime.progress), dynamic_ncols=True, leave=False)
        for step, (images, boxes) in enumerate(self.data.feed.batches(batches)):
            generator = step_generator(training.seed, self.epoch, step, runtime.rank, runtime.device)
            x = self.augmented(images, boxes, generator)
            noise = torch.randn(x.shape[0], config.model.latent, generator=generator, device=runtime.device)
            terms = self.step(x, noise, learn=True)
            n = x.shape[0]
            images_seen += n
            finite *= torch.isfinite(terms["loss"].detach())
            sums += torch.stack([terms["loss"].detach(), terms["kl"].detach(), terms["rec"].detach()]) * n
            if step % check_every == 0 or step == len(batches) - 1:
                if runtime.all_reduce(finite.clone(), dist.ReduceOp.MIN if runtime.world > 1 else None).item() == 0:
                    raise TrainingError(
                        f"non-finite loss (NaN or infinity) in epoch {self.epoch}, by step {step}: the run stops. "
                        f"The last good checkpoint, {self.out / 'last.pt'} (epoch {self.epoch - 1}), is intact. "
                        "Lower --lr, check the data, or resume from it.")
            bar.update()
        bar.close()
        totals = runtime.all_reduce(torch.cat([sums, torch.tensor([float(images_seen)], device=runtime.device)]))
        seconds = time.perf_counter() - started
        images = max(totals[3].item(), 1)
        return {"loss": totals[0].item() / images, "kl": totals[1].item() / images, "rec": totals[2].item() / images,
                "images": int(totals[3].item()), "seconds": seconds, "images_per_second": totals[3].item() / seconds,
                "natural_fraction": fraction, "natural_images": n_natural}

    def validate(self) -> dict:
        """The objective on the held-out images (fixed noise), per-dimension KL and active units."""
        config, runtime = self.config, self.runtime
        self.objective.eval()
        batches = rank_batches(self.data.split.validation, config.training.batch_size, runtime.rank, runtime.world)
        sums = torch.zeros(4, device=runtime.device, dtype=torch.float64)
        kl_dims = torch.zeros(config.model.latent, device=runtime.device, dtype=torch.float64)
        mu_sum = torch.zeros_like(kl_dims)
        mu_square = torch.zeros_like(kl_dims)
        for step, (images, _) in enumerate(self.data.feed.batches(batches)):
            generator = step_generator(config.training.seed, streams.VALIDATION_NOISE, step, runtime.rank,
                                       runtime.device)
            x = to_float(images, self.data.image_size).contiguous(memory_format=torch.channels_last)
            noise = torch.randn(x.shape[0], config.model.latent, generator=generator, device=runtime.device)
            terms = self.step(x, noise, learn=False)
            n = x.shape[0]
            sums += torch.stack([torch.tensor(float(n), device=runtime.device, dtype=torch.float64),
                                 terms["loss"].double() * n, terms["kl"].double() * n, terms["rec"].double() * n])
            kl_dims += terms["kl_per_dim"].double() * n
            mu_sum += terms["mu"].double().sum(0)
            mu_square += terms["mu"].double().square().sum(0)
        for tensor in (sums, kl_dims, mu_sum, mu_square):
            runtime.all_reduce(tensor)
        n = max(sums[0].item(), 1)
        variance = (mu_square / n - (mu_sum / n).square()).clamp(min=0)
        active = variance > config.training.active_threshold
        kl_dims = kl_dims / n
        return {"loss": sums[1].item() / n, "kl": sums[2].item() / n, "rec": sums[3].item() / n,
                "kl_per_dim": kl_dims.tolist(), "mu_variance": variance.tolist(),
                "active_dims": int(active.sum().item()),
                "kl_per_active_dim": kl_dims[active].mean().item() if active.any() else 0.0}

    # -- the end of an epoch: schedule, history, checkpoint, figures, log

    def end_epoch(self, train: dict, validation: dict) -> None:
        config, runtime = self.config, self.runtime
        self.scheduler.step(validation["loss"])
        improved = validation["loss"] < self.best
        self.best = min(self.best, validation["loss"])
        record = {"epoch": self.epoch, "lr": self.optimizer.param_groups[0]["lr"],
                  "natural_fraction": train.pop("natural_fraction"), "natural_images": train.pop("natural_images"),
                  "synthetic_images": int(self.data.split.train_synthetic.size), "train": train,
                  "validation": {k: validation[k] for k in ("loss", "kl", "rec")},
                  "active_dims": validation["active_dims"], "kl_per_active_dim": validation["kl_per_active_dim"],
                  "kl_per_dim": validation["kl_per_dim"], "mu_variance": validation["mu_variance"], "best": improved}
        self.history.append(record)
        if not runtime.main:
            return
        self.save(improved)
        self.figures()
        natural = (f"natural {record['natural_fraction']:.0%} ({record['natural_images']})  "
                   if self.data.split.train_natural_order.size else "")
        self.log(f"epoch {self.epoch:>3}/{config.training.epochs}  train {train['loss']:.4g} (KL {train['kl']:.4g}, "
                 f"rec {train['rec']:.4g})  validation {validation['loss']:.4g}  lr {record['lr']:.3g}  {natural}"
                 f"active dims {validation['active_dims']}/{config.model.latent} "
                 f"({validation['kl_per_active_dim']:.2f} nats each)  "
                 f"{train['images_per_second']:.0f} img/s" + ("  *best" if improved else ""))  # all processes

    # -- the loop

    def fit(self) -> None:
        while self.epoch < self.config.training.epochs:
            self.epoch += 1
            train = self.train_epoch()
            validation = self.validate()
            self.end_epoch(train, validation)

    # -- checkpoints, metrics and figures

    def _state(self, model: torch.nn.Module | None = None, epoch: int | None = None) -> dict:
        """A checkpoint of the run's model now (or of `model`, at `epoch`: the untrained start)."""
        state = {"model_config": self.model.config.to_json(), "train_config": json.dumps(to_dict(self.config)),
                 "data_sets": json.dumps(self.data.sets()), "world_size": self.runtime.world,
                 "model": (model or self.model).state_dict(), "epoch": self.epoch if epoch is None else epoch,
                 "best_validation_loss": self.best if epoch is None else math.inf}
        return state | ({"initial_weights": self.initial_weights} if self.initial_weights else {})

    def restore(self, state: dict) -> None:
        saved, now = saved_sets(state), self.data.sets()
        problem = sets_problem(saved, now) if saved is not None else None
        if problem:
            raise TrainingError(problem)
        for old, new in zip(saved or [], now):
            if old["path"] != new["path"]:
                self.log(f"{new['option']} {new['path']}: the run's set, moved from {old['path']} (the same build, "
                         f"{new['n_images']} images)")
        world, batch = int(state.get("world_size", self.runtime.world)), self.config.training.batch_size
        if world != self.runtime.world:  # allowed (a machine with fewer GPUs), but no longer the same run's steps
            self.log(f"note: the run trained in {world} process(es), a global batch of {world * batch}; it continues "
                     f"in {self.runtime.world}, a global batch of {self.runtime.world * batch}: from here its steps, "
                     "and so its weights, differ from those of an uninterrupted run")
        self.restore_split(state)
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.epoch, self.best = state["epoch"], state["best_validation_loss"]
            self.initial_weights = state.get("initial_weights")  # runs begun by an earlier vae-train have none
            self.history = json.loads(state["history"])
            torch.set_rng_state(state["torch_rng"].cpu())
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise CheckpointError(f"{self.out / 'last.pt'}: cannot continue from it: not the last.pt of this run's "
                                  f"settings ({str(exc)[:160]})") from None

    def restore_split(self, state: dict) -> None:
        """Go on with the images the run was split into: the split saved in last.pt, whatever this version would
        compute. A last.pt from before the split was saved has it checked against what config.json records."""
        now = self.data.split
        if "split" not in state:
            problem = split_problem(recorded_split(self.out / "config.json"), now.counts())
            if problem:
                raise TrainingError(f"--resume: {self.out}: this version of vae-train splits the run's images "
                                    f"otherwise than the version that started it ({problem}); continued, the run would "
                                    "train on other images, its validation images among them; continue it with the "
                                    "version that started it, or start a new run in another --out")
            return
        try:
            saved = Split.from_state(state["split"])
        except (KeyError, AttributeError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{self.out / 'last.pt'}: its saved split cannot be read ({str(exc)[:160]})"
                                  ) from None
        indices = np.concatenate([saved.train_synthetic, saved.train_natural_order, saved.validation])
        if indices.size and not 0 <= indices.min() <= indices.max() < len(self.data.pool):
            raise CheckpointError(f"{self.out / 'last.pt'}: its saved split names images up to {indices.max()}, and "
                                  f"the run's sets hold {len(self.data.pool)}; not the last.pt of these sets")
        if not saved.same_as(now):
            self.log("note: this version of vae-train would split the run's images otherwise; the run goes on with "
                     "the split it started with, saved in its last.pt")
        self.data.split = saved

    def save(self, improved: bool) -> None:
        """This epoch's checkpoints (last.pt; best.pt when the validation loss improved; the kept epoch's model),
        then metrics.jsonl from the same history, written by a thread of their own while the next epoch trains
        (the paper model's 3 GB take seconds). What they hold is copied first, so they are this epoch's whatever
        training does meanwhile. One epoch's writing at a time: a failed write stops the run at the next epoch's
        end, or at its own (`written`), last.pt then still that of the epoch before."""
        self.written()
        model = detached_copy(self._state())
        last = model | detached_copy({
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "split": self.data.split.to_state(), "history": json.dumps(self.history),
            "torch_rng": torch.get_rng_state(), "natural_fraction": self.history[-1]["natural_fraction"]})
        every = self.config.training.save_every
        kept = every and self.epoch % every == 0
        out, metrics = self.out, self.metrics_text()

        def write() -> None:
            save_checkpoint(out / "last.pt", last)
            if improved:
                save_checkpoint(out / "best.pt", model)
            if kept:
                save_kept_epoch(out, model)
            write_atomic(out / "metrics.jsonl", metrics)  # after the checkpoint, from its history: the two agree

        if self.writer is None:
            self.writer = ThreadPoolExecutor(1, thread_name_prefix="vae-train-checkpoints")
        self.pending = self.writer.submit(write)

    def written(self) -> None:
        """Wait until the checkpoints and metrics that `save` gave its thread are on disk; raise what stopped them."""
        pending, self.pending = self.pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        """Let the checkpoint thread finish what it was given (an interrupted or failed run keeps its last epoch's
        checkpoint whole, and no temporary file), then end it."""
        if self.writer is not None:
            self.writer.shutdown(wait=True)
            self.writer = None

    def save_epoch(self, state: dict | None = None) -> None:
        """This epoch's model, or the checkpoint `state` (the untrained start), kept now (`save_kept_epoch`)."""
        save_kept_epoch(self.out, state or self._state())

    def untrained_start(self) -> dict | None:
        """The untrained start (epoch 0) of a resumed run, rebuilt from its seed, as a checkpoint state: for a run that
        kept no epochs before --save-every. None, with the reason in the log, when the rebuilt weights are not the
        ones the run started from (another torch may initialise otherwise), or its checkpoint does not say which."""
        model = build_model(self.config, self.data.image_size, self.runtime)
        if self.initial_weights and weights_fingerprint(model) == self.initial_weights:
            return self._state(model, epoch=0)
        why = (f"the model torch {torch.__version__} initialises from the run's seed is not the one the run started "
               "from" if self.initial_weights else "the run began with an earlier vae-train, whose checkpoints do not "
               "record the weights it started from")
        self.log(f"note: --save-every: the untrained start (epoch 0) cannot be kept: {why}")
        return None

    def metrics_text(self) -> bytes:
        return "".join(json_text(record, indent=None) + "\n" for record in self.history).encode()

    def write_metrics(self) -> None:
        write_atomic(self.out / "metrics.jsonl", self.metrics_text())

    def figures(self) -> None:
        """Inputs against their posterior-mean reconstructions, and the loss curves (main process)."""
        self.model.eval()
        chosen = self.data.split.validation[:8]
        x = to_float(torch.from_numpy(self.data.pool.images(chosen)).to(self.runtime.device), self.data.image_size)
        with torch.no_grad():
            mu, _ = self.model.encode(x.contiguous(memory_format=torch.channels_last))
            x_hat = self.model.decode(mu)
        folder = self.out / "reconstructions"
        folder.mkdir(exist_ok=True)
        record = self.history[-1]
        title = (f"epoch {self.epoch}: validation loss {record['validation']['loss']:.4g}, "
                 f"{record['active_dims']} active dimensions")
        path = folder / f"epoch-{self.epoch:04d}.png"
        as_numpy = [t.permute(0, 2, 3, 1).float().cpu().numpy() for t in (x, x_hat)]
        reconstruction_grid(*as_numpy, path, title)
        shutil.copyfile(path, self.out / "reconstruction.png")
        loss_curves(self.history, self.out / "loss_curves.png")


# ---------------------------------------------------------------------------------------------- the command


SPLIT_RECORD = {"synthetic_train": "synthetic training images", "natural_train": "natural training images",
                "validation": "validation images", "natural_dropped_per_class": "natural examples removed per class"}


def recorded_split(config_json: Path) -> dict | None:
    """The counts of the split that a run's config.json records (Split.counts); None where it holds none."""
    try:
        data = json.loads(config_json.read_text())["data"]
        record = {key: data[key] for key in SPLIT_RECORD}
        record["natural_dropped_per_class"] = {int(k): v for k, v in record["natural_dropped_per_class"].items()}
        return record
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def split_problem(recorded: dict | None, now: dict) -> str | None:
    """Where the split computed now departs from the one recorded, in words; None where they agree or nothing
    was recorded."""
    if recorded is None:
        return None
    return "; ".join(f"{label}: {recorded[key]} recorded in config.json, {now[key]} now"
                     for key, label in SPLIT_RECORD.items() if recorded[key] != now[key]) or None


def machine(runtime: Runtime) -> str:
    """The main process's machine, its GPU when it trains on one: the images/s of metrics.jsonl depend on it."""
    return describe_machine("numpy", "torch", gpu=runtime.device.type == "cuda")


def describe_run(run: Run, config: TrainConfig, runtime: Runtime, resume: bool, command: list[str],
                 start: dict | None = None) -> dict:
    """config.json's record, and the opening lines of the log (`start`: a resumed run's untrained start, to keep)."""
    split = run.data.split
    record = {"train": to_dict(config), "model": json.loads(run.model.config.to_json()),
              "parameters": parameter_counts(run.model), "vgg": run.vgg_record, "world_size": runtime.world,
              "optimizer": {"name": "Adam", "fused": bool(run.optimizer.defaults.get("fused"))},
              "compile": run.compile_check, "device": str(runtime.device), "amp": "bf16" if runtime.amp else "off",
              "torch": torch.__version__, "machine": machine(runtime), "command": command,
              "data": {**split.counts(), "sets": run.data.sets(), "feed": asdict(run.data.feed_choice)}}
    run.log(describe(run.model))
    run.log(f"data: {record['data']['synthetic_train']} synthetic and {record['data']['natural_train']} natural "
            f"training images, {record['data']['validation']} held out; natural examples removed for class balance: "
            f"{split.dropped or 'none'}")
    mixing = mixing_plan(config.training.epochs, config.data.natural_start, config.data.natural_ramp,
                         int(split.train_natural_order.size))
    if mixing:
        run.log(mixing)
    run.log(f"loss: {config.loss.alpha} * KL + {config.loss.beta} * {config.loss.recon} reconstruction "
            f"({config.loss.rec_reduction} over elements per image, mean over the batch); VGG weights: "
            f"{(run.vgg_record or {}).get('source', 'not used')}")
    run.log(f"device {runtime.device} x {runtime.world} process(es), amp {'bf16' if runtime.amp else 'off'}, "
            f"{'compiled' if run.compiled_batch else 'eager'}, {run.data.feed_choice.line()}"
            + (f", resuming after epoch {run.epoch}" if resume else ""))
    if config.training.save_every:
        epochs = kept_epochs(run.epoch, config.training.epochs, config.training.save_every, new=not resume)
        each = sum(t.numel() * t.element_size() for t in run.model.state_dict().values())
        run.log(kept_epochs_line(epochs, each, shutil.disk_usage(run.out).free, start=start is not None))
    return record


def claim_run_folder(out: Path, last: dict | None) -> FolderLock:
    """Hold the run folder for this process (common.locks): a second vae-train on it is refused, and so is this
    one if another took the folder between the command's checks and now, starting a run there (`last` None)
    or continuing it past `last`, the checkpoint this one would continue from."""
    lock = FolderLock(out, "vae-train", doing="training the run there").acquire()
    try:
        if last is None and holds_run(out):
            raise TrainingError(f"--out {out}: another vae-train started a run there meanwhile; add --resume to "
                                "continue it, or choose another --out")
        if last is not None and load_checkpoint(out / "last.pt", mmap=True)["epoch"] != last["epoch"]:
            raise TrainingError(f"--resume: the run in {out} went on while this command started (another vae-train "
                                "continued it); run the command again to continue from where it is now")
    except BaseException:
        lock.release()
        raise
    return lock


def train(config: TrainConfig, last: dict | None, command: list[str]) -> int:
    """Train the run in config.out, or continue it from `last`, its last checkpoint. The run folder appears only
    once everything is set up (a run that fails to start leaves nothing behind), and is this process's from
    then on (claim_run_folder)."""
    runtime = setup_runtime(config.runtime)
    resume = last is not None
    out = Path(config.out)
    lock = run = None
    try:
        log = print if runtime.main else (lambda *a, **k: None)
        run = Run(config, runtime, last, log)
        if runtime.main:  # under DDP, the processes are one run, written by the first
            lock = claim_run_folder(out, last)  # at its first write, once every input has been checked
            if resume:
                run.write_metrics()  # drop lines of an epoch that was cut off before its checkpoint
            # the untrained start: what training adds is measured against it
            start = None
            if resume and config.training.save_every and not (out / EPOCHS_FOLDER / "epoch-0000.pt").exists():
                start = run.untrained_start()
            record = describe_run(run, config, runtime, resume, command, start)
            write_atomic(out / "config.json", json_text(record).encode())
            if not resume and config.training.save_every:
                run.save_epoch()
            elif start is not None:
                run.save_epoch(start)
        run.fit()
        run.written()
        kept = f", {out / EPOCHS_FOLDER}/epoch-*.pt" if (out / EPOCHS_FOLDER).is_dir() else ""
        log(f"done: {out / 'last.pt'}, {out / 'best.pt'} (best validation loss {run.best:.4g}){kept}, "
            f"{out / 'reconstruction.png'}, {out / 'loss_curves.png'}, {out / 'metrics.jsonl'}")
        return 0
    finally:
        if run is not None:
            run.close()
        if lock is not None:
            lock.release()
        runtime.close()


if __name__ == "__main__":  # `python -m vae.train ...`, as torchrun starts it
    from vae.cli import main

    sys.exit(main())
