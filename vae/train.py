"""vae-train: train the paper's VAE on synthgen shards (synthetic first, natural images mixed in).

Read top to bottom: configuration -> setup (devices, processes) -> data -> model, loss, optimiser ->
the epoch loop (train, validate, log, checkpoint) -> main. One process per GPU under `torchrun`
(DistributedDataParallel); one process on CPU or a single GPU otherwise.

Reproducibility: the initial weights come from the seed; every random draw of a training step
(augmentation, the reparameterisation noise) from a generator seeded by (seed, epoch, step, rank);
the epoch's images and their order from (seed, epoch). So `--resume` from the last finished epoch
repeats exactly what an uninterrupted run would have done.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import shutil
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from synthgen.atomic import write_atomic
from vae.augment import AugmentConfig, augment, to_float
from vae.checkpoint import load_checkpoint, save_checkpoint
from vae.data import Pool, epoch_indices, make_feed, rank_batches, split_pool
from vae.losses import PerceptualLoss, PixelLoss, vae_loss
from vae.model import PAPER_DECODER, PAPER_ENCODER, VAE, ModelConfig, describe, parameter_counts
from vae.plots import loss_curves, reconstruction_grid
from vae.spec import SpecError
from vae.vgg import VGGWeightsError, load_vgg

STREAM_STEP, STREAM_VALIDATION_NOISE, STREAM_INIT = 21, 22, 23
# Mean absolute difference of outputs in [0, 1] between compiled and eager: bf16 rounding gives about
# 0.0015, the torch 2.14.1 CPU miscompilation about 0.07.
COMPILE_TOLERANCE = 0.01


# ---------------------------------------------------------------------------------------------- config


@dataclass
class TrainConfig:
    """Every setting of a run; saved as config.json in the run folder."""

    data: list[str] = field(default_factory=list)  # synthgen build sets
    natural: list[str] = field(default_factory=list)  # synthgen pack sets (training split only)
    out: str = ""
    # model (defaults: the paper)
    image_size: int | None = None  # None: the sets' own size
    encoder: str = PAPER_ENCODER
    decoder: str = PAPER_DECODER
    output_layer: str = "3@3x3-1"
    latent: int = 180
    # loss
    alpha: float = 1.0
    beta: float = 0.03
    recon: str = "perceptual"
    rec_reduction: str = "sum"
    vgg_weights: str | None = None
    # optimisation and the recipe of section 4.2
    epochs: int = 140
    batch_size: int = 64
    lr: float = 0.0015
    lr_factor: float = 0.2
    lr_patience: int = 4
    val_fraction: float = 0.05
    natural_start: int = 20
    natural_ramp: int = 20
    natural_drop: float = 0.1
    flip_prob: float = 0.5
    crop_max: float = 0.1
    brightness: float = 0.1
    contrast: float = 0.1
    saturation: float = 0.1
    hue: float = 0.02
    seed: int = 0
    active_threshold: float = 0.01
    # speed (these may change between a run and its --resume)
    device: str = "auto"
    amp: str = "auto"
    channels_last: bool = True
    compile: bool = False
    data_on_device: str = "auto"
    workers: int = 4
    sync_bn: bool = False

    RUNTIME = ("device", "amp", "channels_last", "compile", "data_on_device", "workers", "sync_bn")

    def model_config(self, image_size: int) -> ModelConfig:
        return ModelConfig(image_size=image_size, encoder=self.encoder, decoder=self.decoder,
                           output_layer=self.output_layer, latent=self.latent)

    def augment_config(self) -> AugmentConfig:
        return AugmentConfig(self.flip_prob, self.crop_max, self.brightness, self.contrast, self.saturation, self.hue)


class TrainingError(RuntimeError):
    """A problem the user can fix; the message says what and how."""


# ---------------------------------------------------------------------------------------------- setup


@dataclass
class Runtime:
    device: torch.device
    rank: int
    world: int
    amp: bool

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_runtime(config: TrainConfig) -> Runtime:
    """Devices and processes: one process per GPU under torchrun, else a single process."""
    distributed = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    use_cuda = config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise TrainingError("--device cuda: no CUDA device is available here")
    rank, world, local = 0, 1, 0
    if distributed:
        dist.init_process_group("nccl" if use_cuda else "gloo")
        rank, world, local = dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0))
    if use_cuda:
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        device = torch.device("cpu")
    amp = config.amp == "bf16" or (config.amp == "auto" and use_cuda)
    return Runtime(device, rank, world, amp)


def step_generator(seed: int, epoch: int, step: int, rank: int, device: torch.device) -> torch.Generator:
    """The generator of one training step's random draws."""
    state = np.random.SeedSequence([seed, STREAM_STEP, epoch, step, rank]).generate_state(1, np.uint64)[0]
    return torch.Generator(device=device).manual_seed(int(state))


