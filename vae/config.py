"""The settings of `vae-train`, one group per concern, with flags, help texts and valid ranges
(common.settings). No torch here: the command line is parsed and checked before torch is imported.

`TrainConfig` is saved with every run (config.json) and in every checkpoint. A resumed run takes the
saved settings and replaces only --out (the run folder is wherever the user points) and the runtime
group (devices, speed, progress), plus --epochs to extend or shorten the run.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from common.errors import UsageError
from common.settings import (SEED_RANGE, Settings, above, at_least, between, device_option, option,
                             progress_option, verify_option)
from vae.spec import MAX_WIDTH, PAPER_DECODER, PAPER_ENCODER, layers_problem

RANDOM_VGG = "random"  # --vgg-weights random: an untrained VGG-19, for tests
EPOCHS_FOLDER = "checkpoints"  # in the run folder: the models --save-every keeps

RECONSTRUCTIONS = ("perceptual", "pixel", "bce")
REDUCTIONS = ("sum", "mean")
AMP_MODES = ("auto", "bf16", "off")
ON_DEVICE = ("auto", "yes", "no")
COMPILE_CHOICES = ("auto", "yes", "no")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs", "max-autotune")
IMAGE_CONV_CHOICES = ("cudnn", "triton")  # vae.imageconv
# More loader processes than cores only contend (and torch warns of it): 4 where there are cores for them.
DEFAULT_WORKERS = min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


@dataclass(frozen=True)
class DataSettings(Settings):
    TITLE = "data (synthgen sets) and the mixing recipe of section 4.2"

    data: list[str] = option([], "synthetic sets (synthgen build output folders); required for a new run (or "
                             "--natural alone, with --natural-start 0: natural images only); with --resume, where "
                             "the run's sets are now if they moved")
    natural: list[str] = option([], "natural sets (synthgen pack of the training split); mixed in after "
                                "--natural-start epochs; with --resume, where they are now if they moved",
                                nargs="*")
    val_fraction: float = option(0.05, "share of every set held out for validation",
                                 valid=between(0, 1, low_open=True, high_open=True))
    natural_start: int = option(20, "synthetic-only epochs before natural images join", valid=at_least(0))
    natural_ramp: int = option(20, "epochs over which all natural training images join", valid=at_least(1))
    natural_drop: float = option(0.1, "share of each natural class above the mean removed (never below the mean)",
                                 valid=between(0, 1, high_open=True))


@dataclass(frozen=True)
class ModelSettings(Settings):
    TITLE = "model (N@KxK-S notation; defaults: the paper)"

    encoder: str = option(PAPER_ENCODER, "encoder convolutions", check=layers_problem)
    decoder: str = option(PAPER_DECODER, "decoder transposed convolutions", check=layers_problem)
    output_layer: str = option("3@3x3-1", "last layer to RGB", check=layers_problem)
    latent: int = option(180, "latent dimensions", valid=between(1, MAX_WIDTH))
    image_size: int | None = option(None, "train at this size, reducing the sets' images (needed for sets of "
                                    "different sizes: at most the smallest)", default_help="the sets' own size",
                                    valid=between(16, 2048))


@dataclass(frozen=True)
class LossSettings(Settings):
    TITLE = "loss: alpha * KL + beta * L_rec"

    alpha: float = option(1.0, "KL weight", valid=at_least(0))
    beta: float = option(0.03, "reconstruction weight", valid=above(0))
    recon: str = option("perceptual", "VGG-19 feature perceptual loss, the plain pixel loss (squared error), or "
                        "the Bernoulli loss of binary images (binary cross-entropy; the dot stimuli)",
                        choices=RECONSTRUCTIONS)
    rec_reduction: str = option("sum", "per image: sum or mean over each layer's elements (pixels for pixel and "
                                "bce); always the mean over the batch, KL summed over latent dimensions",
                                choices=REDUCTIONS)
    vgg_weights: str | None = option(None, "state dict of torchvision vgg19().features (full or up to relu3_1); "
                                     f"'{RANDOM_VGG}' for tests only (drawn from --seed)",
                                     default_help="torchvision's file in the torch hub cache")

    def check(self) -> None:
        # Here, before torch is imported and the data loaded: a mistyped path is told in a moment, not after both.
        # What the file holds is checked when it is loaded (vae.vgg), also before the data.
        if self.recon == "perceptual" and self.vgg_weights not in (None, RANDOM_VGG) and \
                not Path(self.vgg_weights).is_file():
            what = "not a file" if Path(self.vgg_weights).exists() else "no such file"
            raise UsageError(f"--vgg-weights {self.vgg_weights}: {what} (a state dict of torchvision's "
                             "vgg19().features, full or up to relu3_1, is needed; without the option, torchvision's "
                             "file in the torch hub cache is used)")


@dataclass(frozen=True)
class TrainingSettings(Settings):
    TITLE = "training (section 4.2)"

    epochs: int = option(140, "epochs (may change on --resume, to extend a run)", valid=at_least(1))
    batch_size: int = option(64, "images per step and process", valid=at_least(1))
    lr: float = option(0.0015, "Adam learning rate", valid=above(0))
    lr_factor: float = option(0.2, "learning-rate factor on a plateau", valid=between(0, 1, low_open=True,
                                                                                      high_open=True))
    lr_patience: int = option(4, "epochs without improvement of the validation loss before the factor",
                              valid=at_least(0))
    lr_min: float = option(0.0, "the learning rate's floor: the factor never takes it below (the paper's has none; "
                           "five plateaus take 0.0015 to 5e-7)", valid=at_least(0))
    seed: int = option(0, "seed of every random draw (weights, data order, augmentation, noise)", valid=SEED_RANGE)
    save_every: int = option(0, "also keep the model of every K-th epoch, and of the untrained start, in "
                             f"{EPOCHS_FOLDER}/epoch-NNNN.pt (each as large as best.pt), for analyses over the course "
                             "of training; 0: none (may change on --resume, from the next epoch on: the untrained "
                             "start is kept by a run started with it)", valid=at_least(0))
    active_threshold: float = option(0.01, "variance of the posterior mean above which a dimension is active",
                                     valid=at_least(0))

    def check(self) -> None:
        if self.lr_min >= self.lr:
            raise UsageError(f"--lr-min {self.lr_min}: not below --lr {self.lr}, so the learning rate could never be "
                             "lowered on a plateau; give a floor below --lr (or 0, the paper's: none)")


@dataclass(frozen=True)
class AugmentConfig(Settings):
    """Augmentation on the training device (vae.augment)."""

    TITLE = "augmentation"

    flip_prob: float = option(0.5, "horizontal flip probability", valid=between(0, 1))
    crop_max: float = option(0.1, "largest share of the side a crop trims (crops keep every object)",
                             valid=between(0, 1, high_open=True))
    brightness: float = option(0.1, "brightness jitter: factors in [1 - b, 1 + b]",
                               valid=between(0, 1, high_open=True))
    contrast: float = option(0.1, "contrast jitter", valid=between(0, 1, high_open=True))
    saturation: float = option(0.1, "saturation jitter", valid=between(0, 1, high_open=True))
    hue: float = option(0.02, "hue jitter in turns, either way", valid=between(0, 0.5))


@dataclass(frozen=True)
class RuntimeSettings(Settings):
    TITLE = "runtime: how the run executes (may change on --resume)"

    device: str = device_option()
    amp: str = option("auto", "bf16 autocast; auto: on CUDA only", choices=AMP_MODES)
    channels_last: bool = option(True, "keep the model, the loss network and their inputs in NCHW memory layout "
                                "(channels_last by default)", flag="--no-channels-last")
    compile: str = option("auto", "torch.compile the training step: the whole objective (model, reconstruction loss, "
                          "loss arithmetic) and the augmentation, each kept only if it compiles on this machine and "
                          "matches eager execution on a training batch "
                          "(otherwise the run trains eagerly and says why); auto: on CUDA, where the step runs about "
                          "1.5x faster after seconds of compiling, or when a --compile-mode other than default is "
                          "given; not on the CPU, where the compiled step ran slower; --compile alone: yes",
                          choices=COMPILE_CHOICES, const="yes")
    compile_mode: str = option("default", "torch.compile mode: reduce-overhead adds CUDA graphs (a step not bound by "
                               "launching kernels), max-autotune tries kernel variants (minutes of compiling); "
                               "another mode than default compiles on any device unless --compile no",
                               choices=COMPILE_MODES)
    image_conv: str = option("cudnn", "what runs the convolutions that read or write the image's 3 channels in "
                             "compiled CUDA steps: cudnn (their channels padded to 8), or triton, kernels of our own "
                             "that read and write each map once (vae.tritonconv; experimental: measure with "
                             "benchmarks/bench_imageconv.py and bench_vae.py --image-conv cudnn,triton), checked "
                             "layer by layer against cuDNN before compiling and left out if they differ; eager steps "
                             "always use cuDNN",
                             choices=IMAGE_CONV_CHOICES)
    data_on_device: str = option("auto", "load the sets once into the device's memory; auto: when they take under "
                                 "half of the free memory", choices=ON_DEVICE)
    workers: int = option(DEFAULT_WORKERS, "DataLoader workers reading shards when the data stays on disk (by "
                          "default 4, or the cores this process may use if fewer; never more than those cores)",
                          valid=at_least(0))
    sync_bn: bool = option(False, "synchronise BatchNorm statistics across GPUs (CUDA only; several CPU processes "
                           "refuse it)")
    progress: bool = progress_option()
    verify_shards: bool = verify_option()


@dataclass(frozen=True)
class TrainConfig(Settings):
    """Every setting of a run; saved as config.json in the run folder and in every checkpoint."""

    out: str = option(help="run folder: config, metrics, figures, checkpoints; with --resume, the run to continue "
                      "(wherever it was copied or moved)")
    data: DataSettings = DataSettings()
    model: ModelSettings = ModelSettings()
    loss: LossSettings = LossSettings()
    training: TrainingSettings = TrainingSettings()
    augment: AugmentConfig = AugmentConfig()
    runtime: RuntimeSettings = RuntimeSettings()

    def check(self) -> None:
        data = self.data
        if not data.data and not data.natural:
            raise UsageError("--data: give one or more synthgen build folders (the synthetic training sets), or "
                             "--natural alone to train on natural images only")
        if not data.data and data.natural_start > 0:
            raise UsageError(f"--natural-start {data.natural_start}: with --natural alone (no --data), the first "
                             f"{data.natural_start} epochs would train on nothing; give --natural-start 0")


def compile_problem(runtime: RuntimeSettings) -> str | None:
    """Why the compile settings asked for cannot be meant as given: a --compile-mode with --compile no, which
    would run eagerly without a word. (Checked where the command line sets them, not on a saved run's.)"""
    if runtime.compile_mode != "default" and runtime.compile == "no":
        return (f"--compile-mode {runtime.compile_mode}: a mode of compiling, with --compile no (the run would "
                "execute eagerly); give --compile yes or auto, or drop --compile-mode")
    return None


def in_current_terms(stored: dict) -> dict:
    """Settings a run saved (config.json's "train", a checkpoint's train_config) in this version's terms: --compile
    was a switch, whose false, then the default, is now the default auto."""
    def switch(group: dict) -> dict:
        value = group.get("compile")
        return group | {"compile": "yes" if value else "auto"} if isinstance(value, bool) else group

    if isinstance(stored.get("runtime"), dict):
        return stored | {"runtime": switch(stored["runtime"])}
    return switch(stored)  # earlier versions kept every setting at the top level


# What --resume may replace: where the run is, how it runs, how long, and which epochs' models it keeps.
RESUMABLE = {"out", "epochs", "save_every"} | set(RuntimeSettings.__dataclass_fields__)
# What --resume may point elsewhere: the run's sets, moved or copied. The trainer checks that they are the
# same sets (vae.resume.sets_problem); with the split saved in last.pt, the run goes on with the very images and
# split it started with.
RELOCATABLE = {"data", "natural"}
# Settings added after runs had been saved without them, with the value that trains as those runs did: at that
# value a setting is left out of a run's identity (vae.checkpoint.run_identity), so a run saved before it existed
# and its continuation under this version are one run.
LATER_SETTINGS = {"lr_min": 0.0}


def holds_run(folder: Path) -> bool:
    """Whether `folder` holds a vae-train run: its last checkpoint, or the metrics of a run cut off before one."""
    return (folder / "last.pt").exists() or (folder / "metrics.jsonl").exists()
