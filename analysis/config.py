"""The settings of `analyze-area-vs-number` and `vae-subitize` (common.settings); no torch here."""
from __future__ import annotations

from dataclasses import dataclass

from common.errors import UsageError
from common.settings import (SEED_RANGE, Settings, above, at_least, between, device_option, option,
                             progress_option, verify_option)
from vae.spec import MAX_WIDTH


MAX_RESAMPLES = 100_000  # resamples and rotations are drawn as arrays: beyond, a number is a typo numpy cannot hold
MIN_RESAMPLES = 40  # below, the 2.5% tail of a 95% percentile interval holds less than one resample


def _resamples_problem(value: int) -> str | None:
    if value == 0 or value >= MIN_RESAMPLES:
        return None
    return (f"a 95% percentile interval needs at least {MIN_RESAMPLES} resamples, one in each 2.5% tail; with fewer "
            "its ends are just the extreme resamples. Give 0 for no intervals, or 1000 (the default)")


MIN_ROTATIONS = 19  # below, a permutation p-value, (1 + #{null >= observed}) / (K + 1), cannot reach 0.05


def _rotations_problem(value: int) -> str | None:
    if value == 0 or value >= MIN_ROTATIONS:
        return None
    return (f"with {value} rotations the smallest p-value the null can give is 1/{value + 1} = "
            f"{1 / (value + 1):.2f}, so nothing could ever beat it at 0.05; that needs at least {MIN_ROTATIONS}. Give "
            "0 for no null, or 200 (the default)")


def parse_references(text: str) -> tuple[int, ...]:
    """--comparison-references: whole numbers, e.g. 8,16, each once; 'none' for no comparison."""
    if str(text).strip().lower() == "none":
        return ()
    try:
        values = tuple(int(part) for part in str(text).split(","))
    except ValueError:
        raise UsageError(f"--comparison-references {text!r}: give whole numbers such as 8,16, or none") from None
    if min(values) < 2 or len(set(values)) < len(values):
        raise UsageError(f"--comparison-references {text!r}: give each reference once, each at least 2 (numerosities "
                         "are compared with it from below and from above), or none")
    return values


def format_references(values: tuple[int, ...]) -> str:
    return ",".join(map(str, values)) or "none"


@dataclass(frozen=True)
class EncodeRuntime(Settings):
    TITLE = "runtime"

    device: str = device_option()
    progress: bool = progress_option()
    verify_shards: bool = verify_option()


@dataclass(frozen=True)
class AnalysisConfig(Settings):
    """`analyze-area-vs-number`: Eq. 3 and the unit criteria, their chance level, population decoding and
    number selectivity, for one run or several."""

    checkpoint: list[str] = option(help="vae-train checkpoints (best.pt or last.pt); several (seeds, betas) give "
                                   "one analysis each and a summary over them, over the course of training where "
                                   "they hold one run at several epochs (vae-train --save-every)")
    data: str = option(help="a synthgen set, ideally built with --same-object --max-occlusion 0, or `synthgen dots`")
    out: str = option(help="output folder for the tables, summaries, reports and figures")
    r2_min: float = option(0.05, "R^2 threshold of a unit (0.05 is the paper's; Stoianov & Zorzi used 0.1)",
                           valid=between(0, 1))
    beta_max: float = option(0.1, "largest |beta| of the other property", valid=above(0))
    active_threshold: float = option(0.01, "variance of the posterior mean below which a dimension is inactive and "
                                     "left out (in a trained model; the untrained one of epoch 0 keeps every "
                                     "dimension that varies)", valid=at_least(0))
    log1p: bool = option(False, "use log(1 + N) and log(1 + A), keeping the N = 0 images (default: leave them out, "
                         "since log 0 is undefined)")
    bootstrap: int = option(1000, "bootstrap resamples for the confidence intervals of the betas and of the "
                            "decoding R^2 (0: none; else at least 40)", valid=between(0, MAX_RESAMPLES),
                            check=_resamples_problem)
    null_rotations: int = option(200, "random rotations of the latent space in the chance-level null (0: none; "
                                 "else at least 19)", valid=between(0, MAX_RESAMPLES), check=_rotations_problem)
    folds: int = option(5, "cross-validation folds of the population decoding", valid=between(2, 100))
    area_bins: int = option(4, "quantile bins of a continuous cumulative area in the two-way ANOVA (a set with a "
                            "few area levels, such as the dot stimuli, is binned by its levels)", valid=between(2, 50))
    anova_p: float = option(0.01, "significance level of the number-selectivity ANOVA",
                            valid=between(0, 1, low_open=True, high_open=True))
    comparison_references: tuple[int, ...] = option(
        (8, 16), "reference numerosities of the comparison task and its Weber fraction (Stoianov & Zorzi's 8 and 16; "
        "used where the set has numerosities from half to twice a reference; none: no comparison)",
        parse=parse_references, show=format_references, metavar="R,R")
    seed: int = option(0, "seed of the bootstrap, the rotations, the folds, the comparison's balancing and the "
                       "figures' choice of images", valid=SEED_RANGE)
    batch_size: int = option(256, "images per encoding batch", valid=at_least(1))
    runtime: EncodeRuntime = EncodeRuntime()


@dataclass(frozen=True)
class ReadoutConfig(Settings):
    """`vae-subitize`: the paper's MLP readout on frozen posterior means (Table 1)."""

    checkpoint: list[str] = option(help="vae-train checkpoints; several (seeds of one recipe) give a readout each, in "
                                   "a folder each, and a summary over them, over the course of training where they "
                                   "hold one run at several epochs (vae-train --save-every)")
    train: list[str] = option(help="labelled sets to train on (e.g. synthgen pack of the SOS training split, or "
                              "synthgen build sets)")
    test: list[str] = option(help="labelled sets to report on (e.g. the SOS test split)")
    out: str = option(help="output folder")
    hidden: int = option(160, "units per hidden layer", valid=between(1, MAX_WIDTH))
    val_fraction: float = option(0.1, "stratified share of the training data used to choose the epoch",
                                 valid=between(0, 1, low_open=True, high_open=True))
    epochs: int = option(300, "most epochs", valid=at_least(1))
    patience: int = option(30, "epochs without a better validation loss before stopping", valid=at_least(0))
    lr: float = option(1e-3, "Adam learning rate", valid=above(0))
    batch_size: int = option(256, "batch size (also for encoding)", valid=at_least(1))
    bootstrap: int = option(1000, "bootstrap resamples of the test images for the 95% intervals of the AP, recall "
                            "and accuracy (0: none; else at least 40)", valid=between(0, MAX_RESAMPLES),
                            check=_resamples_problem)
    seed: int = option(0, "seed of the split, the initial weights, the batch order and the bootstrap",
                       valid=SEED_RANGE)
    runtime: EncodeRuntime = EncodeRuntime()