def all_reduce(tensor: torch.Tensor, runtime: Runtime, op=None) -> torch.Tensor:
    if runtime.world > 1:
        dist.all_reduce(tensor, op=op or dist.ReduceOp.SUM)
    return tensor


def compiled_difference(eager, compiled, model: VAE, x: torch.Tensor, amp: bool) -> tuple[float, float]:
    """Mean and largest absolute difference of the reconstructions of `compiled` and `eager` (the same
    weights) on a batch in train mode with autograd on, so that the training graph is the one compiled.
    `model`'s BatchNorm statistics, which train-mode forwards move, are restored afterwards."""
    saved = copy.deepcopy(model.state_dict())
    model.train()
    noise = torch.randn(x.shape[0], model.config.latent, generator=torch.Generator(device=x.device).manual_seed(0),
                        device=x.device)
    with torch.autocast(x.device.type, dtype=torch.bfloat16) if amp else nullcontext():
        difference = (eager(x, noise)[0].detach().float() - compiled(x, noise)[0].detach().float()).abs()
    model.load_state_dict(saved)
    return difference.mean().item(), difference.max().item()


# ---------------------------------------------------------------------------------------------- the run


class Run:
    """One training run: its data, model, optimiser, run folder and history."""

    def __init__(self, config: TrainConfig, runtime: Runtime, resume: bool, log):
        self.config, self.runtime, self.log = config, runtime, log
        self.out = Path(config.out)
        self.pool = Pool(config.data, config.natural)
        self.split = split_pool(self.pool, config.seed, config.val_fraction, config.natural_drop)
        if self.split.validation.size == 0:
            raise TrainingError(f"--val-fraction {config.val_fraction}: no validation images; raise it or add data")
        self.image_size = config.image_size or self.pool.image_size
        self.feed = make_feed(self.pool, runtime.device, config.data_on_device, config.workers)

        with torch.random.fork_rng(devices=[]):  # the initial weights come from the seed too
            torch.manual_seed(int(np.random.SeedSequence([config.seed, STREAM_INIT]).generate_state(1)[0]))
            self.model = VAE(config.model_config(self.image_size)).to(runtime.device)
        if config.sync_bn and runtime.world > 1:
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        if config.recon == "perceptual":
            vgg, self.vgg_record = load_vgg(config.vgg_weights)
            self.reconstruction = PerceptualLoss(vgg, config.rec_reduction).to(runtime.device)
        else:
            self.vgg_record = None
            self.reconstruction = PixelLoss(config.rec_reduction)
        if config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
            self.reconstruction = self.reconstruction.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(self.optimizer, mode="min",
                                                                    factor=config.lr_factor,
                                                                    patience=config.lr_patience)
        self.history: list[dict] = []
        self.best = math.inf
        self.epoch = 0
        if resume:
            self._restore(load_checkpoint(self.out / "last.pt", map_location=runtime.device))
            if runtime.main:
                self.write_metrics()  # drop lines of an epoch that was cut off before its checkpoint
        self.net = self.model
        if runtime.world > 1:
            ids = [runtime.device.index] if runtime.device.type == "cuda" else None
            self.net = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.compile_check = None
        if config.compile:
            self._compile()

    def _compile(self) -> None:
        """torch.compile the model only if it computes what eager execution computes: Inductor has had
        silent correctness bugs around BatchNorm (torch 2.14.1 on CPU gets conv -> LeakyReLU ->
        BatchNorm wrong for some shapes). The check uses the bare model: a DDP wrapper expects a
        backward pass after every forward pass."""
        compiled = torch.compile(self.model)
        train = np.concatenate([self.split.train_synthetic, self.split.train_natural_order])
        images, _ = next(self.feed.batches([train[:self.config.batch_size]]))
        x = to_float(images, self.image_size).contiguous(memory_format=torch.channels_last)
        mean, largest = compiled_difference(self.model, compiled, self.model, x, self.runtime.amp)
        used = mean <= COMPILE_TOLERANCE
        self.compile_check = {"requested": True, "used": used, "mean_difference": mean,
                              "max_difference": largest, "tolerance": COMPILE_TOLERANCE}
        if used:
            self.net = torch.compile(self.net) if self.runtime.world > 1 else compiled
        else:
            self.log(f"--compile: the compiled model differs from eager execution by {mean:.3g} on average on a "
                     f"training batch (tolerance {COMPILE_TOLERANCE}), a torch.compile correctness bug in torch "
                     f"{torch.__version__}; training without compiling instead")

    # -- checkpoints

    def _state(self) -> dict:
        return {"model_config": self.model.config.to_json(),
                "train_config": json.dumps(dataclasses.asdict(self.config)),
                "model": self.model.state_dict(), "epoch": self.epoch, "best_validation_loss": self.best}

    def _restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.best = state["epoch"], state["best_validation_loss"]
        self.history = json.loads(state["history"])
        torch.set_rng_state(state["torch_rng"].cpu())

    def write_metrics(self) -> None:
        write_atomic(self.out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in self.history).encode())

    def save(self, improved: bool) -> None:
        state = self._state()
        state.update({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                      "history": json.dumps(self.history), "torch_rng": torch.get_rng_state(),
                      "natural_fraction": self.history[-1]["natural_fraction"]})
        save_checkpoint(self.out / "last.pt", state)
        if improved:
            save_checkpoint(self.out / "best.pt", self._state())

    # -- one epoch

    def train_epoch(self) -> dict:
        config, runtime = self.config, self.runtime
        indices, fraction, n_natural = epoch_indices(self.split, self.epoch, config.seed, config.natural_start,
                                                     config.natural_ramp)
        batches = rank_batches(indices, config.batch_size, runtime.rank, runtime.world)
        self.net.train()
        self.reconstruction.train()
        sums = torch.zeros(3, device=runtime.device)  # loss, kl, rec, summed over images (stays on the device)
        images_seen = 0
        finite = torch.ones((), device=runtime.device)
        check_every = 1 if runtime.device.type == "cpu" else 25  # a check waits for the GPU: not every step
        started = time.perf_counter()
        bar = tqdm(total=len(batches), desc=f"epoch {self.epoch}/{config.epochs}", unit="batch",
                   disable=not runtime.main, dynamic_ncols=True, leave=False)
        for step, (images, boxes) in enumerate(self.feed.batches(batches)):
            generator = step_generator(config.seed, self.epoch, step, runtime.rank, runtime.device)
            x = augment(images, boxes, config.augment_config(), generator, self.image_size)
            noise = torch.randn(x.shape[0], config.latent, generator=generator, device=runtime.device)
            with torch.autocast(runtime.device.type, dtype=torch.bfloat16) if runtime.amp else nullcontext():
                x_hat, mu, sigma = self.net(x, noise)
                terms = vae_loss(x, x_hat.float(), mu, sigma, self.reconstruction, config.alpha, config.beta)
            self.optimizer.zero_grad(set_to_none=True)
            terms["loss"].backward()
            self.optimizer.step()
            n = x.shape[0]
            images_seen += n
            finite *= torch.isfinite(terms["loss"].detach())
            sums += torch.stack([terms["loss"].detach(), terms["kl"].detach(), terms["rec"].detach()]) * n
            if step % check_every == 0 or step == len(batches) - 1:
                if all_reduce(finite.clone(), runtime, dist.ReduceOp.MIN if runtime.world > 1 else None).item() == 0:
                    raise TrainingError(
                        f"non-finite loss (NaN or infinity) in epoch {self.epoch}, by step {step}: the run stops. "
                        f"The last good checkpoint, {self.out / 'last.pt'} (epoch {self.epoch - 1}), is intact. "
                        "Lower --lr, check the data, or resume from it.")
            bar.update()
        bar.close()
        totals = all_reduce(torch.cat([sums, torch.tensor([float(images_seen)], device=runtime.device)]), runtime)
        seconds = time.perf_counter() - started
        images = max(totals[3].item(), 1)
        return {"loss": totals[0].item() / images, "kl": totals[1].item() / images, "rec": totals[2].item() / images,
                "images": int(totals[3].item()), "seconds": seconds, "images_per_second": totals[3].item() / seconds,
                "natural_fraction": fraction, "natural_images": n_natural}

    @torch.no_grad()
    def validate(self) -> dict:
        """The objective on the held-out images (fixed noise), per-dimension KL and active units."""
        config, runtime = self.config, self.runtime
        self.net.eval()
        batches = rank_batches(self.split.validation, config.batch_size, runtime.rank, runtime.world)
        sums = torch.zeros(4, device=runtime.device, dtype=torch.float64)
        kl_dims = torch.zeros(config.latent, device=runtime.device, dtype=torch.float64)
        mu_sum = torch.zeros_like(kl_dims)
        mu_square = torch.zeros_like(kl_dims)
        for step, (images, _) in enumerate(self.feed.batches(batches)):
            generator = step_generator(config.seed, STREAM_VALIDATION_NOISE, step, runtime.rank, runtime.device)
            x = to_float(images, self.image_size).contiguous(memory_format=torch.channels_last)
            noise = torch.randn(x.shape[0], config.latent, generator=generator, device=runtime.device)
            with torch.autocast(runtime.device.type, dtype=torch.bfloat16) if runtime.amp else nullcontext():
                x_hat, mu, sigma = self.net(x, noise)
                terms = vae_loss(x, x_hat.float(), mu, sigma, self.reconstruction, config.alpha, config.beta)
            n = x.shape[0]
            sums += torch.stack([torch.tensor(float(n), device=runtime.device, dtype=torch.float64),
                                 terms["loss"].double() * n, terms["kl"].double() * n, terms["rec"].double() * n])
            kl_dims += terms["kl_per_dim"].double() * n
            mu_sum += mu.double().sum(0)
            mu_square += mu.double().square().sum(0)
        for tensor in (sums, kl_dims, mu_sum, mu_square):
            all_reduce(tensor, runtime)
        n = max(sums[0].item(), 1)
        variance = (mu_square / n - (mu_sum / n).square()).clamp(min=0)
        return {"loss": sums[1].item() / n, "kl": sums[2].item() / n, "rec": sums[3].item() / n,
                "kl_per_dim": (kl_dims / n).tolist(), "mu_variance": variance.tolist(),
                "active_dims": int((variance > config.active_threshold).sum().item())}

    def figures(self) -> None:
        """Inputs against their posterior-mean reconstructions, and the loss curves (main process)."""
        self.model.eval()
        chosen = self.split.validation[:8]
        x = to_float(torch.from_numpy(self.pool.images(chosen)).to(self.runtime.device), self.image_size)
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

    # -- the loop

    def fit(self) -> None:
        config, runtime = self.config, self.runtime
        while self.epoch < config.epochs:
            self.epoch += 1
            train = self.train_epoch()
            validation = self.validate()
            self.scheduler.step(validation["loss"])
            improved = validation["loss"] < self.best
            self.best = min(self.best, validation["loss"])
            record = {"epoch": self.epoch, "lr": self.optimizer.param_groups[0]["lr"],
                      "natural_fraction": train.pop("natural_fraction"), "natural_images": train.pop("natural_images"),
                      "synthetic_images": int(self.split.train_synthetic.size), "train": train,
                      "validation": {k: validation[k] for k in ("loss", "kl", "rec")},
                      "active_dims": validation["active_dims"], "kl_per_dim": validation["kl_per_dim"],
                      "mu_variance": validation["mu_variance"], "best": improved}
            self.history.append(record)
            if runtime.main:
                self.save(improved)
                self.write_metrics()  # after the checkpoint, from its history: the two always agree
                self.figures()
                natural = (f"natural {record['natural_fraction']:.0%} ({record['natural_images']})  "
                           if self.split.train_natural_order.size else "")
                self.log(f"epoch {self.epoch:>3}/{config.epochs}  train {train['loss']:.4g} (KL {train['kl']:.4g}, "
                         f"rec {train['rec']:.4g})  validation {validation['loss']:.4g}  lr {record['lr']:.3g}  "
                         f"{natural}active dims {validation['active_dims']}/{config.latent}  "
                         f"{train['images_per_second'] * runtime.world:.0f} img/s" + ("  *best" if improved else ""))


