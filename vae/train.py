"""vae-train: train the paper's VAE on synthgen shards (synthetic first, natural images mixed in).

Read top to bottom: setup (devices, processes) -> the run (data, model, loss, optimiser) -> the epoch
loop (train, validate, log, checkpoint) -> `train`, which the command line (vae.cli) calls with
checked settings (vae.config). One process per GPU under `torchrun` (DistributedDataParallel); one
process on CPU or a single GPU otherwise.

Reproducibility: the initial weights come from the seed; every random draw of a training step
(augmentation, the reparameterisation noise) from a generator seeded by (seed, epoch, step, rank);
the epoch's images and their order from (seed, epoch). So `--resume` from the last finished epoch
repeats exactly what an uninterrupted run would have done.
"""
from __future__ import annotations

import copy
import json
import math
import os
import shutil
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from common import streams
from common.atomic import write_atomic
from common.cli import resolve_device
from common.errors import UsageError, UserError
from common.settings import to_dict
from vae.augment import augment, to_float
from vae.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from vae.config import RuntimeSettings, TrainConfig
from vae.data import Pool, epoch_indices, make_feed, rank_batches, split_pool
from vae.losses import BernoulliLoss, PerceptualLoss, PixelLoss, vae_loss
from vae.model import VAE, ModelConfig, describe, parameter_counts
from vae.plots import loss_curves, reconstruction_grid
from vae.vgg import load_vgg

# Mean absolute difference of outputs in [0, 1] between compiled and eager: bf16 rounding gives about
# 0.0015, the torch 2.14.1 CPU miscompilation about 0.07.
COMPILE_TOLERANCE = 0.01


class TrainingError(UserError):
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


def setup_runtime(settings: RuntimeSettings) -> Runtime:
    """Devices and processes: one process per GPU under torchrun, else a single process."""
    distributed = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    chosen = resolve_device(settings.device)
    if distributed and chosen.index is not None:
        raise UsageError(f"--device {settings.device}: under torchrun every process uses the GPU of its LOCAL_RANK; "
                         "give --device cuda (or auto)")
    use_cuda = chosen.type == "cuda"
    rank, world, local = 0, 1, chosen.index or 0
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
    amp = settings.amp == "bf16" or (settings.amp == "auto" and use_cuda)
    return Runtime(device, rank, world, amp)


