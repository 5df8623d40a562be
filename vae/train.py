"""vae-train: train the paper's VAE on synthgen shards (synthetic first, natural images mixed in).

Read top to bottom: a run put together from its parts (vae.build: data, model, reconstruction loss,
optimiser) -> one step, the same for training and validation -> an epoch of training and a pass of
validation -> the end of an epoch (schedule, checkpoint, log) -> the epoch loop -> `train`, which the
command line (vae.cli) calls with checked settings (vae.config). Elsewhere: devices, processes and
compiling (vae.runtime); the checks that a resumed run is the run it continues (vae.resume); writing the
checkpoints while training goes on (vae.checkpoint); config.json and the log's opening lines (vae.record).

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
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from common import streams
from common.atomic import write_atomic
from common.errors import flat_text
from common.jsontext import json_text
from common.locks import FolderLock
from common.settings import to_dict
from vae import imageconv
from vae.augment import apply, draw, to_float
from vae.build import TrainingError, build_model, build_optimizer, build_reconstruction, build_scheduler, load_data
from vae.checkpoint import (CheckpointError, CheckpointWriter, EpochFiles, detached_copy, load_checkpoint,
                            save_kept_epoch, weights_fingerprint)
from vae.config import EPOCHS_FOLDER, TrainConfig, holds_run
from vae.data import epoch_indices, rank_batches
from vae.losses import Objective
from vae.record import log_opening, run_record
from vae.resume import check_sets, continued_split, world_change_line
from vae.runtime import (Runtime, compile_augmentation_checked, compile_checked, compile_decision, compile_line,
                         compile_objective, setup_runtime, step_generator)


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
        self.writer = CheckpointWriter()  # the main process's checkpoints, written while the next epoch trains
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
        try:
            self.compile_check = record | (self.compile(why) if wanted else {"used": False})
        except BaseException:  # Ctrl-C while compiling, say: the check's batch started the feed's workers
            self.data.feed.close()
            raise
        if not wanted and config.runtime.image_conv == "triton":
            self.log(f"--image-conv triton: for compiled CUDA steps only, and this run trains eagerly ({why})")

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
        x = self.laid_out(to_float(images, self.data.image_size))
        noise = torch.randn(x.shape[0], config.model.latent, generator=torch.Generator(device=x.device).manual_seed(0),
                            device=x.device)
        bare = Objective(self.model, self.reconstruction, config.loss.alpha, config.loss.beta)
        mode = config.runtime.compile_mode
        started = time.perf_counter()
        image_conv = imageconv.set_image_conv(config.runtime.image_conv, [self.model, self.reconstruction], bare, x,
                                              noise, runtime.autocast)
        compiled, check = compile_checked(bare, self.model, x, noise, runtime, mode)
        check["image_conv"] = image_conv
        layers = image_conv["triton_layers"]
        if compiled is not None:
            self.objective = compile_objective(self.objective, mode) if runtime.world > 1 else compiled
            self.compiled_batch = x.shape[0]
            # the step's augmentation too, with draws of its own (the run's generators are not touched)
            params = draw(images, boxes, config.augment, torch.Generator(device=x.device).manual_seed(0),
                          self.data.image_size)
            self.compiled_augmentation, check["augmentation"] = compile_augmentation_checked(
                images, params, self.data.image_size)
        check["seconds"] = round(time.perf_counter() - started, 2)  # what compiling costs before the first epoch
        self.log(compile_line(why, check))
        kernels_line = imageconv.image_conv_line(config.runtime.image_conv, layers, runtime.device.type,
                                                 image_conv.get("check"))
        if compiled is not None and kernels_line:
            self.log(kernels_line)
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
        return self.laid_out((compiled or apply)(images, params, self.data.image_size))

    def laid_out(self, x: torch.Tensor) -> torch.Tensor:
        """Images in the memory layout of the run's model: channels_last, or NCHW under --no-channels-last. A
        convolution runs channels_last if its input is, whatever its weights, so the layout of the inputs decides
        the network's."""
        layout = torch.channels_last if self.config.runtime.channels_last else torch.contiguous_format
        return x.contiguous(memory_format=layout)

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
            x = self.laid_out(to_float(images, self.data.image_size))
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
        """Continue from the checkpoint `state`, once it is this run's (vae.resume)."""
        check_sets(state, self.data.sets(), self.log)
        note = world_change_line(state, self.runtime.world, self.config.training.batch_size)
        if note:
            self.log(note)
        self.data.split = continued_split(state, self.out, self.data.split, len(self.data.pool), self.log)
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
                                  f"settings ({flat_text(exc)})") from None

    def save(self, improved: bool) -> None:
        """This epoch's checkpoints (last.pt; best.pt when the validation loss improved; the kept epoch's model),
        then metrics.jsonl from the same history, given to the checkpoint thread (vae.checkpoint.CheckpointWriter)
        while the next epoch trains. What they hold is copied first, once the epoch before is on disk (one copy in
        memory at a time), so they are this epoch's whatever training does meanwhile."""
        self.writer.wait()
        model = detached_copy(self._state())
        last = model | detached_copy({
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "split": self.data.split.to_state(), "history": json.dumps(self.history),
            "torch_rng": torch.get_rng_state(), "natural_fraction": self.history[-1]["natural_fraction"]})
        every = self.config.training.save_every
        self.writer.submit(EpochFiles(self.out, last, model, improved, kept=bool(every and self.epoch % every == 0),
                                      metrics=self.metrics_text()))

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
        from vae.plots import loss_curves, reconstruction_grid  # matplotlib: not for a run refused before it trains
        self.model.eval()
        chosen = self.data.split.validation[:8]
        x = to_float(torch.from_numpy(self.data.pool.images(chosen)).to(self.runtime.device), self.data.image_size)
        with torch.no_grad():
            mu, _ = self.model.encode(self.laid_out(x))
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
            log_opening(run, config, runtime, resume, start)
            write_atomic(out / "config.json", json_text(run_record(run, config, runtime, command)).encode())
            if not resume and config.training.save_every:
                run.save_epoch()
            elif start is not None:
                run.save_epoch(start)
        run.fit()
        run.writer.wait()
        kept = f", {out / EPOCHS_FOLDER}/epoch-*.pt" if (out / EPOCHS_FOLDER).is_dir() else ""
        log(f"done: {out / 'last.pt'}, {out / 'best.pt'} (best validation loss {run.best:.4g}){kept}, "
            f"{out / 'reconstruction.png'}, {out / 'loss_curves.png'}, {out / 'metrics.jsonl'}")
        return 0
    finally:
        if run is not None:
            run.data.feed.close()
            run.writer.close()
        if lock is not None:
            lock.release()
        runtime.close()


if __name__ == "__main__":  # `python -m vae.train ...`, as torchrun starts it
    from vae.cli import main

    sys.exit(main())