# ---------------------------------------------------------------------------------------------- command line


def make_parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    p = argparse.ArgumentParser(prog="vae-train", description="Train the paper's convolutional VAE with a VGG-19 "
                                "feature perceptual loss on synthgen shards. Defaults are the paper's recipe.")
    p.add_argument("--data", nargs="+", default=[], help="synthetic sets (synthgen build output folders)")
    p.add_argument("--natural", nargs="*", default=[], help="natural sets (synthgen pack of the training split); "
                   "mixed in after --natural-start epochs")
    p.add_argument("--out", required=True, help="run folder: config, metrics, figures, checkpoints")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint "
                   "(its saved settings are used; only speed options and --epochs may be given)")
    m = p.add_argument_group("model (N@KxK-S notation; defaults: the paper)")
    m.add_argument("--encoder", default=d.encoder, help="encoder convolutions (default: %(default)s)")
    m.add_argument("--decoder", default=d.decoder, help="decoder transposed convolutions (default: %(default)s)")
    m.add_argument("--output-layer", default=d.output_layer, help="last layer to RGB (default: %(default)s)")
    m.add_argument("--latent", type=int, default=d.latent, help="latent dimensions (default: %(default)s)")
    m.add_argument("--image-size", type=int, default=None, help="train at this size, resizing the sets' images "
                   "(default: the sets' own size)")
    loss = p.add_argument_group("loss: alpha * KL + beta * L_rec")
    loss.add_argument("--alpha", type=float, default=d.alpha, help="KL weight (default: %(default)s)")
    loss.add_argument("--beta", type=float, default=d.beta, help="reconstruction weight (default: %(default)s)")
    loss.add_argument("--recon", choices=("perceptual", "pixel"), default=d.recon,
                      help="VGG-19 feature perceptual loss, or the plain pixel loss (default: %(default)s)")
    loss.add_argument("--rec-reduction", choices=("sum", "mean"), default=d.rec_reduction,
                      help="per image: sum or mean over each layer's elements; always the mean over the batch, "
                      "KL summed over latent dimensions (default: %(default)s)")
    loss.add_argument("--vgg-weights", default=None, help="state dict of torchvision vgg19().features (full or up "
                      "to relu3_1); default: torchvision's file in the torch hub cache; 'random' for tests only")
    o = p.add_argument_group("optimisation and data recipe (section 4.2)")
    for name, help_text in (("epochs", "epochs"), ("batch_size", "images per step and process"),
                            ("lr", "Adam learning rate"), ("lr_factor", "learning-rate factor on a plateau"),
                            ("lr_patience", "epochs without improvement of the validation loss before the factor"),
                            ("val_fraction", "share of every set held out for validation"),
                            ("natural_start", "synthetic-only epochs before natural images join"),
                            ("natural_ramp", "epochs over which all natural training images join"),
                            ("natural_drop", "share of the most frequent natural classes removed"),
                            ("flip_prob", "horizontal flip probability"),
                            ("crop_max", "largest share of the side a crop trims (crops keep every object)"),
                            ("brightness", "brightness jitter"), ("contrast", "contrast jitter"),
                            ("saturation", "saturation jitter"), ("hue", "hue jitter in turns"),
                            ("seed", "seed of every random draw"),
                            ("active_threshold", "variance of the posterior mean above which a dimension is active")):
        default = getattr(d, name)
        o.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default,
                       help=f"{help_text} (default: %(default)s)")
    s = p.add_argument_group("speed (may change on --resume)")
    s.add_argument("--device", choices=("auto", "cuda", "cpu"), default=d.device, help="(default: %(default)s)")
    s.add_argument("--amp", choices=("auto", "bf16", "off"), default=d.amp,
                   help="bf16 autocast; auto: on CUDA only (default: %(default)s)")
    s.add_argument("--no-channels-last", dest="channels_last", action="store_false", help="keep NCHW memory layout")
    s.add_argument("--compile", action="store_true", help="torch.compile the model (kept only if it matches eager "
                   "execution on a training batch)")
    s.add_argument("--data-on-device", choices=("auto", "yes", "no"), default=d.data_on_device,
                   help="load the sets once into the device's memory; auto: when they take under half of the free "
                   "memory (default: %(default)s)")
    s.add_argument("--workers", type=int, default=d.workers, help="DataLoader workers reading shards when the data "
                   "stays on disk (default: %(default)s)")
    s.add_argument("--sync-bn", action="store_true", help="synchronise BatchNorm statistics across GPUs")
    return p