def step_generator(seed: int, epoch: int, step: int, rank: int, device: torch.device) -> torch.Generator:
    """The generator of one training step's random draws."""
    return torch.Generator(device=device).manual_seed(streams.seed64(seed, streams.STEP, epoch, step, rank))


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
        data, model, loss = config.data, config.model, config.loss
        self.pool = Pool(data.data, data.natural, verify=config.runtime.verify_shards,
                         progress=config.runtime.progress and runtime.main)
        self.split = split_pool(self.pool, config.training.seed, data.val_fraction, data.natural_drop)
        if self.split.validation.size == 0:
            raise TrainingError(f"--val-fraction {data.val_fraction}: no validation images; raise it or add data")
        self.image_size = model.image_size or self.pool.image_size
        self.feed = make_feed(self.pool, runtime.device, config.runtime.data_on_device, config.runtime.workers)

        model_config = ModelConfig(image_size=self.image_size, encoder=model.encoder, decoder=model.decoder,
                                   output_layer=model.output_layer, latent=model.latent)
        with torch.random.fork_rng(devices=[]):  # the initial weights come from the seed too
            torch.manual_seed(int(np.random.SeedSequence([config.training.seed, streams.INIT]).generate_state(1)[0]))
            self.model = VAE(model_config).to(runtime.device)
        if config.runtime.sync_bn and runtime.world > 1:
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.vgg_record = None
        if loss.recon == "perceptual":
            vgg, self.vgg_record = load_vgg(loss.vgg_weights)
            self.reconstruction = PerceptualLoss(vgg, loss.rec_reduction).to(runtime.device)
        elif loss.recon == "bce":
            self.reconstruction = BernoulliLoss(loss.rec_reduction)
        else:
            self.reconstruction = PixelLoss(loss.rec_reduction)
        if config.runtime.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
            self.reconstruction = self.reconstruction.to(memory_format=torch.channels_last)
        training = config.training
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=training.lr)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(self.optimizer, mode="min",
                                                                    factor=training.lr_factor,
                                                                    patience=training.lr_patience)
        self.history: list[dict] = []
        self.best = math.inf
        self.epoch = 0
        if resume:
            self._restore(load_checkpoint(self.out / "last.pt", map_location=runtime.device))
        self.net = self.model
        if runtime.world > 1:
            ids = [runtime.device.index] if runtime.device.type == "cuda" else None
            self.net = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.compile_check = None
        if config.runtime.compile:
            self._compile()

    def data_identities(self) -> dict[str, str]:
        """The identity of every set the run reads (synthgen's build_identity), by path."""
        return {str(s.root): s.identity for s in self.pool.sets}

    def _compile(self) -> None:
        """torch.compile the model only if it computes what eager execution computes: Inductor has had
        silent correctness bugs around BatchNorm (torch 2.14.1 on CPU gets conv -> LeakyReLU ->
        BatchNorm wrong for some shapes). The check uses the bare model: a DDP wrapper expects a
        backward pass after every forward pass."""
        compiled = torch.compile(self.model)
        train = np.concatenate([self.split.train_synthetic, self.split.train_natural_order])
        images, _ = next(self.feed.batches([train[:self.config.training.batch_size]]))
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
        return {"model_config": self.model.config.to_json(), "train_config": json.dumps(to_dict(self.config)),
                "data_identities": json.dumps(self.data_identities()),
                "model": self.model.state_dict(), "epoch": self.epoch, "best_validation_loss": self.best}

    def _restore(self, state: dict) -> None:
        path = self.out / "last.pt"
        saved = json.loads(state.get("data_identities", "{}"))
        changed = [p for p, identity in self.data_identities().items() if saved.get(p, identity) != identity]
        if changed:
            raise TrainingError(f"--resume: {', '.join(changed)} changed since the run started (a different set is "
                                "there now); resume with the same data, or start a new run in another --out")
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.epoch, self.best = state["epoch"], state["best_validation_loss"]
            self.history = json.loads(state["history"])
            torch.set_rng_state(state["torch_rng"].cpu())
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise CheckpointError(f"{path}: cannot continue from it: not the last.pt of this run's settings "
                                  f"({str(exc)[:160]})") from None

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
        config, runtime, training = self.config, self.runtime, self.config.training
        indices, fraction, n_natural = epoch_indices(self.split, self.epoch, training.seed, config.data.natural_start,
                                                     config.data.natural_ramp)
        batches = rank_batches(indices, training.batch_size, runtime.rank, runtime.world)
        self.net.train()
        self.reconstruction.train()
        sums = torch.zeros(3, device=runtime.device)  # loss, kl, rec, summed over images (stays on the device)
        images_seen = 0
        finite = torch.ones((), device=runtime.device)
        check_every = 1 if runtime.device.type == "cpu" else 25  # a check waits for the GPU: not every step
        started = time.perf_counter()
        bar = tqdm(total=len(batches), desc=f"epoch {self.epoch}/{training.epochs}", unit="batch",
                   disable=not (runtime.main and config.runtime.progress), dynamic_ncols=True, leave=False)
        for step, (images, boxes) in enumerate(self.feed.batches(batches)):
            generator = step_generator(training.seed, self.epoch, step, runtime.rank, runtime.device)
            x = augment(images, boxes, config.augment, generator, self.image_size)
            noise = torch.randn(x.shape[0], config.model.latent, generator=generator, device=runtime.device)
            with torch.autocast(runtime.device.type, dtype=torch.bfloat16) if runtime.amp else nullcontext():
                x_hat, mu, sigma = self.net(x, noise)
                terms = vae_loss(x, x_hat.float(), mu, sigma, self.reconstruction, config.loss.alpha,
                                 config.loss.beta)
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
        batches = rank_batches(self.split.validation, config.training.batch_size, runtime.rank, runtime.world)
        sums = torch.zeros(4, device=runtime.device, dtype=torch.float64)
        kl_dims = torch.zeros(config.model.latent, device=runtime.device, dtype=torch.float64)
        mu_sum = torch.zeros_like(kl_dims)
        mu_square = torch.zeros_like(kl_dims)
        for step, (images, _) in enumerate(self.feed.batches(batches)):
            generator = step_generator(config.training.seed, streams.VALIDATION_NOISE, step, runtime.rank,
                                       runtime.device)
            x = to_float(images, self.image_size).contiguous(memory_format=torch.channels_last)
            noise = torch.randn(x.shape[0], config.model.latent, generator=generator, device=runtime.device)
            with torch.autocast(runtime.device.type, dtype=torch.bfloat16) if runtime.amp else nullcontext():
                x_hat, mu, sigma = self.net(x, noise)
                terms = vae_loss(x, x_hat.float(), mu, sigma, self.reconstruction, config.loss.alpha,
                                 config.loss.beta)
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
        active = variance > config.training.active_threshold
        kl_dims = kl_dims / n
        return {"loss": sums[1].item() / n, "kl": sums[2].item() / n, "rec": sums[3].item() / n,
                "kl_per_dim": kl_dims.tolist(), "mu_variance": variance.tolist(),
                "active_dims": int(active.sum().item()),
                "kl_per_active_dim": kl_dims[active].mean().item() if active.any() else 0.0}

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
        while self.epoch < config.training.epochs:
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
                      "active_dims": validation["active_dims"], "kl_per_active_dim": validation["kl_per_active_dim"],
                      "kl_per_dim": validation["kl_per_dim"],
                      "mu_variance": validation["mu_variance"], "best": improved}
            self.history.append(record)
            if runtime.main:
                self.save(improved)
                self.write_metrics()  # after the checkpoint, from its history: the two always agree
                self.figures()
                natural = (f"natural {record['natural_fraction']:.0%} ({record['natural_images']})  "
                           if self.split.train_natural_order.size else "")
                self.log(f"epoch {self.epoch:>3}/{config.training.epochs}  train {train['loss']:.4g} (KL "
                         f"{train['kl']:.4g}, rec {train['rec']:.4g})  validation {validation['loss']:.4g}  lr "
                         f"{record['lr']:.3g}  {natural}active dims {validation['active_dims']}/{config.model.latent} "
                         f"({validation['kl_per_active_dim']:.2f} nats each)  "
                         f"{train['images_per_second'] * runtime.world:.0f} img/s" + ("  *best" if improved else ""))