def config_from_args(args, parser) -> tuple[TrainConfig, bool]:
    """A new run's config from the arguments, or a resumed run's saved config (with speed options)."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    given = {k: v for k, v in vars(args).items() if k in names}
    if not args.resume:
        if not args.data:
            parser.error("--data is required (one or more synthgen build folders)")
        config = TrainConfig(**given)
        out = Path(config.out)
        if (out / "last.pt").exists() or (out / "metrics.jsonl").exists():
            raise TrainingError(f"--out {out}: already holds a run; add --resume to continue it, or choose another "
                                "--out")
        return config, False
    saved_path = Path(args.out) / "config.json"
    if not saved_path.exists() or not (Path(args.out) / "last.pt").exists():
        raise TrainingError(f"--resume: {args.out} holds no run with a checkpoint to continue (config.json and "
                            "last.pt are needed)")
    saved = json.loads(saved_path.read_text())["train"]
    defaults = vars(parser.parse_args(["--out", args.out]))
    changed = sorted(k for k in names - set(TrainConfig.RUNTIME) - {"out", "epochs"} if given[k] != defaults[k])
    if changed:
        options = ", ".join("--" + k.replace("_", "-") for k in changed)
        raise TrainingError(f"--resume continues with the run's saved settings; drop {options}")
    saved.update({k: given[k] for k in TrainConfig.RUNTIME})
    if given["epochs"] != defaults["epochs"]:  # extending (or shortening) a run is allowed
        saved["epochs"] = given["epochs"]
    return TrainConfig(**saved), True


def main(argv=None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    runtime = None
    try:
        config, resume = config_from_args(args, parser)
        runtime = setup_runtime(config)
        log = print if runtime.main else (lambda *a, **k: None)
        out = Path(config.out)
        if runtime.main:
            out.mkdir(parents=True, exist_ok=True)
        run = Run(config, runtime, resume, log)
        if runtime.main:
            counts = parameter_counts(run.model)
            record = {"train": dataclasses.asdict(config), "model": json.loads(run.model.config.to_json()),
                      "parameters": counts, "vgg": run.vgg_record, "world_size": runtime.world,
                      "compile": run.compile_check,
                      "device": str(runtime.device), "amp": "bf16" if runtime.amp else "off",
                      "torch": torch.__version__,
                      "command": ["vae-train", *(argv if argv is not None else sys.argv[1:])],
                      "data": {"synthetic_train": int(run.split.train_synthetic.size),
                               "natural_train": int(run.split.train_natural_order.size),
                               "validation": int(run.split.validation.size),
                               "natural_dropped_per_class": run.split.dropped}}
            (out / "config.json").write_text(json.dumps(record, indent=1) + "\n")
            log(describe(run.model))
            log(f"data: {record['data']['synthetic_train']} synthetic and {record['data']['natural_train']} natural "
                f"training images, {record['data']['validation']} held out; natural examples removed for class "
                f"balance: {run.split.dropped or 'none'}")
            log(f"loss: {config.alpha} * KL + {config.beta} * {config.recon} reconstruction "
                f"({config.rec_reduction} over elements per image, mean over the batch); VGG weights: "
                f"{(run.vgg_record or {}).get('source', 'not used')}")
            log(f"device {runtime.device} x {runtime.world} process(es), amp {'bf16' if runtime.amp else 'off'}, "
                f"data {'in device memory' if type(run.feed).__name__ == 'MemoryFeed' else 'read by workers'}"
                + (f", resuming after epoch {run.epoch}" if resume else ""))
        run.fit()
        if runtime.main:
            log(f"done: {out / 'last.pt'}, {out / 'best.pt'} (best validation loss {run.best:.4g}), "
                f"{out / 'reconstruction.png'}, {out / 'loss_curves.png'}, {out / 'metrics.jsonl'}")
        return 0
    except (TrainingError, VGGWeightsError, SpecError, ValueError, FileNotFoundError) as exc:
        print(f"vae-train: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("vae-train: interrupted; continue with --resume (from the last finished epoch)", file=sys.stderr)
        return 130
    finally:
        if runtime is not None and runtime.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