# ---------------------------------------------------------------------------------------------- the command


def train(config: TrainConfig, resume: bool, command: list[str]) -> int:
    """Train (or continue) the run in config.out. The run folder appears only once everything is set up:
    a run that fails to start leaves nothing behind."""
    runtime = None
    try:
        runtime = setup_runtime(config.runtime)
        log = print if runtime.main else (lambda *a, **k: None)
        out = Path(config.out)
        run = Run(config, runtime, resume, log)
        if runtime.main:
            out.mkdir(parents=True, exist_ok=True)
            if resume:
                run.write_metrics()  # drop lines of an epoch that was cut off before its checkpoint
            counts = parameter_counts(run.model)
            record = {"train": to_dict(config), "model": json.loads(run.model.config.to_json()),
                      "parameters": counts, "vgg": run.vgg_record, "world_size": runtime.world,
                      "compile": run.compile_check, "device": str(runtime.device),
                      "amp": "bf16" if runtime.amp else "off", "torch": torch.__version__, "command": command,
                      "data": {"synthetic_train": int(run.split.train_synthetic.size),
                               "natural_train": int(run.split.train_natural_order.size),
                               "validation": int(run.split.validation.size),
                               "natural_dropped_per_class": run.split.dropped,
                               "identities": run.data_identities()}}
            write_atomic(out / "config.json", (json.dumps(record, indent=1) + "\n").encode())
            log(describe(run.model))
            log(f"data: {record['data']['synthetic_train']} synthetic and {record['data']['natural_train']} natural "
                f"training images, {record['data']['validation']} held out; natural examples removed for class "
                f"balance: {run.split.dropped or 'none'}")
            log(f"loss: {config.loss.alpha} * KL + {config.loss.beta} * {config.loss.recon} reconstruction "
                f"({config.loss.rec_reduction} over elements per image, mean over the batch); VGG weights: "
                f"{(run.vgg_record or {}).get('source', 'not used')}")
            log(f"device {runtime.device} x {runtime.world} process(es), amp {'bf16' if runtime.amp else 'off'}, "
                f"data {'in device memory' if type(run.feed).__name__ == 'MemoryFeed' else 'read by workers'}"
                + (f", resuming after epoch {run.epoch}" if resume else ""))
        run.fit()
        if runtime.main:
            log(f"done: {out / 'last.pt'}, {out / 'best.pt'} (best validation loss {run.best:.4g}), "
                f"{out / 'reconstruction.png'}, {out / 'loss_curves.png'}, {out / 'metrics.jsonl'}")
        return 0
    finally:
        if runtime is not None and runtime.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":  # `python -m vae.train ...`, as torchrun starts it
    from vae.cli import main

    sys.exit(main())
